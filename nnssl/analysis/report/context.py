"""What every report section reads and writes: the results tree, the options, the figure folder, one colour per
method, the report being built, and the per-case values with their bootstrap CIs."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from nnssl.analysis.dice_stats import MeanCI, bootstrap_ci
from nnssl.analysis.report.blocks import Report, ReportOptions
from nnssl.analysis.results import Regime, ResultsTree, pooled_cases


class ReportContext:
    """State shared by the sections of one report; figures go to out/figures."""

    def __init__(self, tree: ResultsTree, out_dir: Path, options: ReportOptions | None = None,
                 cka_files: Sequence[Path] = (), attention_files: Sequence[Path] = ()) -> None:
        self.tree = tree
        self.out = Path(out_dir)
        self.fig_dir = self.out / "figures"
        self.opt = options or ReportOptions()
        self.cka_files = list(cka_files)
        self.attention_files = list(attention_files)
        self.report = Report("nnssl benchmark report")
        self.summary_rows: list[list[str]] = []
        # one colour per method in every figure
        all_methods = sorted({f.method for f in tree.folds}, key=lambda m: (m != self.opt.baseline, m))
        self.colors = {m: f"C{i % 10}" for i, m in enumerate(all_methods)}

    def ci(self, values: Any) -> MeanCI:
        """Mean with its percentile-bootstrap CI (the report's resamples, seed and level)."""
        return bootstrap_ci(values, n_boot=self.opt.n_boot, seed=self.opt.seed, level=self.opt.level)

    def cases(self, dataset: str, regime: Regime, method: str, label: str | None = None) -> dict:
        """(fold, case) -> Dice of ``label`` (None: foreground mean) of a method's runs in one regime."""
        return pooled_cases(self.tree.select(dataset, regime, method), label)
