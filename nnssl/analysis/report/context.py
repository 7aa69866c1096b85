"""What every report section reads and writes: the results tree, the options, the figure folder, one colour per
method, the report being built, and the per-case values with their bootstrap CIs."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from nnssl.analysis.dice_stats import MeanCI, bootstrap_ci, draw_case_ci, draw_spread
from nnssl.analysis.report.blocks import Report, ReportOptions
from nnssl.nnunet.naming import FULL, is_cnn_baseline, is_scratch
from nnssl.analysis.results import CaseKey, Regime, ResultsTree, draw_matrix, pooled_cases


class ReportContext:
    """State shared by the sections of one report; figures go to out/figures."""

    def __init__(self, tree: ResultsTree, out_dir: Path, options: ReportOptions | None = None,
                 cka_files: Sequence[Path] = (), attention_files: Sequence[Path] = (),
                 pretraining_dirs: Sequence[Path] = (), probe_files: Sequence[Path] = ()) -> None:
        self.tree = tree
        self.out = Path(out_dir)
        self.fig_dir = self.out / "figures"
        self.opt = options or ReportOptions()
        self.cka_files = list(cka_files)
        self.attention_files = list(attention_files)
        self.pretraining_dirs = list(pretraining_dirs)  # nnssl_pretrain run folders, or folders of them
        self.probe_files = list(probe_files)  # nnssl_probe result files
        self.report = Report("nnssl benchmark report")
        self.summary_rows: list[list[str]] = []
        # one colour per method in every figure
        all_methods = sorted({f.method for f in tree.folds}, key=lambda m: (m != self.opt.baseline, m))
        self.colors = {m: f"C{i % 10}" for i, m in enumerate(all_methods)}

    @staticmethod
    def label(method: str) -> str:
        """A method as tables and legends show it: CNN baselines marked as such (``nnunet (CNN baseline)``)."""
        return f"{method} (CNN baseline)" if is_cnn_baseline(method) else method

    def swin_methods(self, dataset: str, regime: Regime) -> list[str]:
        """The Swin methods of a regime (pretrained and scratch): the CNN baselines have their own test family."""
        return [m for m in self.tree.methods(dataset, regime) if not is_cnn_baseline(m)]

    def headline_regimes(self, dataset: str) -> list[Regime]:
        """The regimes of the headline's family: full fine-tuning (the ladder's rungs have their own section)."""
        return [r for r in self.tree.regimes(dataset) if r.protocol == FULL]

    def ci(self, values: Any) -> MeanCI:
        """Mean with its percentile-bootstrap CI (the report's resamples, seed and level)."""
        return bootstrap_ci(values, n_boot=self.opt.n_boot, seed=self.opt.seed, level=self.opt.level)

    def cases(self, dataset: str, regime: Regime, method: str, label: str | None = None) -> dict[CaseKey, float]:
        """(draw, fold, case) -> Dice of ``label`` (None: foreground mean) of a method's runs in one regime."""
        return pooled_cases(self.tree.select(dataset, regime, method), label)

    def case_ci(self, dataset: str, regime: Regime, method: str, label: str | None = None) -> MeanCI:
        """Mean Dice with its CI: the case bootstrap, or with repeated runs the crossed draws x cases t interval
        (``dice_stats.draw_case_ci``; n = validation cases, not (draw, case) pairs)."""
        ci = draw_case_ci(draw_matrix(self.cases(dataset, regime, method, label)),
                          n_boot=self.opt.n_boot, seed=self.opt.seed, level=self.opt.level)
        # a mean Dice lies in [0, 1]: the t interval of few draws is clipped there (bootstrap intervals already are)
        return MeanCI(ci.mean, max(ci.low, 0.0), min(ci.high, 1.0), ci.n) if ci.n else ci

    def spread(self, dataset: str, regime: Regime, method: str) -> tuple[float, float, int]:
        """(mean, SD, draws) of the per-draw mean foreground Dice: how much a result depends on the k-shot subset
        or, for all-cases repeats, on the training run alone."""
        return draw_spread(draw_matrix(self.cases(dataset, regime, method)))

    def baseline_for(self, dataset: str, regime: Regime, method: str) -> str | None:
        """The from-scratch runs a method is compared with: the report's baseline, unless the method's encoder
        differs from the baseline's and a from-scratch run of its own encoder exists (``scratch-<encoder>``, the
        same architecture, patch and batch size); None when the method has no baseline of its encoder."""
        base = self.opt.baseline
        methods = self.tree.methods(dataset, regime)
        if is_cnn_baseline(method) or is_cnn_baseline(base):
            return None  # the CNN baselines are compared in their own family (report.baselines), never in this one
        if base not in methods or base == method:
            return None if base == method else (base if base in methods else None)
        tag = self.tree.encoder_tag(dataset, regime, method)
        if tag is None or tag == self.tree.encoder_tag(dataset, regime, base):
            return base
        for m in methods:
            if is_scratch(m) and m != method and self.tree.encoder_tag(dataset, regime, m) == tag:
                return m
        return None
