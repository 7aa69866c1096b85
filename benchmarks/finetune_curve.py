"""Learning curve of from-scratch fine-tuning: Dice of chosen labels against iterations, one column per learning rate.

    python benchmarks/finetune_curve.py -d 901 --lr 1e-4 3e-4 1e-3 --epochs 50 --iterations 8 --threads 2

Runs ``nnUNetv2_train <d> 3d_fullres <fold> -tr SwinScratchTrainer_<E>epochs`` once per learning rate (the trainers'
``NNSSL_LEARNING_RATE`` knob; ``NNSSL_ITERATIONS_PER_EPOCH`` iterations per epoch) on the preprocessed dataset of the
current ``nnUNet_preprocessed``, each into its own results folder under ``--out``, then prints a Markdown table: for
every ``--every``-th epoch the mean pseudo-Dice (nnU-Net's per-epoch validation on ``NNSSL_VAL_ITERATIONS_PER_EPOCH``
patches) over ``--labels``, and in the last row the Dice of nnU-Net's final validation (``validation/summary.json``,
whole validation cases) over the same labels, with wall time per run. A finished run is read, not trained again, so
the script resumes. This is how the demo's and the CPU study's fine-tuning budgets were sized (documentation/results.md).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

PSEUDO_DICE = re.compile(r"Pseudo dice \[(.*)\]")
FLOAT = re.compile(r"np\.float32\(([-0-9.eE+naninf]+)\)|(?<![\w(])([-0-9.]+(?:[eE][-+]?\d+)?)")


def parse_pseudo_dice(log_text: str) -> list[list[float]]:
    """Per epoch, nnU-Net's pseudo-Dice per foreground label (label order of dataset.json)."""
    epochs = []
    for m in PSEUDO_DICE.finditer(log_text):
        epochs.append([float(a or b) for a, b in FLOAT.findall(m.group(1))])
    return epochs


def label_ids(dataset_json: dict, names: list[str]) -> list[int]:
    labels = {k: v for k, v in dataset_json["labels"].items() if k != "background"}
    missing = [n for n in names if n not in labels]
    if missing:
        sys.exit(f"error: --labels {', '.join(missing)} not in the dataset's labels ({', '.join(labels)})")
    return [int(labels[n]) for n in names]


def run_one(dataset: str, fold: int, lr: str, epochs: int, iterations: int, val_iterations: int, threads: int,
            out: Path) -> tuple[Path, float]:
    """Train (or find) one run; returns its fold folder and wall seconds (0 when it was already finished)."""
    results = out / f"lr{lr}"
    env = {**os.environ, "nnUNet_results": str(results), "NNSSL_LEARNING_RATE": lr,
           "NNSSL_ITERATIONS_PER_EPOCH": str(iterations), "NNSSL_VAL_ITERATIONS_PER_EPOCH": str(val_iterations),
           "NNSSL_DISABLE_MIRRORING": "1", "OMP_NUM_THREADS": str(threads), "nnUNet_n_proc_DA": "0",
           "nnUNet_def_n_proc": "1"}
    trainer = f"SwinScratchTrainer_{epochs}epochs"
    found = list(results.glob(f"Dataset*/{trainer}__nnUNetSwinPlans__3d_fullres/fold_{fold}"))
    if found and (found[0] / "validation" / "summary.json").is_file():
        return found[0], 0.0
    results.mkdir(parents=True, exist_ok=True)
    cmd = ["nnUNetv2_train", dataset, "3d_fullres", str(fold), "-tr", trainer, "-p", "nnUNetSwinPlans", "-device", "cpu"]
    if found and (found[0] / "checkpoint_latest.pth").is_file():
        cmd.append("--c")
    start = time.perf_counter()
    with open(out / f"lr{lr}.log", "a") as log:
        subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    found = list(results.glob(f"Dataset*/{trainer}__nnUNetSwinPlans__3d_fullres/fold_{fold}"))
    return found[0], time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--dataset", required=True, help="preprocessed dataset id (nnssl_plan_and_preprocess)")
    p.add_argument("--lr", nargs="+", default=["1e-4"], help="learning rates, one run each (default: 1e-4)")
    p.add_argument("--epochs", type=int, default=50, help="a SwinScratchTrainer_<E>epochs variant (default: 50)")
    p.add_argument("--iterations", type=int, default=8, help="iterations per epoch (default: 8)")
    p.add_argument("--val-iterations", type=int, default=2, help="validation iterations per epoch (default: 2)")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads per run (default: 2)")
    p.add_argument("--labels", default="liver,spleen,kidney_right,kidney_left",
                   help="comma-separated label names averaged in the table (default: the large organs)")
    p.add_argument("--every", type=int, default=5, help="print every N-th epoch (default: 5)")
    p.add_argument("--out", default="finetune_curve", help="folder of the runs and their logs")
    args = p.parse_args()

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    names = [n.strip() for n in args.labels.split(",") if n.strip()]
    columns = {}
    for lr in args.lr:
        fold_dir, seconds = run_one(args.dataset, args.fold, lr, args.epochs, args.iterations, args.val_iterations,
                                    args.threads, out)
        dataset_json = json.loads((fold_dir.parent / "dataset.json").read_text())
        ids = label_ids(dataset_json, names)
        log_text = "".join(f.read_text() for f in sorted(fold_dir.glob("training_log_*.txt")))
        curve = [sum(e[i - 1] for i in ids) / len(ids) for e in parse_pseudo_dice(log_text)]
        summary = json.loads((fold_dir / "validation" / "summary.json").read_text())
        final = sum(summary["mean"][str(i)]["Dice"] for i in ids) / len(ids)
        columns[lr] = (curve, final, seconds)
    print(f"Dataset {args.dataset}, fold {args.fold}: mean Dice over {', '.join(names)}; "
          f"{args.iterations} iterations per epoch, {args.threads} thread(s)")
    print("| iterations | " + " | ".join(f"lr {lr}" for lr in columns) + " |")
    print("| --- |" + " --- |" * len(columns))
    for e in range(args.every - 1, args.epochs, args.every):
        cells = [f"{c[0][e]:.3f}" if e < len(c[0]) else "" for c in columns.values()]
        print(f"| {(e + 1) * args.iterations} | " + " | ".join(cells) + " |")
    print("| final validation | " + " | ".join(f"{c[1]:.3f}" for c in columns.values()) + " |")
    print("| wall s (0: read) | " + " | ".join(f"{c[2]:.0f}" for c in columns.values()) + " |")


if __name__ == "__main__":
    main()
