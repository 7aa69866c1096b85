"""Nothing silently wrong, nothing lost, nothing left behind: non-finite steps and states, the run lock, a SIGKILL
during a checkpoint write, two checkpoint generations, a partial log line, temporary files, a full device and file
permissions."""
from __future__ import annotations

import errno
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nnssl.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from nnssl.io import TEMP_RE, NoSpaceError, atomic_write, remove_stale_temp_files
from nnssl.training import loop
from nnssl.training.loop import TrainingDiverged, run_pretraining
from toy_task import toy_config as _cfg

TESTS = Path(__file__).parent


def _assert_same_state(a: dict, b: dict) -> None:
    """Bitwise equality of the weights, the task state and the optimiser moments of two checkpoints."""
    for key in ("encoder", "task_state"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name}"
    for pid, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][pid][name]), f"optimizer {pid}.{name}"


# ------------------------------------------------------------------------------------------------ non-finite steps

def test_a_non_finite_step_is_skipped_on_the_device_and_reported_at_the_next_read(toy_env, monkeypatch):
    """NaN gradients (finite loss) at step 1: AdamW's fused found_inf leaves weights, moments and step count alone,
    the run goes on without a host read until step 2 (log_every 3), then stops naming step 1 and its cases."""
    from toy_task import ToyTask

    original_forward = ToyTask.forward

    def forward(self, views, step):
        out = original_forward(self, views, step)
        if step == 1:  # NaN gradients in this backward only
            def poison(grad):
                handle.remove()
                return grad * float("nan")

            handle = self.head.weight.register_hook(poison)
        return out

    optimizers = []
    make = loop.make_optimizer
    monkeypatch.setattr(loop, "make_optimizer", lambda *a: optimizers.append(make(*a)) or optimizers[-1])
    monkeypatch.setattr(ToyTask, "forward", forward)
    reads = []
    read = loop.PendingSteps.read
    monkeypatch.setattr(loop.PendingSteps, "read", lambda self: reads.append(len(self)) or read(self))
    with pytest.raises(TrainingDiverged) as e:
        run_pretraining(_cfg(steps=6, log_every=3, checkpoint_every=100), toy_env / "run", progress=False)
    message = str(e.value)
    assert "or its gradients became non-finite at step 1 (" in message and "Dataset990_ToyCT/case_" in message
    assert "no checkpoint was written yet" in message
    assert reads == [3]  # one host read for steps 0-2
    opt = optimizers[0]
    assert all(float(s["step"]) == 2 for s in opt.state.values())  # steps 0 and 2 applied, step 1 skipped
    assert all(torch.isfinite(p).all() for g in opt.param_groups for p in g["params"])
    assert [json.loads(l)["step"] for l in (toy_env / "run" / "log.jsonl").read_text().splitlines()] == [0]
    assert not list((toy_env / "run").glob("checkpoint_*"))


def test_losses_are_read_every_log_every_steps_and_every_step_is_logged(toy_env, monkeypatch):
    reads = []
    read = loop.PendingSteps.read
    monkeypatch.setattr(loop.PendingSteps, "read", lambda self: reads.append(len(self)) or read(self))
    run_pretraining(_cfg(steps=6, log_every=3, checkpoint_every=100), toy_env / "run", progress=False)
    assert [n for n in reads if n] == [3, 3]
    records = [json.loads(l) for l in (toy_env / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(6))
    assert all(isinstance(r["loss"], float) and r["loss"] > 0 and "grad_norm" in r for r in records)


def test_an_update_that_overflows_the_weights_is_never_saved(toy_env):
    """A learning rate that blows up: step 0's loss and gradients are finite, its update makes the weights Inf; the
    fused check before the step-1 checkpoint refuses to save them."""
    with pytest.raises(TrainingDiverged, match=r"refusing to save step 1: \d+ of \d+ model tensors hold NaN or Inf"):
        run_pretraining(_cfg(steps=2, lr=1e38, warmup_steps=0, checkpoint_every=1), toy_env / "run", progress=False)
    assert not list((toy_env / "run").glob("checkpoint_*"))


def test_non_finite_checkpoints_are_never_written_attached_or_loaded(tmp_path, monkeypatch):
    from nnssl.encoders.swin import EncoderConfig, SwinEncoder
    from nnssl.finetune.pretrained import describe_checkpoint, load_pretrained_encoder

    enc = SwinEncoder(EncoderConfig.preset("tiny", in_channels=1))
    state = enc.swin_state_dict()
    state["swinViT.patch_embed.proj.weight"][0, 0, 0, 0, 0] = float("inf")
    payload = {"method": "toy", "encoder_config": enc.cfg.to_dict(), "encoder": state}
    with pytest.raises(CheckpointError, match="refusing to write .*1 of 126 encoder tensors hold NaN or Inf"):
        save_checkpoint(tmp_path / "bad.pth", payload)
    assert not any(tmp_path.iterdir())
    torch.save({"format": "nnssl", "format_version": 1, **payload}, tmp_path / "bad.pth")  # written by other means
    with pytest.raises(CheckpointError, match="1 of 126 encoder tensors hold NaN or Inf"):
        load_checkpoint(tmp_path / "bad.pth")
    network = SwinEncoder(EncoderConfig.preset("tiny", in_channels=1))
    before = {k: v.clone() for k, v in network.state_dict().items()}
    monkeypatch.setenv("nnssl_results", str(tmp_path))  # the attached plans find the file in the results folder
    configuration = {"nnssl_pretrained": describe_checkpoint(tmp_path / "bad.pth", "toy", "toy")[0]}
    with pytest.raises(CheckpointError, match="NaN or Inf"):  # SwinSSLTrainer.initialize loads through this
        load_pretrained_encoder(network, configuration, "Dataset990_X", "nnUNetSwinPlans_toy", 1)
    assert all(torch.equal(before[k], v) for k, v in network.state_dict().items())


def test_fused_step_changes_nothing_when_the_flag_is_zero():
    from nnssl.training.finite import step_flag, step_if_finite

    p = torch.nn.Parameter(torch.randn(4, 4))
    opt = torch.optim.AdamW([p], lr=0.1, fused=True)
    p.grad = torch.ones(4, 4)
    step_if_finite(opt, step_flag(torch.tensor(1.0), torch.tensor(2.0)))
    snapshot = {"p": p.detach().clone(), **{k: v.clone() for k, v in opt.state[p].items()}}
    p.grad = torch.full((4, 4), float("nan"))
    flag = step_flag(torch.tensor(1.0), torch.linalg.vector_norm(p.grad))
    assert float(flag) == 0.0
    step_if_finite(opt, flag)
    assert torch.equal(p.detach(), snapshot["p"])
    assert all(torch.equal(opt.state[p][k], snapshot[k]) for k in ("exp_avg", "exp_avg_sq", "step"))
    assert not hasattr(opt, "found_inf")


# --------------------------------------------------------------------------- a SIGKILL during a checkpoint write

DRIVER = """
import io, os, sys, time
import nnssl.tasks
nnssl.tasks._REGISTRY["toy"] = "toy_task:ToyTask"
import nnssl.checkpoint
original, writes = nnssl.checkpoint.atomic_write, []

def paused(path, write, **kw):
    # the second checkpoint_latest.pth write stops half way, as a machine that is killed there
    writes.append(path)
    if "checkpoint_latest" in str(path) and len(writes) == int(os.environ["PAUSE_AT_WRITE"]):
        def half(f):
            buffer = io.BytesIO()
            write(buffer)
            f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            f.flush()
            open(os.environ["SENTINEL"], "w").close()
            time.sleep(300)
        return original(path, half, **kw)
    return original(path, write, **kw)

nnssl.checkpoint.atomic_write = paused
from nnssl.cli.pretrain import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_during_a_checkpoint_write_then_resume_is_bitwise_exact(toy_env, capsys):
    from nnssl.cli.pretrain import main

    args = ["-m", "toy", "-d", "990", "--device", "cpu", "--encoder", "tiny", "--crop", "32", "--batch-size", "2",
            "--steps", "6", "--checkpoint-every", "2", "--lr", "1e-3", "--warmup-steps", "1", "--num-workers", "0",
            "--no-progress"]
    run = toy_env / "run"
    assert main([*args, "--output", str(toy_env / "reference")]) == 0
    reference = load_checkpoint(toy_env / "reference" / "checkpoint_final.pth")

    driver = toy_env / "driver.py"
    driver.write_text(DRIVER)
    sentinel = toy_env / "paused"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": str(torch.get_num_threads()), "PAUSE_AT_WRITE": "2", "SENTINEL": str(sentinel)}
    child = subprocess.Popen([sys.executable, str(driver), *args, "--output", str(run)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not sentinel.exists():
            assert child.poll() is None, child.stderr.read()
            assert time.time() < deadline, "the run never reached its second checkpoint"
            time.sleep(0.2)
        holder = json.loads((run / ".nnssl.lock").read_text())
        assert holder["pid"] == child.pid and holder["host"] == socket.gethostname()
        # a second run on the same folder, and a --resume while the owner runs, are refused naming the holder
        for extra in ([], ["--resume"]):
            assert main([*args, "--output", str(run), *extra]) == 2
            assert f"another run is using {run} (host {socket.gethostname()}, pid {child.pid}" in capsys.readouterr().err
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stderr.close()

    orphans = [p for p in run.iterdir() if TEMP_RE.match(p.name)]
    assert len(orphans) == 1 and orphans[0].name.startswith(f".checkpoint_latest.pth.{child.pid}.")
    assert load_checkpoint(run / "checkpoint_latest.pth")["step"] == 2  # the killed write left the last one intact

    assert main([*args, "--output", str(run), "--resume"]) == 0
    err = capsys.readouterr().err
    assert f"took over the lock of a run that is gone (host {socket.gethostname()}, pid {child.pid}" in err
    assert "removed 1 partial file(s) of interrupted writes" in err
    _assert_same_state(load_checkpoint(run / "checkpoint_final.pth"), reference)
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint_final.pth", "checkpoint_latest.pth",
                                                     "checkpoint_previous.pth", "config.json", "log.jsonl",
                                                     "loss.png"]
    assert load_checkpoint(run / "checkpoint_previous.pth")["step"] == 4
    assert [json.loads(l)["step"] for l in (run / "log.jsonl").read_text().splitlines()] == list(range(6))


# ---------------------------------------------------------------- generations, partial log lines, resume changes

def test_a_truncated_latest_checkpoint_falls_back_to_the_previous_generation(toy_env, monkeypatch, capsys):
    cfg = _cfg(steps=3, checkpoint_every=1)
    straight = load_checkpoint(run_pretraining(cfg, toy_env / "straight", progress=False))
    original = loop.TrainingLog.append

    def interrupt(self, record):
        original(self, record)
        if record["step"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop.TrainingLog, "append", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_pretraining(cfg, toy_env / "run", progress=False)
    monkeypatch.setattr(loop.TrainingLog, "append", original)
    run = toy_env / "run"
    assert load_checkpoint(run / "checkpoint_latest.pth")["step"] == 2
    assert load_checkpoint(run / "checkpoint_previous.pth")["step"] == 1
    data = (run / "checkpoint_latest.pth").read_bytes()
    (run / "checkpoint_latest.pth").write_bytes(data[: len(data) // 3])  # a disk that lost the end of the file
    with (run / "log.jsonl").open("a") as f:
        f.write('{"step": 3, "lo')  # a crash during an append
    capsys.readouterr()

    final = run_pretraining(cfg, run, resume=True, progress=False)
    err = capsys.readouterr().err
    assert "checkpoint_latest.pth is not a readable PyTorch checkpoint" in err
    assert "resuming from checkpoint_previous.pth (step 1)" in err
    assert "dropped a partial last line of" in err
    _assert_same_state(load_checkpoint(final), straight)
    assert [json.loads(l)["step"] for l in (run / "log.jsonl").read_text().splitlines()] == [0, 1, 2]


# -------------------------------------------------------------------------------------------------- the run lock

def test_lock_refuses_a_second_holder_takes_over_a_dead_one_and_leaves_nothing(tmp_path, monkeypatch):
    from nnssl.training.runlock import LOCK_NAME, RunLock, RunLockedError

    folder = tmp_path / "run"
    with RunLock(folder):
        with pytest.raises(RunLockedError, match=f"another run is using .*pid {os.getpid()}"):
            RunLock(folder).acquire()  # flock conflicts between two open files, also in one process
    assert not (folder / LOCK_NAME).exists()

    # where flock does not work, the pid decides: a dead holder is taken over, a live one refused
    monkeypatch.setattr(RunLock, "_flock", lambda self, fd: False)
    dead = subprocess.Popen(["true"])
    dead.wait()
    (folder / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "started": "x"}))
    lock = RunLock(folder).acquire()
    assert lock.notes and f"pid {dead.pid}" in lock.notes[0]
    assert json.loads((folder / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()
    live = subprocess.Popen(["sleep", "30"])
    try:
        (folder / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": live.pid, "started": "x"}))
        with pytest.raises(RunLockedError, match=f"pid {live.pid}"):
            RunLock(folder).acquire()
        assert json.loads((folder / LOCK_NAME).read_text())["pid"] == live.pid  # not taken
    finally:
        live.kill()
        live.wait()
    # a lock this run creates in a new folder goes with the folder when the run cannot start
    fresh = tmp_path / "fresh"
    RunLock(fresh).acquire().release(remove_empty_folder=True)
    assert not fresh.exists()


# ---------------------------------------------------------------------------- temporary files, full device, modes

def test_stale_temporary_files_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = subprocess.Popen(["sleep", "30"])
    try:
        stale = tmp_path / f".checkpoint_latest.pth.{dead.pid}.abc123.tmp"
        busy = tmp_path / f".checkpoint_latest.pth.{live.pid}.def456.tmp"
        other = tmp_path / ".hidden.tmp"
        for p in (stale, busy, other):
            p.write_bytes(b"x" * 10)
        assert remove_stale_temp_files(tmp_path) == [(stale, 10)]
        assert busy.exists() and other.exists()
        assert remove_stale_temp_files(tmp_path, all_writers=True) == [(busy, 10)]  # a folder this process holds
    finally:
        live.kill()
        live.wait()


class _FullDevice(io.RawIOBase):
    """A file that accepts ``room`` bytes, then fails as a full device does."""

    def __init__(self, f, room: int) -> None:
        self.f, self.room = f, room

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        if len(b) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(b)
        return self.f.write(b)


def test_a_full_device_names_the_sizes_and_keeps_the_previous_file(tmp_path):
    path = tmp_path / "checkpoint_latest.pth"
    path.write_bytes(b"previous")
    tensors = {"w": torch.randn(1 << 20)}  # 4 MB
    with pytest.raises(NoSpaceError) as e:
        atomic_write(path, lambda f: torch.save(tensors, _FullDevice(f, 1 << 20)), size_hint=4 << 20)
    assert str(e.value).startswith(f"no space left on the device of {tmp_path}")
    assert "checkpoint_latest.pth needs about 4 MB" in str(e.value)
    assert path.read_bytes() == b"previous" and sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_a_real_full_device_gives_one_error_line(toy_env, tmp_path):
    """On a 2 MB tmpfs (a private mount namespace; skipped where that is not allowed) the first checkpoint does not
    fit: torch reports "[enforce fail at inline_container.cc...]", nnssl_pretrain says what is full and how much."""
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("no private mount namespace here (needs unshare -m)")
    mnt = tmp_path / "small"
    mnt.mkdir()
    code = ("import sys, nnssl.tasks; nnssl.tasks._REGISTRY['toy'] = 'toy_task:ToyTask'; "
            "from nnssl.cli.pretrain import main; sys.exit(main(sys.argv[1:]))")
    cmd = (f"mount -t tmpfs -o size=2m none {mnt} && {sys.executable} -c \"{code}\" -m toy -d 990 --device cpu "
           f"--encoder tiny --crop 32 --steps 2 --checkpoint-every 1 --num-workers 0 --no-progress --output {mnt}/run")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(["unshare", "-m", "sh", "-c", cmd], env=env, capture_output=True, text=True, timeout=300)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
    assert f"error: no space left on the device of {mnt}/run" in errors[0]
    assert "checkpoint_latest.pth needs about" in errors[0] and "Traceback" not in proc.stderr


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_files_get_the_permissions_of_a_plain_write(tmp_path, umask):
    from nnssl.encoders.swin import EncoderConfig, SwinEncoder

    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "plans.json", lambda f: f.write("{}"), binary=False)
        enc = SwinEncoder(EncoderConfig.preset("tiny", in_channels=1))
        save_checkpoint(tmp_path / "ckpt.pth", {"method": "toy", "encoder_config": enc.cfg.to_dict(),
                                                "encoder": enc.swin_state_dict()}, keep_previous=tmp_path / "prev")
    finally:
        os.umask(old)
    for name in ("plans.json", "ckpt.pth"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_a_killed_phantom_generation_leaves_no_hidden_folder(tmp_path, capsys):
    from nnssl.data.phantoms.datasets import write_datasets

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".Dataset900_PhantomCTPretrain.tmp-{dead.pid}-0a1b2c3d"
    (stale / "imagesTr").mkdir(parents=True)
    (stale / "imagesTr" / "partial.nii.gz").write_bytes(b"x")
    write_datasets(tmp_path, ["900"], cases=1, size=32, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dataset900_PhantomCTPretrain"]
    assert "removed 1 partial dataset folder(s) of interrupted runs" in capsys.readouterr().out


def test_a_crop_much_larger_than_the_images_is_warned_about(toy_env):
    from nnssl.data.preprocessed import DataError, check_crop_fits, find_sources

    sources = find_sources(["990"])  # 48^3 images
    assert check_crop_fits(sources, (32, 32, 32)) == []
    (warning,) = check_crop_fits(sources, (64, 64, 64))  # 58% padding: runs, with a word
    assert "exceeds the median image shape of Dataset990_ToyCT (48x48x48): 58% of a typical crop is padding" in warning
    with pytest.raises(DataError, match="exceeds every image"):
        check_crop_fits(sources, (96, 96, 96))
