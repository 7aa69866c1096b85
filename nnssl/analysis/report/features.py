"""CKA feature reuse between the pretrained and the fine-tuned encoder."""
from __future__ import annotations

from nnssl.analysis import cka as cka_mod
from nnssl.analysis.report.blocks import Figure, Heading, Para, Table
from nnssl.analysis.report.context import ReportContext
from nnssl.analysis.report.format import fmt, save_figure, slug
from nnssl.nnunet.naming import FULL, protocol_label


def cka(ctx: ReportContext) -> None:
    """Add the "CKA feature reuse" section from ``ctx.cka_files`` (nnssl_cka results): one heat-map figure per
    file and CKA kind, and a table of the diagonal (stage i of the pretrained vs stage i of the fine-tuned encoder);
    unreadable files are skipped with a note and a warning, and a note says when there are none."""
    r = ctx.report
    r.add(Heading(2, "CKA feature reuse"))
    if not ctx.cka_files:
        r.add(Para("No CKA results found (expected `cka/*.json` in the results folder, written by `nnssl_cka`).",
                   note=True))
        return
    rows = []
    for path in ctx.cka_files:
        try:
            doc = cka_mod.read_cka_json(path)
        except ValueError as e:
            r.add(Para(f"Skipped {path.name}: {e}", note=True))
            r.warnings.append(str(e))
            continue
        shots = "all cases" if doc["shots"] == "all" else f"{doc['shots']}-shot"
        protocol = (doc.get("extra") or {}).get("protocol", FULL)
        if protocol != FULL:  # a rung of the adaptation ladder (llrd, decfirst): part of the regime
            shots += f", {protocol_label(protocol)}"
        for kind, m in doc["cka"].items():
            title = f"{doc['dataset']}, {doc['method']}, {shots}, fold {doc['fold']}: {kind} CKA"
            fig = cka_mod.plot_cka_heatmap(m, doc["stages_a"], doc["stages_b"], title=title,
                                           label_a=doc["label_a"], label_b=doc["label_b"])
            p = save_figure(fig, ctx.fig_dir / f"cka_{slug(path.stem, kind)}.png")
            r.add(Figure(p, title))
            diag = [fmt(float(m[i, i]), 2) for i in range(min(m.shape))]
            rows.append([doc["dataset"], doc["method"], shots, doc["fold"], kind,
                         str(doc.get("n_examples") or "n/a"), " / ".join(diag)])
    if rows:
        r.add(Table(["dataset", "method", "regime", "fold", "kind", "images", "diagonal (stage i vs stage i)"],
                    rows, caption="CKA between the pretrained and the fine-tuned encoder; 1 = features kept, "
                                  "near 0 = replaced."))
