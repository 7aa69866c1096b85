"""Budgets too small to learn anything: warnings a spec gets before its grid starts.

The floors are measured, not guessed: from-scratch fine-tuning learning curves on the built-in phantoms
(``benchmarks/finetune_curve.py``) and pretraining loss curves of the demo methods, both in documentation/results.md.
A spec below a floor still runs (a smoke test is a legitimate use), but its Dice differences cannot say anything about
pretraining, and the warning says so before the first job.
"""
from __future__ import annotations

import json
from pathlib import Path

from nnssl.benchmark.spec import BenchmarkSpec
from nnssl.nnunet.naming import SCRATCH

#: Fine-tuning iterations below which from-scratch SwinUNETR segments neither the spleen nor the kidneys on the
#: phantoms at any learning rate measured (at lr 3e-3 and 1e-2 they appear between 180 and 300 iterations on CT, later
#: on MRI; at 1e-3 not by 600; documentation/results.md, section 1).
MIN_FINETUNE_ITERATIONS = 200
#: Pretraining steps below which a method's loss change cannot be told from its step-to-step noise on the phantoms
#: (the loss windows of the Pretraining section hold fewer than 10 steps each; documentation/report.md).
MIN_PRETRAIN_STEPS = 100
#: Learning rates below which the weights barely move within a short run: the linear scaling rule of the methods'
#: recipes (reference lr x batch / reference batch) gives ~1e-6 at a CPU batch of 2.
MIN_PRETRAIN_LR = 1e-5


def budget_warnings(spec: BenchmarkSpec) -> list[str]:
    """One line per budget of ``spec`` below its floor, naming the setting and what it would take."""
    out = []
    down = spec.downstream
    if down.iterations < MIN_FINETUNE_ITERATIONS:
        out.append(f"downstream: {down.epochs} epochs x {down.iterations_per_epoch} iterations = {down.iterations} "
                   f"fine-tuning iterations, below the {MIN_FINETUNE_ITERATIONS} at which from-scratch runs on the "
                   "phantoms first segment the spleen and kidneys (documentation/results.md): expect little beyond "
                   "the liver for every method and no conclusion about pretraining; raise epochs or "
                   "iterations_per_epoch")
    pre = spec.pretraining
    for m in [m for m in spec.pretrained_methods if m not in spec.checkpoints]:
        settings = pre.settings(m)
        if settings["steps"] < MIN_PRETRAIN_STEPS:
            out.append(f"pretraining of {m}: {settings['steps']} steps, below {MIN_PRETRAIN_STEPS}: its loss windows "
                       "are too short to show whether it learns; raise pretraining.steps")
        lr = resolved_lr(spec, m)
        if lr is not None and lr < MIN_PRETRAIN_LR:
            out.append(f"pretraining of {m}: its recipe scales the learning rate to {lr:.1e} at batch "
                       f"{settings['batch_size']} (reference lr x batch / reference batch), too small to move the "
                       f"weights in {settings['steps']} steps; set pretraining.lr (or per_method.{m}.lr)")
    return out


def resolved_lr(spec: BenchmarkSpec, method: str) -> float | None:
    """The peak learning rate ``method``'s pretraining would use: the spec's lr, else its recipe's at the spec's
    batch size (None for methods without a recipe, e.g. checkpoints)."""
    from nnssl.tasks import get_task_class

    settings = spec.pretraining.settings(method)
    if settings.get("lr") is not None:
        return float(settings["lr"])
    try:
        recipe = get_task_class(method).recipe
    except (KeyError, ValueError, AttributeError):
        return None
    return float(recipe.base_lr * recipe.scale(int(settings["batch_size"])))


def headline_comparisons(spec: BenchmarkSpec) -> list[tuple[str, str, str]]:
    """(dataset, regime, method) of every comparison the report's headline will make for this grid: each pretrained
    method (checkpoints and design-experiment runs included) against scratch wherever both are fine-tuned
    (``downstream.only`` applied), with full fine-tuning (the ladder's rungs and the CNN baselines are families of
    their own). Holm's correction runs over all of them, so their number sets the design's power."""
    down = spec.downstream
    return [(d, s, m) for d in down.datasets for s in down.shots for m in spec.finetuned_pretrained
            if down.includes(d, spec.base_method(m), s) and down.includes(d, SCRATCH, s)]


def validation_cases(spec: BenchmarkSpec, dataset: str) -> int | None:
    """Validation cases a comparison on ``dataset`` pairs (pooled over the grid's folds): from the fixed split when
    the spec has one, else nnU-Net's 5-fold split of the phantom cases the spec generates (None: not knowable from
    the spec, e.g. your own data without a split file)."""
    folds = spec.downstream.folds
    if dataset in spec.downstream.splits:
        split = json.loads(Path(spec.downstream.splits[dataset]).read_text())
        return sum(len(split[f]["val"]) for f in folds)
    ph = spec.phantoms
    if ph is None or dataset not in ph["datasets"]:
        return None
    from nnssl.data.phantoms.datasets import DATASETS

    cases = ph.get("cases", {}).get(dataset, DATASETS[int(dataset)].cases) if int(dataset) in DATASETS else None
    if cases is None:
        return None
    per_fold = [len(range(f, cases, 5)) for f in range(5)]  # nnU-Net's KFold(5): fold sizes differ by at most one
    return sum(per_fold[f] for f in folds)


__all__ = ["MIN_FINETUNE_ITERATIONS", "MIN_PRETRAIN_LR", "MIN_PRETRAIN_STEPS", "budget_warnings",
           "headline_comparisons", "resolved_lr", "validation_cases"]
