"""Cost: what each method's numbers cost, from the compute ledgers (``nnssl.ledger``) in the fold folders.

Every fine-tuning fold writes ``nnssl_finetune.json`` with its own ledger (``compute``) and, for a pretrained encoder,
what the trainer read from the checkpoint (``pretraining``: the pretraining run's ledger and the pretraining /
fine-tuning mismatches of spacing, intensity normalisation and patch size). Per dataset and regime the table gives each
method's pretraining cost, its fine-tuning cost (all folds and draws of the regime), its Dice gain over the
from-scratch runs of its encoder and that gain per pretraining device-hour, and flags the mismatches.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from nnssl.analysis.report.blocks import Heading, Para, Table
from nnssl.analysis.report.context import ReportContext
from nnssl.analysis.report.format import fmt
from nnssl.analysis.results import FoldResult, paired_case_means
from nnssl.ledger import FINETUNE_RECORD, device_hours
from nnssl.nnunet.naming import is_cnn_baseline, is_scratch

def read_record(fold: FoldResult) -> dict[str, Any] | None:
    """A fold's nnssl_finetune.json, or None when it has none (older runs, other trainers) or it does not parse."""
    path = Path(fold.path) / FINETUNE_RECORD
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _hours(records: list[dict[str, Any] | None]) -> tuple[float, str, int] | None:
    """(device-hours summed over the records' ledgers, unit, ledgers found); None when no record has a ledger."""
    found = [r["compute"] for r in records if r and isinstance(r.get("compute"), dict)]
    if not found:
        return None
    units = {device_hours(c)[1] for c in found}
    unit = units.pop() if len(units) == 1 else "mixed units"
    return float(sum(device_hours(c)[0] for c in found)), unit, len(found)


def _fmt_hours(h: tuple[float, str, int] | None, expected: int | None = None) -> str:
    if h is None:
        return "not recorded"
    hours, unit, n = h
    text = f"{hours:.3g} {unit}"
    if expected is not None and n < expected:
        text += f" ({n} of {expected} folds recorded)"
    return text


def _pretraining(records: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The pretraining part of the first record that has one (every fold of a method reads the same checkpoint)."""
    for r in records:
        if r and isinstance(r.get("pretraining"), dict):
            return r["pretraining"]
    return None


def _mismatches(pre: dict[str, Any] | None) -> str:
    if pre is None:
        return "-"
    parts = [f"{m['what']}: {m['pretraining']} vs {m['fine_tuning']}" for m in pre.get("mismatches") or []]
    parts += [f"{w} not recorded by the checkpoint" for w in pre.get("unrecorded") or []]
    return "; ".join(parts) if parts else "none"


def cost(ctx: ReportContext) -> None:
    """Add the "Cost" section (nothing without folds): per dataset, regime and method, the pretraining and the
    fine-tuning device-hours from the folds' nnssl_finetune.json ledgers, the paired Dice gain over the method's
    from-scratch baseline and that gain per pretraining hour, and the pretraining vs fine-tuning mismatches."""
    r, t, d = ctx.report, ctx.tree, ctx.opt.digits
    if not t.folds:
        return
    r.add(Heading(2, "Cost"))
    any_ledger, flagged, rows = False, [], []
    for ds in t.dataset_names():
        for regime in t.regimes(ds):
            for m in t.methods(ds, regime):
                folds = t.select(ds, regime, m)
                records = [read_record(f) for f in folds]
                fine = _hours(records)
                pre = _pretraining(records)
                if is_scratch(m) or is_cnn_baseline(m):
                    pre_hours = (0.0, "", 0)
                    pre_text = "none (from scratch)" if is_scratch(m) else "none (CNN baseline)"
                else:
                    ledger = (pre or {}).get("compute")
                    pre_hours = (*device_hours(ledger), 1) if isinstance(ledger, dict) else None
                    pre_text = _fmt_hours(pre_hours)
                any_ledger = any_ledger or fine is not None or (pre_hours is not None and pre_hours[2] > 0)
                base = None if is_scratch(m) else ctx.baseline_for(ds, regime, m)
                gain = per_hour = math.nan
                if base is not None:
                    a, b, n = paired_case_means(ctx.cases(ds, regime, m), ctx.cases(ds, regime, base))
                    if n:
                        gain = float(np.mean(a - b))
                    if pre_hours is not None and pre_hours[0] > 0 and math.isfinite(gain):
                        per_hour = gain / pre_hours[0]
                mismatch = _mismatches(pre)
                if pre is not None and pre.get("mismatches"):
                    flagged.append(f"{m} on {ds} ({regime.label()})")
                unit = pre_hours[1] if pre_hours is not None and pre_hours[1] else "device-h"
                rows.append([ds, regime.label(), ctx.label(m), pre_text, _fmt_hours(fine, len(folds)),
                             fmt(gain, d) + ("" if base is None else f" (vs {base})"),
                             "-" if not math.isfinite(per_hour) else f"{per_hour:.3g} per {unit}", mismatch])
    if not any_ledger:
        r.add(Para("No run records its compute (nnssl_finetune.json with a `compute` ledger in the fold folders, "
                   "written by nnssl's trainers; pretraining ledgers come from the checkpoints they load).",
                   note=True))
    if flagged:
        r.add(Para("Pretraining and fine-tuning differ in spacing, intensity normalisation or patch size for "
                   + "; ".join(flagged) + ": the encoder sees data on another grid, scale or field of view than it "
                   "was pretrained on, which changes what its gain means.", note=True))
    r.add(Table(["dataset", "regime", "method", "pretraining cost", "fine-tuning cost (all folds, draws)",
                 "Dice gain over scratch", "gain per pretraining hour", "pretraining vs fine-tuning"], rows,
                caption="Costs from the compute ledgers: GPU-h = wall hours x GPUs, core-h (on CPU) = wall hours x "
                        "threads; the fine-tuning cost sums the regime's folds and draws. Gain = mean paired "
                        "per-case foreground Dice difference to the from-scratch runs of the same encoder."))
