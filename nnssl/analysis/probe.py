"""Frozen-feature probes: is there class information in an encoder's tokens that a random encoder lacks?

The classifier math of ``nnssl_probe`` (numpy only; the encoder and data side is ``nnssl.finetune.probe``):

* :func:`token_labels`: a segmentation crop (D, H, W) -> one label per token of a stage with stride s, the majority
  class of its s^3 voxels; tokens with fewer than half of their voxels labelled (nnU-Net's -1 outside the nonzero
  region, crop padding, the ignore label) are dropped (-1).
* :func:`balanced_subsample`: at most ``max_n`` tokens, as equal per class as the counts allow.
* :func:`standardise`: z-score with the training tokens' mean and standard deviation.
* :func:`knn_predict`: k-nearest-neighbour vote (cosine similarity, k = 10, majority; ties go to the class whose
  neighbours are more similar).
* :func:`ridge_fit` / :func:`ridge_predict`: closed-form ridge regression to one-hot targets, argmax; the probe
  weighs tokens so that every class present weighs the same (:func:`class_balanced_weights`).
* :func:`balanced_accuracy` (mean recall over the classes present, background included) and :func:`macro_f1`
  (mean F1 = token Dice over the foreground classes present), both from confusion matrices so that a bootstrap over
  test cases only re-sums per-case confusion matrices (:func:`bootstrap_metric`).

The probe result file written by ``nnssl_probe`` and read by ``nnssl_report`` is defined by :func:`write_probe_json`
(schema in documentation/report.md).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from nnssl.io import atomic_write

PROBE_SCHEMA_VERSION = 1
PROBES = ("knn", "linear")
METRICS = ("balanced_accuracy", "macro_f1")
ENCODERS = ("pretrained", "random")
#: class index of the background (nnU-Net's label 0)
BACKGROUND = 0


# ----------------------------------------------------------------------------------------------------------------------
# tokens and their labels
# ----------------------------------------------------------------------------------------------------------------------
def token_labels(seg: np.ndarray, stride: int, num_classes: int, min_labelled: float = 0.5) -> np.ndarray:
    """Majority label of every token of a stage with ``stride``.

    seg: (..., D, H, W) integer labels, D, H, W divisible by ``stride``; values outside 0..num_classes-1 (nnU-Net's
    -1, padding, an ignore label mapped to -1) are unlabelled. Returns (..., D/s, H/s, W/s) int64: the most frequent
    label among a token's labelled voxels (ties: the lower label), or -1 when fewer than ``min_labelled`` of its
    s^3 voxels are labelled (the token lies on the padding or ignore region).
    """
    seg = np.asarray(seg)
    *lead, d, h, w = seg.shape
    s = int(stride)
    if min(d, h, w) < s or d % s or h % s or w % s:
        raise ValueError(f"segmentation spatial shape {(d, h, w)} is not divisible by the token stride {s}")
    blocks = seg.reshape(*lead, d // s, s, h // s, s, w // s, s)
    axes = tuple(len(lead) + i for i in (1, 3, 5))
    counts = np.stack([(blocks == c).sum(axis=axes) for c in range(num_classes)], axis=-1)  # (..., d, h, w, K)
    labelled = counts.sum(axis=-1)
    out = counts.argmax(axis=-1).astype(np.int64)  # argmax takes the first maximum: ties go to the lower label
    out[labelled < min_labelled * s ** 3] = -1
    return out


def balanced_subsample(labels: np.ndarray, max_n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices (sorted) of at most ``max_n`` entries of ``labels`` (n,), class-balanced where the counts allow.

    Water-filling: every class gets an equal share of ``max_n``; a class with fewer entries keeps all of them and
    its unused share goes to the others. Entries with a negative label are never chosen.
    """
    labels = np.asarray(labels)
    classes = [c for c in np.unique(labels) if c >= 0]
    members = {c: np.flatnonzero(labels == c) for c in classes}
    budget, left = int(max_n), len(classes)
    chosen = []
    for c in sorted(classes, key=lambda c: len(members[c])):  # smallest classes first: their leftover is passed on
        take = min(len(members[c]), budget // left if left else 0)
        chosen.append(rng.choice(members[c], size=take, replace=False) if take < len(members[c]) else members[c])
        budget -= take
        left -= 1
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Z-score features (n, p) with the mean and standard deviation of ``train`` (constant features become 0).

    Test tokens are scaled with the training statistics, so nothing about the test set leaks into the probe.
    """
    train = np.asarray(train, dtype=np.float64)
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std = np.where(std > 1e-8, std, 1.0)
    return [(np.asarray(x, dtype=np.float64) - mean) / std for x in (train, *others)]


# ----------------------------------------------------------------------------------------------------------------------
# the two probes
# ----------------------------------------------------------------------------------------------------------------------
def _unit_rows(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def knn_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, num_classes: int, k: int = 10,
                chunk: int = 512) -> np.ndarray:
    """k-NN majority vote with cosine similarity. train_x (n, p), train_y (n,), test_x (m, p) -> (m,) labels.

    Ties in the vote go to the tied class with the larger summed similarity. Similarities are computed ``chunk``
    test rows at a time (memory chunk * n).
    """
    a, b = _unit_rows(np.asarray(train_x, np.float64)), _unit_rows(np.asarray(test_x, np.float64))
    train_y = np.asarray(train_y, dtype=np.int64)
    k = min(int(k), a.shape[0])
    if k < 1:
        raise ValueError("the k-NN probe needs at least one training token")
    out = np.empty(b.shape[0], dtype=np.int64)
    for start in range(0, b.shape[0], chunk):
        sim = b[start:start + chunk] @ a.T  # (m', n)
        nn = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        nn_sim = np.take_along_axis(sim, nn, axis=1)
        nn_y = train_y[nn]
        m = sim.shape[0]
        flat = (np.arange(m)[:, None] * num_classes + nn_y).ravel()
        votes = np.bincount(flat, minlength=m * num_classes).reshape(m, num_classes)
        sims = np.bincount(flat, weights=nn_sim.ravel(), minlength=m * num_classes).reshape(m, num_classes)
        # votes are integers; the similarity term lies in [0, 1), so it only breaks ties
        out[start:start + chunk] = np.argmax(votes + (sims + k) / (2 * k + 1), axis=1)
    return out


@dataclass
class Ridge:
    """A fitted linear probe: scores = x @ weight + bias, weight (p, K), bias (K,)."""

    weight: np.ndarray
    bias: np.ndarray


def class_balanced_weights(y: np.ndarray) -> np.ndarray:
    """(n,) sample weights n / (K_present * n_c): every class present weighs the same in total, and they sum to n."""
    y = np.asarray(y, dtype=np.int64)
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    return y.size / (classes.size * counts[inverse])


def ridge_fit(x: np.ndarray, y: np.ndarray, num_classes: int, alpha: float = 1e-2,
              sample_weight: np.ndarray | None = None) -> Ridge:
    """Closed-form (weighted) ridge regression of one-hot targets:
    minimise sum_i w_i ||x_i W + b - onehot(y_i)||^2 / sum_i w_i + alpha ||W||^2.

    x (n, p), y (n,) labels in 0..num_classes-1, sample_weight (n,) (None: all 1). The bias is not penalised (X and
    Y are centred with the weighted means first); the penalty is relative to the total weight, so ``alpha`` means
    the same for any number of tokens, and on standardised features a small alpha only keeps the (p, p) system well
    conditioned. Solution: W = (Xc^T D Xc + alpha sum(w) I)^-1 Xc^T D Yc, b = mean_w(Y) - mean_w(X) W.
    """
    x = np.asarray(x, dtype=np.float64)
    w = np.ones(x.shape[0]) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    targets = np.eye(num_classes)[np.asarray(y, dtype=np.int64)]
    total = w.sum()
    mx, my = w @ x / total, w @ targets / total
    xc, yc = x - mx, targets - my
    gram = xc.T @ (w[:, None] * xc) + alpha * total * np.eye(x.shape[1])
    weight = np.linalg.solve(gram, xc.T @ (w[:, None] * yc))
    return Ridge(weight=weight, bias=my - mx @ weight)


def ridge_predict(model: Ridge, x: np.ndarray) -> np.ndarray:
    """Argmax class of the linear scores. x (m, p) -> (m,)."""
    return np.argmax(np.asarray(x, dtype=np.float64) @ model.weight + model.bias, axis=1)


# ----------------------------------------------------------------------------------------------------------------------
# metrics from confusion matrices
# ----------------------------------------------------------------------------------------------------------------------
def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) counts, rows = true class, columns = predicted class."""
    idx = np.asarray(y_true, np.int64) * num_classes + np.asarray(y_pred, np.int64)
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes).astype(np.float64)


def case_confusions(y_true: np.ndarray, y_pred: np.ndarray, cases: np.ndarray, n_cases: int,
                    num_classes: int) -> np.ndarray:
    """(n_cases, K, K): the confusion matrix of each test case's tokens (cases: (m,) case index per token)."""
    k2 = num_classes * num_classes
    idx = np.asarray(cases, np.int64) * k2 + np.asarray(y_true, np.int64) * num_classes + np.asarray(y_pred, np.int64)
    return np.bincount(idx, minlength=n_cases * k2).reshape(n_cases, num_classes, num_classes).astype(np.float64)


def balanced_accuracy(conf: np.ndarray) -> np.ndarray:
    """Mean recall over the classes present (background included). conf (..., K, K) -> (...); NaN if empty.

    The background counts as a class here: over the foreground classes alone, predicting foreground everywhere
    would score 1.
    """
    conf = np.asarray(conf, dtype=np.float64)
    support = conf.sum(axis=-1)
    diag = np.diagonal(conf, axis1=-2, axis2=-1)
    present = support > 0
    recall = np.where(present, diag / np.where(present, support, 1.0), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return recall.sum(axis=-1) / present.sum(axis=-1)


def macro_f1(conf: np.ndarray) -> np.ndarray:
    """Mean F1 (= token-level Dice) over the foreground classes present in the reference. (..., K, K) -> (...).

    NaN when no foreground class is present.
    """
    conf = np.asarray(conf, dtype=np.float64)
    support = conf.sum(axis=-1)
    predicted = conf.sum(axis=-2)
    diag = np.diagonal(conf, axis1=-2, axis2=-1)
    present = support > 0
    present[..., BACKGROUND] = False
    f1 = np.where(present, 2 * diag / np.where(present, support + predicted, 1.0), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return f1.sum(axis=-1) / present.sum(axis=-1)


METRIC_FUNCTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "balanced_accuracy": balanced_accuracy, "macro_f1": macro_f1}


@dataclass(frozen=True)
class Estimate:
    """A metric on all test tokens with its percentile-bootstrap CI over test cases (NaN bounds: undefined)."""

    value: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float | None]:
        """``{"value", "low", "high"}`` with None for undefined (non-finite) numbers (JSON-safe)."""
        return {k: (None if not math.isfinite(v) else float(v))
                for k, v in (("value", self.value), ("low", self.low), ("high", self.high))}


def case_weights(n_cases: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n_cases) multiplicities of a case bootstrap: each row resamples the test cases with replacement."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n_cases, size=(n_boot, n_cases)) + n_cases * np.arange(n_boot)[:, None]
    return np.bincount(idx.ravel(), minlength=n_boot * n_cases).reshape(n_boot, n_cases).astype(np.float64)


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan
    lo, hi = np.percentile(values, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi)


def bootstrap_metric(confs: Sequence[np.ndarray], metric: str, weights: np.ndarray,
                     level: float = 0.95) -> tuple[list[Estimate], Estimate]:
    """The metric of each encoder and of the difference ``confs[0] - confs[1]`` with CIs over test cases.

    confs: per encoder (n_cases, K, K) per-case confusion matrices of the same test tokens; weights: from
    :func:`case_weights` (the same resamples for every encoder, so the difference is paired). With one test case the
    intervals are undefined (NaN).
    """
    fn = METRIC_FUNCTIONS[metric]
    n_cases = confs[0].shape[0]
    points, boots = [], []
    for conf in confs:
        points.append(float(fn(conf.sum(axis=0))))
        k = conf.shape[-1]
        boots.append(fn((weights @ conf.reshape(n_cases, k * k)).reshape(-1, k, k)))
    single = n_cases < 2

    def estimate(point: float, boot: np.ndarray) -> Estimate:
        lo, hi = (math.nan, math.nan) if single else _percentiles(boot, level)
        return Estimate(point, lo, hi)

    per_encoder = [estimate(p, b) for p, b in zip(points, boots)]
    return per_encoder, estimate(points[0] - points[1], boots[0] - boots[1])


# ----------------------------------------------------------------------------------------------------------------------
# the whole evaluation of two encoders on the same tokens
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class ProbeTokens:
    """Tokens of one encoder: features (n, p) float, labels (n,) in 0..K-1, case (n,) index of the token's case."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    test_case: np.ndarray


def evaluate(encoders: dict[str, ProbeTokens], num_classes: int, n_test_cases: int, k: int = 10,
             alpha: float = 1e-2, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """Both probes on every encoder's tokens, and the difference of the first two encoders (pretrained - random).

    Returns {probe: {"settings": {...}, encoder: {metric: Estimate dict}, "difference": {metric: Estimate dict}}}.
    The tokens (labels and cases) must be the same for every encoder; only the features differ.
    """
    names = list(encoders)
    first = encoders[names[0]]
    for name in names[1:]:
        other = encoders[name]
        if not (np.array_equal(other.test_y, first.test_y) and np.array_equal(other.test_case, first.test_case)
                and np.array_equal(other.train_y, first.train_y)):
            raise ValueError(f"encoders {names[0]} and {name} were not probed on the same tokens")
    weights = case_weights(n_test_cases, n_boot, seed)
    confs: dict[str, dict[str, np.ndarray]] = {p: {} for p in PROBES}
    for name, tok in encoders.items():
        train_x, test_x = standardise(tok.train_x, tok.test_x)
        predictions = {"knn": knn_predict(train_x, tok.train_y, test_x, num_classes, k=k),
                       # weighted so that a class with few tokens is not swamped by the background
                       "linear": ridge_predict(ridge_fit(train_x, tok.train_y, num_classes, alpha,
                                                         class_balanced_weights(tok.train_y)), test_x)}
        for probe, pred in predictions.items():
            confs[probe][name] = case_confusions(tok.test_y, pred, tok.test_case, n_test_cases, num_classes)
    out: dict[str, Any] = {}
    for probe in PROBES:
        entry: dict[str, Any] = {"settings": {"k": int(k), "similarity": "cosine", "vote": "majority"}
                                 if probe == "knn" else {"alpha": float(alpha), "targets": "one-hot",
                                                                   "sample_weights": "class-balanced"}}
        for name in names:
            entry[name] = {}
        entry["difference"] = {}
        for metric in METRICS:
            per_encoder, diff = bootstrap_metric([confs[probe][n] for n in names], metric, weights, level)
            for name, est in zip(names, per_encoder):
                entry[name][metric] = est.to_dict()
            entry["difference"][metric] = diff.to_dict()
        out[probe] = entry
    return out


# ----------------------------------------------------------------------------------------------------------------------
# result files (written by nnssl_probe, read by nnssl_report)
# ----------------------------------------------------------------------------------------------------------------------
def write_probe_json(path: str | os.PathLike, *, dataset: str, method: str, stage: int, stride: int,
                     probes: dict[str, Any], classes: dict[str, str], tokens: dict[str, Any],
                     extra: dict[str, Any] | None = None) -> Path:
    """Write one probe result file (schema version 1, documentation/report.md) atomically; returns the path.

    ``probes``: :func:`evaluate`'s result; ``classes``: class index -> name; ``tokens``: counts per split and class.
    """
    missing = [p for p in PROBES if p not in probes]
    if missing:
        raise ValueError(f"probes lacks {missing}")
    doc: dict[str, Any] = {"schema_version": PROBE_SCHEMA_VERSION, "dataset": str(dataset), "method": str(method),
                           "stage": int(stage), "stride": int(stride), "classes": classes, "tokens": tokens,
                           "probes": probes}
    if extra:
        doc["extra"] = extra
    return atomic_write(path, lambda f: json.dump(doc, f, indent=2, default=str), binary=False)


def read_probe_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a probe result file; null values come back as NaN."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); re-run nnssl_probe") from e
    if not isinstance(doc, dict):
        raise ValueError(f"{path} is not an nnssl probe result (not a JSON object)")
    missing = [k for k in ("schema_version", "dataset", "method", "stage", "probes") if k not in doc]
    if missing:
        raise ValueError(f"{path} is not an nnssl probe result: missing keys {missing}")
    if doc["schema_version"] != PROBE_SCHEMA_VERSION:
        raise ValueError(f"{path}: schema_version {doc['schema_version']} is not supported "
                         f"(expected {PROBE_SCHEMA_VERSION})")
    for probe in PROBES:
        entry = doc["probes"].get(probe)
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: probes.{probe} is missing")
        for part in (*ENCODERS, "difference"):
            for metric in METRICS:
                try:
                    est = entry[part][metric]
                    entry[part][metric] = Estimate(*(math.nan if est.get(k) is None else float(est[k])
                                                     for k in ("value", "low", "high")))
                except (KeyError, TypeError, AttributeError, ValueError):
                    raise ValueError(f"{path}: probes.{probe}.{part}.{metric} is missing or malformed") from None
    return doc


def beats_random(diff: Estimate) -> str:
    """"yes" when the difference's CI lies above zero, "worse" when below, "no" otherwise (or undefined)."""
    if math.isfinite(diff.low) and diff.low > 0:
        return "yes"
    if math.isfinite(diff.high) and diff.high < 0:
        return "worse"
    return "no"
