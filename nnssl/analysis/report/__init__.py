"""Build the benchmark report (Markdown + self-contained HTML + PNG figures) from a parsed nnU-Net results tree.

The report is a list of blocks (``blocks``: headings, paragraphs, tables, figures) made by the section modules
(``overview``, ``dice``, ``tests``, ``training``, ``features``, ``attention``, ``pretraining``) in ``builder.build``'s order, each reading the
shared ``context.ReportContext``, and rendered twice
(``render``). Every section degrades to a note saying what data is missing and how to get it. See
documentation/report.md.
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Sequence

from nnssl.analysis.report.blocks import (
    Figure,
    Heading,
    Para,
    Report,
    ReportOptions,
    Table,
)
from nnssl.analysis.report.builder import build
from nnssl.analysis.report.context import ReportContext
from nnssl.analysis.report.render import render_html, render_markdown
from nnssl.analysis.results import ResultsTree, tidy_records
from nnssl.io import atomic_write

CSV_FIELDS = ["dataset", "modality", "method", "shots", "epochs", "protocol", "configuration", "trainer", "plans",
              "fold", "case", "label", "label_name", "dice"]


def write_records_csv(tree: ResultsTree, path: Path) -> Path:
    """All per-case Dice values as a tidy CSV (see results.tidy_records)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS)
    writer.writeheader()
    writer.writerows(tidy_records(tree))
    return atomic_write(path, lambda f: f.write(buffer.getvalue()), binary=False)


def find_cka_files(*folders: Path | None) -> list[Path]:
    """Sorted, de-duplicated ``*.json`` files in the given folders (missing folders are skipped): CKA or attention
    results. Hidden files are not results: the grid's settings records (``.<result>.nnssl_job.json``) and the
    temporary files of atomic writes sit beside them."""
    files: dict[Path, None] = {}
    for d in folders:
        if d is not None and Path(d).is_dir():
            for p in sorted(Path(d).glob("*.json")):
                if not p.name.startswith("."):
                    files[p.resolve()] = None
    return list(files)


def find_probe_files(*folders: Path | None) -> list[Path]:
    """Sorted, de-duplicated ``*.json`` files (nnssl_probe results) in the given folders (missing ones skipped)."""
    return find_cka_files(*folders)


def build_report(tree: ResultsTree, out_dir: str | os.PathLike, options: ReportOptions | None = None,
                 cka_files: Sequence[Path] | None = None, attention_files: Sequence[Path] | None = None,
                 pretraining_dirs: Sequence[Path] = (),
                 probe_files: Sequence[Path] | None = None) -> tuple[Report, dict[str, Path]]:
    """Build and write the report. Returns (report, {"markdown", "html", "csv", "figures"} -> paths).

    cka_files default: ``<tree.root>/cka/*.json``; attention_files default: ``<tree.root>/attention/*.json``;
    probe_files default: ``<tree.root>/probe/*.json``; pretraining_dirs: nnssl_pretrain run folders or folders
    holding them (none: the section says how to add them).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cka_files is None:
        cka_files = find_cka_files(Path(tree.root) / "cka")
    if attention_files is None:
        attention_files = find_cka_files(Path(tree.root) / "attention")
    if probe_files is None:
        probe_files = find_probe_files(Path(tree.root) / "probe")
    report = build(ReportContext(tree, out, options, cka_files, attention_files, pretraining_dirs, probe_files))
    md_path, html_path = out / "report.md", out / "report.html"
    markdown, page = render_markdown(report, out), render_html(report)
    atomic_write(md_path, lambda f: f.write(markdown), binary=False)
    atomic_write(html_path, lambda f: f.write(page), binary=False)
    csv_path = write_records_csv(tree, out / "dice_per_case.csv")
    return report, {"markdown": md_path, "html": html_path, "csv": csv_path, "figures": out / "figures"}


__all__ = ["Figure", "Heading", "Para", "Report", "ReportContext", "ReportOptions", "Table", "build_report",
           "find_cka_files", "find_probe_files", "render_html", "render_markdown", "write_records_csv"]
