"""Pretraining-data subsets: seeded, nested, identical for every method (the data-fraction design experiment).

Rule: every pretraining case, as (dataset name, case identifier), is sorted and permuted with a seed derived from the
pretraining datasets' names and the run's seed only (never from the method or encoder), and a run on a fraction f of
the data takes the first ceil(f * N) cases of that order. So the 25% subset is contained in the 50% subset, every
method pretrains on the same cases at the same fraction, and the subset is recorded in the run's config.json and its
checkpoint's provenance (``data_subset``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Any, Sequence

import numpy as np

RULE = ("all (dataset, case) pairs sorted, permuted with seed(sorted dataset names, seed); the first ceil(f * N) "
        "(nested: a smaller fraction's cases are among a larger one's; method-independent)")


def subset_seed(dataset_names: Sequence[str], seed: int) -> int:
    """Stable 32-bit seed from the pretraining datasets and the run's seed (sha256, no Python hash randomisation)."""
    key = "nnssl-pretraining-subset|" + "|".join(sorted(dataset_names)) + f"|seed={int(seed)}"
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)


def check_fraction(fraction: Any, what: str = "data_fraction") -> float:
    """``fraction`` as a float in (0, 1] (the share of the pretraining cases); ValueError naming ``what`` otherwise
    (booleans, NaN and strings included)."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not math.isfinite(fraction) \
            or not 0 < fraction <= 1:
        raise ValueError(f"{what} must be a number in (0, 1] (the share of the pretraining cases), got {fraction!r}")
    return float(fraction)


def select_cases(cases: Sequence[tuple[str, str]], fraction: float, seed: int) -> list[tuple[str, str]]:
    """The (dataset, case) pairs of a ``fraction`` of ``cases`` (sorted); at least one case."""
    fraction = check_fraction(fraction)
    ordered = sorted((str(d), str(c)) for d, c in cases)
    if fraction == 1.0:
        return ordered
    order = np.random.default_rng(subset_seed(sorted({d for d, _ in ordered}), seed)).permutation(len(ordered))
    n = max(1, math.ceil(fraction * len(ordered) - 1e-9))
    return sorted(ordered[i] for i in order[:n])


def apply_fraction(sources: Sequence[Any], fraction: float, seed: int) -> tuple[list[Any], dict[str, Any]]:
    """The sources (``PreprocessedSource``) reduced to the fraction's cases, and the subset record; a source left
    without cases is dropped (the record says so)."""
    cases = [(s.dataset_name, i) for s in sources for i in s.identifiers]
    chosen = select_cases(cases, fraction, seed)
    by_dataset: dict[str, list[str]] = {}
    for d, c in chosen:
        by_dataset.setdefault(d, []).append(c)
    reduced = [dataclasses.replace(s, identifiers=by_dataset[s.dataset_name]) for s in sources
               if s.dataset_name in by_dataset]
    record = {"fraction": float(fraction), "seed": subset_seed(sorted({d for d, _ in cases}), seed),
              "run_seed": int(seed), "rule": RULE, "num_cases": len(chosen), "of_cases": len(cases),
              "cases": by_dataset, "datasets_left_out": [s.dataset_name for s in sources
                                                         if s.dataset_name not in by_dataset]}
    return reduced, record
