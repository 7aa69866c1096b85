"""Few-shot training subsets: seeded, nested, identical for every method, recorded next to the results.

Rule: the fold's training cases are sorted and shuffled with a seed derived from the dataset name and the fold only
(never from the method or trainer), and a k-shot run takes the first k of that order. So every method sees the same
k cases (paired comparisons), and the 5-shot subset is contained in the 10-shot one (nested regimes: the gap between
regimes measures the labels added, not a different draw).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Sequence

import numpy as np

SUBSET_FILE = "fewshot_subset.json"


def subset_seed(dataset_name: str, fold: int | str) -> int:
    """Stable 32-bit seed from dataset and fold (sha256: independent of Python's hash randomisation)."""
    digest = hashlib.sha256(f"nnssl-fewshot|{dataset_name}|fold={fold}".encode()).hexdigest()
    return int(digest[:8], 16)


def select_fewshot(train_keys: Sequence[str], shots: int, dataset_name: str, fold: int | str) -> list[str]:
    """The k-shot subset of `train_keys` (sorted); ValueError when the fold has fewer than `shots` cases."""
    keys = sorted(str(k) for k in train_keys)
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    if shots > len(keys):
        raise ValueError(f"fold {fold} of {dataset_name} has only {len(keys)} training case(s); a {shots}-shot run "
                         f"needs at least {shots}. Use a trainer with fewer shots or the full trainer.")
    order = np.random.default_rng(subset_seed(dataset_name, fold)).permutation(len(keys))
    return sorted(keys[i] for i in order[:shots])


def write_subset_record(output_folder: str, record: dict) -> str:
    """Atomically write the subset record (JSON) into the fold's output folder; returns its path."""
    os.makedirs(output_folder, exist_ok=True)
    path = os.path.join(output_folder, SUBSET_FILE)
    fd, tmp = tempfile.mkstemp(dir=output_folder, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(record, f, indent=2)
    os.replace(tmp, path)
    return path
