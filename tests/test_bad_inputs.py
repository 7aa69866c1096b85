"""Bad input to every command, one row each: exit code 2, one `error:` line that names the problem (and the fix), no
traceback, and nothing written or lost anywhere in the workspace.

The workspace is built once (a toy preprocessed dataset and broken variants of it, a finished pretraining run,
checkpoints good and bad, grid specs, a results folder) and every row runs a command's ``main`` in-process against it;
a snapshot of every file (path, size, modification time) before and after each row proves that the command neither
wrote nor removed anything.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

import nnssl.tasks
from preprocessed_fixture import write_preprocessed_dataset

PRE = "preprocessed"


def _tiny_checkpoint(path: Path, nan: bool = False) -> Path:
    """An nnssl checkpoint of the tiny encoder without training (``nan``: 3 tensors poisoned, written raw)."""
    from nnssl.checkpoint import FORMAT, FORMAT_VERSION
    from nnssl.encoders.swin import EncoderConfig, SwinEncoder

    torch.manual_seed(0)
    enc = SwinEncoder(EncoderConfig.preset("tiny", in_channels=1))
    state = enc.swin_state_dict()
    if nan:
        for key in list(state)[:3]:
            state[key] = torch.full_like(state[key], float("nan"))
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "method": "toy",
               "encoder_config": enc.cfg.to_dict(), "encoder": state,
               "provenance": {"normalization": {"schemes": ["CTNormalization"]}}}
    torch.save(payload, path)
    return path


def _write_run_with(path: Path, run: Path, **changes) -> None:
    """A copy of the finished run's latest checkpoint with some entries replaced (a damaged run folder)."""
    ckpt = torch.load(run / "checkpoint_latest.pth", weights_only=False)
    ckpt.update(changes)
    path.mkdir(parents=True)
    torch.save(ckpt, path / "checkpoint_latest.pth")


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """The shared workspace (read-only for the rows)."""
    root = tmp_path_factory.mktemp("bad")
    pre = root / PRE
    write_preprocessed_dataset(pre, 990, cases=3, shape=(48, 48, 48))
    # constant images only
    write_preprocessed_dataset(pre, 991, name="Blank", cases=2, shape=(48, 48, 48), constant=True)
    # an interrupted preprocessing: 7 of 16 cases, the 8th half-written (image without its properties file)
    part = write_preprocessed_dataset(pre, 992, name="Partial", cases=8, shape=(32, 32, 32))
    (part / "nnUNetSwinPlans_3d_fullres" / "case_007.pkl").unlink()
    meta = json.loads((part / "dataset.json").read_text())
    (part / "dataset.json").write_text(json.dumps({**meta, "numTraining": 16}))
    # planned by nnU-Net only (no Swin plans)
    other = write_preprocessed_dataset(pre, 993, name="NoSwin", cases=1, shape=(32, 32, 32), plans="nnUNetPlans")
    assert not (other / "nnUNetSwinPlans.json").exists()
    # Swin plans as the planner writes them (for nnssl_attach), and an attached plans file
    plans = json.loads((pre / "Dataset990_ToyCT" / "nnUNetSwinPlans.json").read_text())
    plans["configurations"]["3d_fullres"]["patch_size"] = [64, 64, 64]
    (pre / "Dataset990_ToyCT" / "nnUNetSwinPlans.json").write_text(json.dumps(plans))
    taken = json.loads(json.dumps(plans))
    taken["configurations"]["3d_fullres"]["nnssl_pretrained"] = {"name": "taken", "method": "dino", "file": "x.pth",
                                                                 "sha256": "0" * 64}
    (pre / "Dataset990_ToyCT" / "nnUNetSwinPlans_taken.json").write_text(json.dumps(taken))

    ck = root / "ckpt"
    ck.mkdir()
    _tiny_checkpoint(ck / "good.pt")
    _tiny_checkpoint(ck / "nan.pt", nan=True)
    (ck / "truncated.pt").write_bytes((ck / "good.pt").read_bytes()[:4000])
    from monai.networks.nets import SwinUNETR

    torch.save(SwinUNETR(in_channels=1, out_channels=2, feature_size=12, window_size=4).state_dict(),
               ck / "monai.pt")

    # a finished two-step run, and damaged or locked run folders
    os.environ["nnUNet_preprocessed"] = str(pre)
    nnssl.tasks._REGISTRY["toy"] = "toy_task:ToyTask"
    from nnssl.training.loop import PretrainConfig, run_pretraining

    runs = root / "runs"
    run_pretraining(PretrainConfig(method="toy", datasets=["990"], encoder="tiny", crop=(32, 32, 32), batch_size=1,
                                   steps=2, device="cpu", num_workers=0, checkpoint_every=1, lr=1e-3),
                    runs / "done", progress=False)
    nan_state = torch.load(runs / "done" / "checkpoint_latest.pth", weights_only=False)["task_state"]
    nan_state = {k: (torch.full_like(v, float("nan")) if v.is_floating_point() else v) for k, v in nan_state.items()}
    _write_run_with(runs / "nan_resume", runs / "done", task_state=nan_state)
    (runs / "garbage").mkdir()
    (runs / "garbage" / "checkpoint_latest.pth").write_bytes(b"not a checkpoint")
    (runs / "other_host").mkdir()
    (runs / "other_host" / ".nnssl.lock").write_text(json.dumps(
        {"host": "node-elsewhere-17", "pid": 4242, "started": "2026-01-01 00:00:00"}))
    # a live run on this host: a lock file whose flock this test process holds
    (runs / "live").mkdir()
    live = runs / "live" / ".nnssl.lock"
    live.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": "now"}))
    fd = os.open(live, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    specs = root / "specs"
    specs.mkdir()
    good = {"name": "study", "device": "cpu",
            "pretraining": {"datasets": [900], "encoder": "tiny", "crop": 64, "steps": 5},
            "methods": ["scratch", "simmim"], "downstream": {"datasets": [901], "shots": ["all"], "folds": [0]}}
    (specs / "empty.yaml").write_text("")
    (specs / "list.yaml").write_text("- name: x\n- pretraining: {}\n")
    (specs / "syntax.yaml").write_text("name: x\npretraining: {datasets: [900]\ndownstream: {datasets: [901]}\n")
    (specs / "syntax.json").write_text("{\"name\": \"x\",}")

    def spec(name: str, **pretraining):
        body = {**good, "pretraining": {**good["pretraining"], **pretraining}}
        (specs / name).write_text(json.dumps(body))

    spec("crop48.json", crop=48)
    spec("option.json", options={"simmim": {"mask_ratoi": 0.5}})
    spec("negative.json", steps=-5)
    spec("lr.json", lr=float("inf"))
    (specs / "method.json").write_text(json.dumps({**good, "methods": ["simclrr"]}))
    (specs / "name.json").write_text(json.dumps({**good, "name": "a/b"}))
    (specs / "folds.json").write_text(json.dumps({**good, "downstream": {**good["downstream"], "folds": 0}}))
    # a grid whose pretraining finished with other settings (steps 5), now asked for 7
    from nnssl.benchmark import stamps
    from nnssl.benchmark.runner import Paths, build_jobs
    from nnssl.benchmark.spec import spec_from_dict

    paths = Paths.under(root / "grid")
    job = next(j for j in build_jobs(spec_from_dict(good), paths, root / "grid" / "report") if j.stage == "pretrain")
    job.done_marker.parent.mkdir(parents=True)
    job.done_marker.write_bytes(b"")
    job.settings_file.write_text(json.dumps(job.identity))
    spec("changed.json", steps=7)
    assert stamps.record_state(job) == "match"

    (root / "results_empty").mkdir()
    (root / "groups.json").write_text("{bad json")
    raw = root / "raw"
    raw.mkdir()
    from datasets import make_dataset

    make_dataset(raw, 531, num_cases=1, shape=(8, 8, 8))
    yield root
    os.close(fd)


@pytest.fixture(autouse=True)
def _env(ws, monkeypatch):
    monkeypatch.setenv("nnUNet_preprocessed", str(ws / PRE))
    monkeypatch.setenv("nnUNet_raw", str(ws / "raw"))
    monkeypatch.setenv("nnUNet_results", str(ws / "results_empty"))
    monkeypatch.setenv("nnssl_results", str(ws / "nnssl_results"))
    monkeypatch.setitem(nnssl.tasks._REGISTRY, "toy", "toy_task:ToyTask")


def _main(command: str) -> Callable[[list[str]], int]:
    import importlib

    module = {"pretrain": "pretrain", "attach": "attach", "convert": "convert", "benchmark": "benchmark",
              "report": "report", "plan": "plan_and_preprocess", "phantoms": "phantoms", "cka": "cka"}[command]
    return importlib.import_module(f"nnssl.cli.{module}").main


@dataclass
class Row:
    id: str
    command: str
    argv: list[str]  # "{ws}" is replaced by the workspace folder
    message: str  # must appear in the error line


PRETRAIN = ["-m", "toy", "-d", "990", "--device", "cpu", "--encoder", "tiny", "--crop", "32", "--no-progress",
            "--num-workers", "0", "--output", "{ws}/runs/new"]
DONE_RUN = [*PRETRAIN[:-1], "{ws}/runs/done", "--batch-size", "1", "--steps", "2", "--checkpoint-every", "1",
            "--lr", "1e-3"]


def _run(path: str) -> list[str]:
    return [*PRETRAIN[:-1], "{ws}/runs/" + path]


ROWS = [
    # nnssl_pretrain: values
    Row("lr-inf", "pretrain", [*PRETRAIN, "--lr", "inf"], "lr (--lr) must be a finite number > 0, got inf"),
    Row("lr-nan", "pretrain", [*PRETRAIN, "--lr", "nan"], "lr (--lr) must be a finite number > 0, got nan"),
    Row("lr-zero", "pretrain", [*PRETRAIN, "--lr", "0"], "lr (--lr) must be a finite number > 0, got 0"),
    Row("lr-negative", "pretrain", [*PRETRAIN, "--lr", "-1"], "(--lr) must be a finite number > 0"),
    Row("min-lr", "pretrain", [*PRETRAIN, "--min-lr=-1e-5"], "min_lr (--min-lr) must be a finite number >= 0"),
    Row("weight-decay-nan", "pretrain", [*PRETRAIN, "--weight-decay", "nan"], "weight_decay (--weight-decay)"),
    Row("clip-negative", "pretrain", [*PRETRAIN, "--clip-grad", "-1"], "clip_grad (--clip-grad)"),
    Row("warmup", "pretrain", [*PRETRAIN, "--steps", "5", "--warmup-steps", "5"],
        "warmup_steps (--warmup-steps) = 5 must lie in [0, steps=5)"),
    Row("betas", "pretrain", [*PRETRAIN, "--betas", "0.9", "1.5"], "betas (--betas) must be two numbers in [0, 1)"),
    Row("epochs-negative", "pretrain", [*PRETRAIN, "--epochs", "-3"], "--epochs must be a number > 0, got -3"),
    Row("epochs-zero", "pretrain", [*PRETRAIN, "--epochs", "0"], "--epochs must be a number > 0, got 0"),
    Row("steps-negative", "pretrain", [*PRETRAIN, "--steps", "-5"], "--steps must be >= 1, got -5"),
    Row("steps-zero", "pretrain", [*PRETRAIN, "--steps", "0"], "--steps must be >= 1, got 0"),
    Row("batch-zero", "pretrain", [*PRETRAIN, "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    Row("checkpoint-every-zero", "pretrain", [*PRETRAIN, "--checkpoint-every", "0"],
        "--checkpoint-every must be >= 1, got 0"),
    Row("log-every-zero", "pretrain", [*PRETRAIN, "--log-every", "0"], "--log-every must be >= 1, got 0"),
    Row("attention-unknown", "pretrain", [*PRETRAIN, "--attention", "flash"],
        "--attention 'flash': give auto, eager, sdpa, or 4 comma-separated kinds"),
    Row("workers-negative", "pretrain", [*PRETRAIN, "--num-workers", "-1"], "--num-workers must be >= 0"),
    Row("crop-48", "pretrain", [*PRETRAIN, "--crop", "48"], "axis 0 has size 48 (use 32 or 64)"),
    Row("crop-two", "pretrain", [*PRETRAIN, "--crop", "32", "32"], "--crop takes one or three sizes"),
    Row("crop-zero", "pretrain", [*PRETRAIN, "--crop", "0"], "--crop sizes must be positive"),
    Row("crop-exceeds-images", "pretrain", [*PRETRAIN, "--crop", "128"],
        "the crop (128, 128, 128) exceeds every image of Dataset990_ToyCT"),
    # nnssl_pretrain: method, options, data
    Row("method-unknown", "pretrain", ["-m", "simclrr", "-d", "990", "--device", "cpu"], "did you mean 'simclr'"),
    Row("no-datasets", "pretrain", ["-m", "toy"], "pass a method (-m) and the datasets (-d)"),
    Row("option-typo", "pretrain", [*PRETRAIN, "-o", "mask_ratoi=0.3"], "did you mean 'mask_ratio'"),
    Row("option-no-value", "pretrain", [*PRETRAIN, "-o", "mask_ratio"], "expected KEY=VALUE"),
    Row("dataset-unknown", "pretrain", [*PRETRAIN[:3], "12345", *PRETRAIN[4:]], "not preprocessed yet"),
    Row("dataset-no-swin-plans", "pretrain", [*PRETRAIN[:3], "993", *PRETRAIN[4:]], "has no plans 'nnUNetSwinPlans'"),
    Row("dataset-constant", "pretrain", [*PRETRAIN[:3], "991", *PRETRAIN[4:]],
        "every case of Dataset991_Blank has a constant image"),
    Row("dataset-incomplete", "pretrain", [*PRETRAIN[:3], "992", *PRETRAIN[4:]],
        "is incomplete (7 of 16 cases, 1 half-written (case_007)): its preprocessing was interrupted. Complete it "
        "with `nnssl_plan_and_preprocess -d 992`"),
    # nnssl_pretrain: run folders
    Row("allow-changed-without-resume", "pretrain", [*PRETRAIN, "--allow-changed", "lr"],
        "--allow-changed only applies with --resume"),
    Row("resume-nothing", "pretrain", [*PRETRAIN, "--resume"], "--resume: no checkpoint_latest.pth in"),
    Row("existing-run", "pretrain", DONE_RUN, "already holds a run: pass --resume to continue it"),
    Row("resume-changed-lr", "pretrain", [*DONE_RUN[:-1], "5e-4", "--resume"],
        "To continue with the new optimisation settings, add --allow-changed lr"),
    Row("resume-changed-steps", "pretrain", [*DONE_RUN, "--resume", "--steps", "3"],
        "cannot resume: the run was started with other settings (steps: checkpoint 2 vs now 3)"),
    Row("resume-allow-not-optimisation", "pretrain", [*DONE_RUN, "--resume", "--allow-changed", "steps"],
        "--allow-changed steps: only the optimisation settings may change on resume"),
    Row("resume-garbage", "pretrain", [*_run("garbage"), "--resume"],
        "is not a readable PyTorch checkpoint"),
    Row("resume-nan", "pretrain", [*_run("nan_resume"), "--resume", "--batch-size", "1", "--steps", "2",
                                   "--checkpoint-every", "1", "--lr", "1e-3"],
        "task tensors hold NaN or Inf values"),
    Row("lock-other-host", "pretrain", _run("other_host"),
        "is locked by a run on another host (host node-elsewhere-17, pid 4242"),
    Row("lock-live", "pretrain", [*_run("live"), "--resume"], f"another run is using"),
    Row("read-only-output", "pretrain", [*PRETRAIN[:-1], "/sys/nnssl-test-run"],
        "cannot write to the output folder /sys/nnssl-test-run"),
    # nnssl_attach
    Row("attach-nan", "attach", ["-d", "990", "--checkpoint", "{ws}/ckpt/nan.pt", "--name", "x"],
        "3 of 126 encoder tensors hold NaN or Inf values"),
    Row("attach-missing", "attach", ["-d", "990", "--checkpoint", "{ws}/ckpt/none.pt", "--name", "x"],
        "none.pt does not exist"),
    Row("attach-foreign", "attach", ["-d", "990", "--checkpoint", "{ws}/ckpt/monai.pt", "--name", "x"],
        "is not an nnssl checkpoint; convert public weights first with `nnssl_convert IN OUT --from auto`"),
    Row("attach-truncated", "attach", ["-d", "990", "--checkpoint", "{ws}/ckpt/truncated.pt", "--name", "x"],
        "is not a readable PyTorch checkpoint"),
    Row("attach-dataset", "attach", ["-d", "999", "--checkpoint", "{ws}/ckpt/good.pt"], "unknown dataset id 999"),
    Row("attach-name", "attach", ["-d", "990", "--checkpoint", "{ws}/ckpt/good.pt", "--name", "a b"],
        "--name 'a b': use letters, digits"),
    Row("attach-attached-plans", "attach", ["-d", "990", "--checkpoint", "{ws}/ckpt/good.pt", "-p",
                                            "nnUNetSwinPlans_taken"], "these plans already attach a checkpoint"),
    Row("attach-no-swin-plans", "attach", ["-d", "993", "--checkpoint", "{ws}/ckpt/good.pt"],
        "run nnssl_plan_and_preprocess -d 993 first"),
    Row("attach-exists", "attach", ["-d", "990", "--checkpoint", "{ws}/ckpt/good.pt", "--name", "taken"],
        "exists; pass --overwrite to replace it"),
    # nnssl_convert
    Row("convert-wrong-from", "convert", ["{ws}/ckpt/monai.pt", "{ws}/out.pt", "--from", "smit"],
        "use --from monai-swinunetr"),
    Row("convert-nan", "convert", ["{ws}/ckpt/nan.pt", "{ws}/out.pt", "--from", "nnssl"], "hold NaN or Inf values"),
    Row("convert-missing", "convert", ["{ws}/ckpt/none.pt", "{ws}/out.pt", "--from", "auto"], "none.pt"),
    Row("convert-same-file", "convert", ["{ws}/ckpt/good.pt", "{ws}/ckpt/good.pt", "--from", "nnssl"],
        "input and output are the same file"),
    Row("convert-method-export", "convert", ["{ws}/ckpt/good.pt", "{ws}/out.pt", "--from", "nnssl", "--to", "monai",
                                             "--method", "x"], "--method names an nnssl checkpoint's method"),
    Row("convert-plans-alone", "convert", ["{ws}/ckpt/good.pt", "{ws}/out.pt", "--from", "nnssl", "--plans", "p"],
        "--plans and --orient-from only apply with --orient-to or --orient-like"),
    # nnssl_benchmark
    Row("benchmark-nothing", "benchmark", [], "give either a SPEC file or --demo"),
    Row("benchmark-missing", "benchmark", ["{ws}/specs/none.yaml"], "none.yaml does not exist"),
    Row("benchmark-empty-yaml", "benchmark", ["{ws}/specs/empty.yaml", "--dry-run"],
        "{ws}/specs/empty.yaml is empty: write a mapping"),
    Row("benchmark-list-yaml", "benchmark", ["{ws}/specs/list.yaml", "--dry-run"],
        "list.yaml holds a list, not a mapping"),
    Row("benchmark-yaml-syntax", "benchmark", ["{ws}/specs/syntax.yaml", "--dry-run"], "is not valid YAML at line"),
    Row("benchmark-json-syntax", "benchmark", ["{ws}/specs/syntax.json", "--dry-run"], "is not valid JSON"),
    Row("benchmark-crop-48", "benchmark", ["{ws}/specs/crop48.json", "--dry-run"],
        "pretraining.crop: Swin needs every spatial axis divisible by 32"),
    Row("benchmark-option-typo", "benchmark", ["{ws}/specs/option.json", "--dry-run"], "did you mean 'mask_ratio'"),
    Row("benchmark-negative-steps", "benchmark", ["{ws}/specs/negative.json", "--dry-run"],
        "pretraining.steps must be a positive integer, got -5"),
    Row("benchmark-lr-inf", "benchmark", ["{ws}/specs/lr.json", "--dry-run"], "pretraining.lr=inf is not valid"),
    Row("benchmark-method", "benchmark", ["{ws}/specs/method.json", "--dry-run"], "did you mean 'simclr'"),
    Row("benchmark-name", "benchmark", ["{ws}/specs/name.json", "--dry-run"], "name: 'a/b' must be a word"),
    Row("benchmark-folds", "benchmark", ["{ws}/specs/folds.json", "--dry-run"], "downstream.folds must be a list"),
    Row("benchmark-changed", "benchmark", ["{ws}/specs/changed.json", "--workdir", "{ws}/grid", "--no-progress"],
        "1 job(s) have outputs made with other settings: pretrain/simmim (--steps 5 -> 7). Pass --rerun-changed"),
    # nnssl_report
    Row("report-empty", "report", ["{ws}/results_empty", "--out", "{ws}/report_out"],
        "no finished fine-tuning runs in"),
    Row("report-missing", "report", ["{ws}/none"], "results folder"),
    Row("report-bootstrap", "report", ["{ws}/results_empty", "--bootstrap", "0"], "--bootstrap must be >= 1"),
    Row("report-level", "report", ["{ws}/results_empty", "--level", "1.5"], "--level must be in (0, 1)"),
    Row("report-groups", "report", ["{ws}/results_empty", "--groups", "{ws}/groups.json"], "is not valid JSON"),
    # nnssl_plan_and_preprocess
    Row("plan-unknown", "plan", ["-d", "999", "-np", "1", "-npfp", "1"], "unknown dataset id 999"),
    Row("plan-configuration", "plan", ["-d", "531", "-c", "2d"], "only 3d_fullres is planned"),
    Row("plan-encoder", "plan", ["-d", "531", "--encoder", "huge"], "unknown encoder preset 'huge'"),
    Row("plan-memory", "plan", ["-d", "531", "-gpu_memory_target", "0"], "-gpu_memory_target must be > 0 GB"),
    # nnssl_phantoms
    Row("phantoms-cases", "phantoms", ["-d", "901", "--cases", "0", "--raw", "{ws}/raw"],
        "cases must be a positive integer"),
    Row("phantoms-size", "phantoms", ["-d", "901", "--size", "32", "32", "--raw", "{ws}/raw"],
        "--size takes one number (a cube) or three"),
    Row("phantoms-unknown", "phantoms", ["-d", "977", "--raw", "{ws}/raw"], "977"),
    # nnssl_cka
    Row("cka-no-run", "cka", ["--pretrained", "{ws}/ckpt/good.pt", "-d", "990", "-tr", "SwinSSLTrainer", "-p",
                              "nnUNetSwinPlans_taken", "--out", "{ws}/cka.json"],
        "fold_0 does not exist: fine-tune first (nnUNetv2_train ... -tr SwinSSLTrainer -p nnUNetSwinPlans_taken)"),
]


@dataclass(frozen=True)
class Entry:
    size: int
    mtime: int


def _snapshot(root: Path) -> dict[str, Entry]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            p = Path(dirpath) / name
            st = p.stat()
            out[str(p.relative_to(root))] = Entry(st.st_size, st.st_mtime_ns)
        for name in dirnames:
            out[str((Path(dirpath) / name).relative_to(root)) + "/"] = Entry(0, 0)
    return out


def test_the_table_is_large_and_covers_every_command():
    assert len(ROWS) >= 60 and len({r.id for r in ROWS}) == len(ROWS)
    assert {r.command for r in ROWS} == {"pretrain", "attach", "convert", "benchmark", "report", "plan", "phantoms",
                                         "cka"}


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input(row, ws, capsys):
    argv = [a.replace("{ws}", str(ws)) for a in row.argv]
    before = _snapshot(ws)
    rc = _main(row.command)(argv)
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert rc == 2, captured.err[-2000:]
    assert len(errors) == 1, captured.err[-2000:]
    assert row.message.replace("{ws}", str(ws)) in errors[0], errors[0]
    assert "Traceback" not in captured.err + captured.out
    after = _snapshot(ws)
    assert after == before, {"written": sorted(set(after) - set(before)), "lost": sorted(set(before) - set(after)),
                             "changed": sorted(k for k in before if k in after and before[k] != after[k])}
