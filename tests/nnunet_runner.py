"""Helper processes for tests/test_nnunet_workflow.py (run as scripts, never imported by pytest).

``train DATASET TRAINER PLANS FOLD [FOLD ...] [--kill FOLD:EPOCH]``
    Trains folds one after another in one interpreter through ``nnunetv2.run.run_training.run_training``, the
    function ``nnUNetv2_train`` calls (nnunetv2/run/run_training.py:259), with ``--npz`` and ``-device cpu``: the same
    runs as one ``nnUNetv2_train`` per fold, without paying the interpreter and import start-up once per fold.
    ``--kill FOLD:EPOCH`` kills the process with SIGKILL right after epoch EPOCH of fold FOLD ended, as a killed
    cluster job dies; nnU-Net writes checkpoint_latest.pth every 50 epochs (``save_every``), here after every epoch,
    so that the kill leaves what a job killed after a 50th epoch leaves.

``commands JSON``
    Runs console commands (a JSON list of argv lists, e.g. ``[["nnUNetv2_plan_and_preprocess", "-d", "561"]]``) one
    after another in this interpreter, each through its installed entry point: the world's set-up without one
    interpreter start-up per command.

``ddp-load DATASET TRAINER PLANS FOLD OUT_JSON``
    The loading logic of nnU-Net's DDP path on CPU: two ranks in a gloo process group each construct the trainer as
    ``run_ddp`` does (nnunetv2/run/run_training.py:103-108), build the network, wrap it in DistributedDataParallel
    (as initialize() does, nnunetv2/training/nnUNetTrainer/nnUNetTrainer.py:250-253) and load the pretrained encoder
    with the trainer's own method; rank 0 writes every rank's encoder digest to OUT_JSON. nnU-Net's DDP itself needs
    CUDA (NCCL, ``device_ids=[local_rank]``), so initialize() and training cannot run this way on CPU.

Test speed only: nnU-Net's worker pools (``multiprocessing.get_context("spawn")``: fingerprints, preprocessing,
validation export, metrics) and the DDP ranks start by fork here, as each spawned process imports torch again
(seconds each on the CI machine); nothing they compute changes, and every nnU-Net command the tests themselves run as
a user does (``--c``, model selection, prediction, ensembling, export, moving plans) keeps spawn.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import sys


def _pools_by_fork() -> None:
    import multiprocessing

    get_context = multiprocessing.get_context

    def fork_instead_of_spawn(method=None):
        return get_context("fork" if method == "spawn" else method)

    multiprocessing.get_context = fork_instead_of_spawn


def train(dataset: str, trainer: str, plans: str, folds: list[str], kill: tuple[str, int] | None) -> None:
    import torch
    from nnunetv2.run.run_training import run_training
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    _pools_by_fork()
    if kill is not None:
        on_epoch_end = nnUNetTrainer.on_epoch_end

        def on_epoch_end_then_die(self) -> None:
            self.save_every = 1
            epoch = self.current_epoch
            on_epoch_end(self)
            if str(self.fold) == kill[0] and epoch == kill[1]:
                os.kill(os.getpid(), signal.SIGKILL)

        nnUNetTrainer.on_epoch_end = on_epoch_end_then_die
    for fold in folds:
        run_training(dataset, "3d_fullres", fold, trainer, plans, export_validation_probabilities=True,
                     device=torch.device("cpu"))


def commands(argvs: list[list[str]]) -> None:
    from importlib.metadata import entry_points

    _pools_by_fork()
    scripts = {e.name: e for e in entry_points(group="console_scripts")}
    for argv in argvs:
        sys.argv = list(argv)
        try:
            code = scripts[argv[0]].load()()
        except SystemExit as e:
            code = e.code
        if code not in (None, 0):
            raise SystemExit(f"{' '.join(argv)} failed with exit code {code}")


def _encoder_digest(network) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(network.state_dict().items()):
        if key.startswith("swinViT."):
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _ddp_rank(rank: int, world_size: int, dataset: str, trainer_name: str, plans: str, fold: str, out: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from nnunetv2.run.run_training import get_trainer_from_args
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    trainer = get_trainer_from_args(dataset, "3d_fullres", int(fold), trainer_name, plans)
    assert trainer.is_ddp and trainer.local_rank == rank
    trainer.num_input_channels = determine_num_input_channels(trainer.plans_manager, trainer.configuration_manager,
                                                              trainer.dataset_json)
    network = trainer.build_network_architecture(trainer.plans_manager, trainer.configuration_manager,
                                                 trainer.num_input_channels,
                                                 trainer.label_manager.num_segmentation_heads, False)
    network = DistributedDataParallel(network)  # CPU module: no device_ids
    report = trainer.load_pretrained_encoder_into(network.module)
    digests: list = [None] * world_size
    dist.all_gather_object(digests, {"digest": _encoder_digest(network.module), "loaded": len(report.loaded),
                                     "adapted": len(report.adapted), "expected": report.expected})
    if rank == 0:
        with open(out, "w") as f:
            json.dump({"ranks": digests, "log_file": trainer.log_file}, f)
    dist.destroy_process_group()


def ddp_load(dataset: str, trainer: str, plans: str, fold: str, out: str, world_size: int = 2) -> None:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("", 0))
        os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    os.environ["MASTER_ADDR"] = "localhost"
    mp.start_processes(_ddp_rank, args=(world_size, dataset, trainer, plans, fold, out), nprocs=world_size,
                       join=True, start_method="fork")


def main(argv: list[str]) -> None:
    mode, *rest = argv
    if mode == "train":
        kill = None
        if "--kill" in rest:
            i = rest.index("--kill")
            fold, epoch = rest[i + 1].split(":")
            kill = (fold, int(epoch))
            rest = rest[:i] + rest[i + 2:]
        dataset, trainer, plans, *folds = rest
        train(dataset, trainer, plans, folds, kill)
    elif mode == "commands":
        commands(json.loads(rest[0]))
    elif mode == "ddp-load":
        ddp_load(*rest)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":  # spawned workers (nnU-Net's validation export, DDP ranks) import this file too
    main(sys.argv[1:])
