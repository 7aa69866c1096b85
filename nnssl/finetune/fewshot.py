"""Few-shot training subsets: seeded, nested, identical for every method, recorded next to the results.

Rule: the fold's training cases are sorted and shuffled with a seed derived from the dataset name, the fold and the
draw only (never from the method or trainer), and a k-shot run takes the first k of that order. So every method sees
the same k cases (paired comparisons), and the 5-shot subset of a draw is contained in its 10-shot one (nested
regimes: the gap between regimes measures the labels added, not a different draw). Draw 0 is the first subset;
draws 1, 2, ... are further independent samples of the same regime (``SwinSSLTrainer_5shot_draw1``).
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Sequence

import numpy as np

from nnssl.io import atomic_write

SUBSET_FILE = "fewshot_subset.json"


def subset_seed(dataset_name: str, fold: int | str, draw: int = 0) -> int:
    """Stable 32-bit seed from dataset, fold and draw (sha256: independent of Python's hash randomisation)."""
    if draw < 0:
        raise ValueError(f"draw must be >= 0, got {draw}")
    key = f"nnssl-fewshot|{dataset_name}|fold={fold}" + (f"|draw={draw}" if draw else "")
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)


def select_fewshot(train_keys: Sequence[str], shots: int, dataset_name: str, fold: int | str,
                   draw: int = 0) -> list[str]:
    """The k-shot subset of `train_keys` (sorted); ValueError when the fold has fewer than `shots` cases."""
    keys = sorted(str(k) for k in train_keys)
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    if shots > len(keys):
        raise ValueError(f"fold {fold} of {dataset_name} has only {len(keys)} training case(s); a {shots}-shot run "
                         f"needs at least {shots}. Use a trainer with fewer shots or the full trainer.")
    order = np.random.default_rng(subset_seed(dataset_name, fold, draw)).permutation(len(keys))
    return sorted(keys[i] for i in order[:shots])


def write_subset_record(output_folder: str, record: dict) -> str:
    """Atomically write the subset record (JSON) into the fold's output folder; returns its path."""
    path = os.path.join(output_folder, SUBSET_FILE)
    atomic_write(path, lambda f: json.dump(record, f, indent=2), binary=False)
    return path
