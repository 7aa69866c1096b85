"""nnU-Net's cross-validation splits (``splits_final.json`` beside the preprocessed data): read, check, write.

nnU-Net trains fold f on ``splits[f]["train"]`` and validates on ``splits[f]["val"]``; it writes a random 5-fold split
itself when the file is missing. A study that must compare methods on exactly the same cases ships its split and
installs it before any training (``nnssl_splits``); a split that names cases the dataset lacks is refused with their
names, never trained on in part.
"""
from __future__ import annotations

import json
from pathlib import Path

from nnssl.io import atomic_write

SPLITS_FILE = "splits_final.json"


class SplitError(ValueError):
    """A split file that nnU-Net could not train on as written; the message names the cases and the fix."""


def read_splits(path: str | Path) -> list[dict[str, list[str]]]:
    """The folds of a splits file: [{"train": [...], "val": [...]}, ...]; SplitError on any other shape."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise SplitError(f"split file {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise SplitError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(doc, list) or not doc or not all(
            isinstance(f, dict) and set(f) == {"train", "val"} and all(isinstance(f[k], list) for k in f)
            for f in doc):
        raise SplitError(f"{path} is not an nnU-Net split: expected a list of {{\"train\": [...], \"val\": [...]}} "
                         "folds (the layout of nnU-Net's splits_final.json)")
    return [{"train": [str(c) for c in f["train"]], "val": [str(c) for c in f["val"]]} for f in doc]


def check_splits(splits: list[dict[str, list[str]]], cases: list[str], where: str = "the split") -> None:
    """SplitError naming every case a fold lists that the dataset lacks, and every fold whose training and
    validation cases overlap."""
    known = set(cases)
    missing = sorted({c for f in splits for part in ("train", "val") for c in f[part]} - known)
    if missing:
        raise SplitError(f"{where} names {len(missing)} case(s) the dataset does not have: {', '.join(missing[:10])}"
                         f"{' ...' if len(missing) > 10 else ''}. Fix the split file or preprocess the dataset it "
                         "was written for")
    for i, f in enumerate(splits):
        both = sorted(set(f["train"]) & set(f["val"]))
        if both:
            raise SplitError(f"{where}: fold {i} trains and validates on the same case(s) {', '.join(both[:5])}")
        if not f["train"] or not f["val"]:
            raise SplitError(f"{where}: fold {i} has no {'training' if not f['train'] else 'validation'} cases")


def install_splits(preprocessed_dataset: Path, source: str | Path, cases: list[str], overwrite: bool = False) -> Path:
    """Write ``source``'s folds as the dataset's splits_final.json after checking them against ``cases``.

    An existing, identical file is left as it is; a different one is refused unless ``overwrite`` (training
    already done on the old split would no longer match its validation cases).
    """
    splits = read_splits(source)
    check_splits(splits, cases, str(source))
    target = Path(preprocessed_dataset) / SPLITS_FILE
    if target.is_file():
        if read_splits(target) == splits:
            return target
        if not overwrite:
            raise SplitError(f"{target} holds another split; runs trained on it would be compared on other cases. "
                             "Pass --overwrite to replace it (and retrain the folds), or install into a fresh "
                             "preprocessed folder")
    atomic_write(target, lambda f: json.dump(splits, f, indent=2), binary=False)
    return target


__all__ = ["SPLITS_FILE", "SplitError", "check_splits", "install_splits", "read_splits"]
