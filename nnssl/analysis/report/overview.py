"""The report's opening: datasets, ignored folders, notes on runs."""
from __future__ import annotations

import datetime as _dt

from nnssl.analysis.report.blocks import Heading, Para, Table
from nnssl.analysis.report.context import ReportContext


def overview(ctx: ReportContext) -> None:
    """Add the report's opening: results folder, datasets, ignored folders and notes on runs."""
    r, t = ctx.report, ctx.tree
    r.add(Para(
        f"Results folder: `{t.root}`. Generated {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}. "
        f"{len(t.dataset_names())} target dataset(s), {len(t.folds)} finished fold(s). Baseline: "
        f"`{ctx.opt.baseline}`."))
    if not t.folds:
        r.add(Para("No finished nnU-Net runs were found (a run needs "
                   "Dataset*/<Trainer>__<Plans>__<config>/fold_*/validation/summary.json). Every section below is "
                   "empty. Check the RESULTS path and the run names (see the ignored folders).", note=True))
    rows = []
    for ds in t.dataset_names():
        info = t.datasets[ds]
        labels = ", ".join(sorted(set(info.key_to_name.values()))) or "unknown (no dataset.json)"
        runs = sorted({(f.method, f.regime.label()) for f in t.folds if f.dataset == ds})
        rows.append([ds, info.modality, labels, str(len(runs)),
                     str(info.source) if info.source else "not found"])
    if rows:
        r.add(Heading(2, "Datasets"), Table(["dataset", "modality", "labels", "method x regime", "dataset.json"],
                                           rows))
    if t.ignored:
        r.add(Heading(3, "Ignored folders"), Table(["folder", "reason"], [[p, why] for p, why in t.ignored]))
    notes = [[f"{f.dataset}/{f.run.trainer}__{f.run.plans}__{f.run.configuration}/fold_{f.fold}", n]
             for f in t.folds for n in f.notes]
    if notes:
        r.add(Heading(3, "Notes on runs"), Table(["run", "note"], notes))
