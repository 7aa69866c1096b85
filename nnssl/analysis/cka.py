"""Centered kernel alignment (CKA) between two sets of representations.

* Linear CKA (Kornblith et al. 2019, "Similarity of Neural Network Representations Revisited", eq. 5):
  with column-centred features X (n, p) and Y (n, q),
  ``CKA = ||Y^T X||_F^2 / (||X^T X||_F * ||Y^T Y||_F)``.
* Debiased CKA from the unbiased HSIC estimator of Song et al. 2012 ("Feature selection via dependence maximization",
  eq. 5), as used by Nguyen et al. 2020 ("Do wide and deep networks learn the same things?", eq. 3):
  with gram matrices K = X X^T, L = Y Y^T whose diagonals are set to zero (K~, L~),
  ``HSIC_1(K, L) = [tr(K~ L~) + 1^T K~ 1 * 1^T L~ 1 / ((n-1)(n-2)) - 2/(n-2) * 1^T K~ L~ 1] / (n (n-3))``
  and ``CKA = HSIC_1(K, L) / sqrt(HSIC_1(K, K) HSIC_1(L, L))``.
* Minibatch CKA (Nguyen et al. 2020, eq. 2): HSIC_1 averaged over minibatches, then the same ratio
  (:class:`MinibatchCKA`, :class:`StageMinibatchCKA`).

Everything is computed in float64 numpy; torch tensors are accepted and converted.
The CKA result file written by ``nnssl_cka`` and read by ``nnssl_report`` is defined by :func:`write_cka_json`
(see ``documentation/report.md`` for the schema).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from nnssl.io import atomic_write

CKAKind = Literal["linear", "unbiased"]
Pooling = Literal["mean", "flatten", "grid"]
CKA_SCHEMA_VERSION = 1
CKA_KINDS: tuple[str, ...] = ("linear", "unbiased")


# ----------------------------------------------------------------------------------------------------------------------
# input handling
# ----------------------------------------------------------------------------------------------------------------------
def _as_float64(x: Any, name: str) -> np.ndarray:
    """numpy array or torch tensor -> float64 numpy array (no gradient, on CPU)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor without importing torch here
        x = x.detach().cpu().double().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or Inf values; CKA needs finite features (check the model outputs)")
    return arr


def _check_pair(x: Any, y: Any, min_n: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate two feature matrices (n, p) and (n, q) that describe the same n examples."""
    X = _as_float64(x, "X")
    Y = _as_float64(y, "Y")
    for name, a in (("X", X), ("Y", Y)):
        if a.ndim != 2:
            raise ValueError(
                f"{name} must be 2-D (n_examples, n_features), got shape {a.shape}; "
                "turn 5-D feature maps into examples with features_to_examples()"
            )
    if X.shape[0] != Y.shape[0]:
        raise ValueError(
            f"X and Y must describe the same examples: X has n={X.shape[0]} rows, Y has n={Y.shape[0]}"
        )
    if X.shape[0] < min_n:
        raise ValueError(
            f"need at least n={min_n} examples for this CKA estimator, got n={X.shape[0]} "
            "(use more images / a larger batch)"
        )
    return X, Y


def features_to_examples(feature_map: Any, pooling: Pooling = "flatten", grid: int = 2) -> np.ndarray:
    """Turn a feature map (B, C, D, H, W) (or (B, C)) into an example matrix (B, n_features), float64.

    One example = one image, so feature maps of different stages (different C and spatial size) describe the same
    examples and can be compared stage by stage (this is what :func:`stage_cka` needs).

    pooling:
      * ``"flatten"`` (default): all C*D*H*W activations of an image are its features, as Kornblith et al. 2019 do for
        convolutional layers. Keeps the spatial layout, so a fine-tuned encoder that moved features around scores
        lower: the right notion for feature *reuse*. CKA is computed through n x n gram matrices, so large feature
        counts cost memory n * C*D*H*W, not features^2.
      * ``"mean"``: global average over D, H, W -> (B, C). Invariant to where a feature fires; cheap.
      * ``"grid"``: adaptive average pooling to ``grid``^3 cells, then flatten -> (B, C * grid^3). A coarse compromise.
    """
    F = _as_float64(feature_map, "feature_map")
    if F.ndim == 2:
        return F
    if F.ndim != 5:
        raise ValueError(f"feature_map must have shape (B, C, D, H, W) or (B, C), got shape {F.shape}")
    B = F.shape[0]
    if pooling == "flatten":
        return F.reshape(B, -1)
    if pooling == "mean":
        return F.mean(axis=(2, 3, 4))
    if pooling == "grid":
        if grid < 1:
            raise ValueError(f"grid must be >= 1, got {grid}")
        cells = []
        spatial = F.shape[2:]
        if any(s < grid for s in spatial):
            raise ValueError(f"grid={grid} is larger than the spatial size {spatial}; use a smaller grid")
        edges = [np.linspace(0, s, grid + 1).round().astype(int) for s in spatial]
        for i in range(grid):
            for j in range(grid):
                for k in range(grid):
                    block = F[:, :, edges[0][i]:edges[0][i + 1], edges[1][j]:edges[1][j + 1], edges[2][k]:edges[2][k + 1]]
                    cells.append(block.mean(axis=(2, 3, 4)))
        return np.concatenate(cells, axis=1)
    raise ValueError(f"unknown pooling {pooling!r}; choose 'flatten', 'mean' or 'grid'")


# ----------------------------------------------------------------------------------------------------------------------
# linear CKA
# ----------------------------------------------------------------------------------------------------------------------
def _gram(X: np.ndarray) -> np.ndarray:
    """Linear-kernel gram matrix K = X X^T, (n, n)."""
    return X @ X.T


def linear_cka(x: Any, y: Any) -> float:
    """Linear CKA (Kornblith et al. 2019) between X (n, p) and Y (n, q); both are column-centred here.

    Uses the feature-space form ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) when features are few and the equal
    gram form tr(K L) / (||K||_F ||L||_F) with K = X X^T when features outnumber examples.
    """
    X, Y = _check_pair(x, y, min_n=2)
    X = X - X.mean(axis=0, keepdims=True)
    Y = Y - Y.mean(axis=0, keepdims=True)
    n, p, q = X.shape[0], X.shape[1], Y.shape[1]
    if p * q <= n * n:
        num = np.linalg.norm(Y.T @ X) ** 2
        den = np.linalg.norm(X.T @ X) * np.linalg.norm(Y.T @ Y)
    else:
        K, L = _gram(X), _gram(Y)
        num = float(np.sum(K * L))  # tr(K L) for symmetric K, L
        den = np.linalg.norm(K) * np.linalg.norm(L)
    if den == 0.0:
        raise ValueError("a representation is constant over all examples (zero variance); CKA is undefined")
    return float(num / den)


# ----------------------------------------------------------------------------------------------------------------------
# unbiased HSIC / debiased CKA
# ----------------------------------------------------------------------------------------------------------------------
def unbiased_hsic(K: np.ndarray, L: np.ndarray) -> float:
    """Unbiased HSIC estimator HSIC_1 (Song et al. 2012) from two (n, n) gram matrices, n >= 4.

    The diagonals are ignored (set to zero), which also makes the estimate invariant to centring the features.
    """
    K = np.array(K, dtype=np.float64, copy=True)
    L = np.array(L, dtype=np.float64, copy=True)
    if K.shape != L.shape or K.ndim != 2 or K.shape[0] != K.shape[1]:
        raise ValueError(f"gram matrices must both be (n, n), got {K.shape} and {L.shape}")
    n = K.shape[0]
    if n < 4:
        raise ValueError(f"the unbiased HSIC estimator needs n >= 4 examples (it divides by n-3), got n={n}")
    np.fill_diagonal(K, 0.0)
    np.fill_diagonal(L, 0.0)
    trace_kl = float(np.sum(K * L))
    sum_k, sum_l = K.sum(), L.sum()
    # 1^T K~ L~ 1 = (K~ 1) . (L~ 1) for symmetric matrices
    cross = float(K.sum(axis=1) @ L.sum(axis=1))
    value = trace_kl + sum_k * sum_l / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * cross
    return float(value / (n * (n - 3)))


def _ratio(hxy: float, hxx: float, hyy: float) -> float:
    if hxx <= 0.0 or hyy <= 0.0:
        # The unbiased self-HSIC can be <= 0 for (near-)constant features or tiny n: CKA is undefined there.
        return math.nan
    return float(hxy / math.sqrt(hxx * hyy))


def unbiased_cka(x: Any, y: Any) -> float:
    """Debiased CKA = HSIC_1(K, L) / sqrt(HSIC_1(K, K) HSIC_1(L, L)) with linear kernels (Nguyen et al. 2020).

    X (n, p), Y (n, q), n >= 4. Returns NaN when a self-HSIC estimate is not positive (degenerate features).
    """
    X, Y = _check_pair(x, y, min_n=4)
    K, L = _gram(X), _gram(Y)
    return _ratio(unbiased_hsic(K, L), unbiased_hsic(K, K), unbiased_hsic(L, L))


def cka(x: Any, y: Any, kind: CKAKind = "linear") -> float:
    """Dispatch to :func:`linear_cka` or :func:`unbiased_cka`."""
    if kind == "linear":
        return linear_cka(x, y)
    if kind == "unbiased":
        return unbiased_cka(x, y)
    raise ValueError(f"unknown CKA kind {kind!r}; choose one of {CKA_KINDS}")


class MinibatchCKA:
    """Minibatch CKA (Nguyen et al. 2020, eq. 2): accumulate HSIC_1 over minibatches, then take the CKA ratio.

    >>> acc = MinibatchCKA()
    >>> for xb, yb in batches:      # xb (b, p), yb (b, q); the same b examples on both sides, b >= 4
    ...     acc.update(xb, yb)
    >>> acc.compute()

    Over a single batch the result equals :func:`unbiased_cka` of that batch.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget all accumulated minibatches."""
        self._hxy = 0.0
        self._hxx = 0.0
        self._hyy = 0.0
        self.n_batches = 0

    def update(self, x_batch: Any, y_batch: Any) -> None:
        """Add one minibatch: x_batch (b, p), y_batch (b, q), the same b >= 4 examples."""
        X, Y = _check_pair(x_batch, y_batch, min_n=4)
        K, L = _gram(X), _gram(Y)
        self._hxy += unbiased_hsic(K, L)
        self._hxx += unbiased_hsic(K, K)
        self._hyy += unbiased_hsic(L, L)
        self.n_batches += 1

    def compute(self) -> float:
        """CKA from the mean HSIC_1 terms of the minibatches so far (RuntimeError before any update)."""
        if self.n_batches == 0:
            raise RuntimeError("MinibatchCKA.compute() called before any update(); feed at least one minibatch")
        k = float(self.n_batches)
        return _ratio(self._hxy / k, self._hxx / k, self._hyy / k)


# ----------------------------------------------------------------------------------------------------------------------
# per-stage matrices
# ----------------------------------------------------------------------------------------------------------------------
def _stage_examples(feats: Sequence[Any], pooling: Pooling, grid: int, side: str) -> list[np.ndarray]:
    if len(feats) == 0:
        raise ValueError(f"feats_{side} is empty; pass the list of stage outputs [(B, C, D, H, W), ...]")
    out = [features_to_examples(f, pooling=pooling, grid=grid) for f in feats]
    n = {e.shape[0] for e in out}
    if len(n) != 1:
        raise ValueError(f"all stages of feats_{side} must have the same batch size, got {sorted(n)}")
    return out


def _gram_matrices(feats_a: Sequence[Any], feats_b: Sequence[Any], pooling: Pooling, grid: int):
    ea = _stage_examples(feats_a, pooling, grid, "a")
    eb = _stage_examples(feats_b, pooling, grid, "b")
    if ea[0].shape[0] != eb[0].shape[0]:
        raise ValueError(
            f"feats_a and feats_b must come from the same images: batch sizes {ea[0].shape[0]} vs {eb[0].shape[0]}"
        )
    return ea, eb


def stage_cka(
    feats_a: Sequence[Any],
    feats_b: Sequence[Any],
    kind: CKAKind = "linear",
    pooling: Pooling = "flatten",
    grid: int = 2,
) -> np.ndarray:
    """CKA between every stage of encoder A and every stage of encoder B on the same images.

    feats_a, feats_b: lists of stage outputs, each (B, C_s, D_s, H_s, W_s) (the 5 scales of SwinEncoder) or (B, C_s).
    Returns a (len(feats_a), len(feats_b)) float64 matrix; entry [i, j] = CKA(stage i of A, stage j of B); the
    diagonal is the per-stage feature reuse. kind: "linear" (Kornblith et al. 2019) or "unbiased" (debiased,
    Nguyen et al. 2020; needs B >= 4). See :func:`features_to_examples` for ``pooling``.
    """
    if kind not in CKA_KINDS:
        raise ValueError(f"unknown CKA kind {kind!r}; choose one of {CKA_KINDS}")
    ea, eb = _gram_matrices(feats_a, feats_b, pooling, grid)
    out = np.empty((len(ea), len(eb)), dtype=np.float64)
    if kind == "linear":
        for i, X in enumerate(ea):
            for j, Y in enumerate(eb):
                out[i, j] = linear_cka(X, Y)
        return out
    if ea[0].shape[0] < 4:
        raise ValueError(f"unbiased CKA needs at least 4 images, got {ea[0].shape[0]}")
    Ka = [_gram(X) for X in ea]
    Kb = [_gram(Y) for Y in eb]
    self_a = [unbiased_hsic(K, K) for K in Ka]
    self_b = [unbiased_hsic(L, L) for L in Kb]
    for i, K in enumerate(Ka):
        for j, L in enumerate(Kb):
            out[i, j] = _ratio(unbiased_hsic(K, L), self_a[i], self_b[j])
    return out


class StageMinibatchCKA:
    """Streaming version of ``stage_cka(kind="unbiased")``: minibatch CKA (Nguyen et al. 2020) for every stage pair.

    Call ``update(feats_a, feats_b)`` once per batch of images (each batch >= 4 images, stage outputs as in
    :func:`stage_cka`), then ``compute()`` -> (n_stages_a, n_stages_b) matrix. Memory: one batch at a time.
    """

    def __init__(self, pooling: Pooling = "flatten", grid: int = 2) -> None:
        self.pooling = pooling
        self.grid = grid
        self._hab: np.ndarray | None = None
        self._ha: np.ndarray | None = None
        self._hb: np.ndarray | None = None
        self.n_batches = 0

    def update(self, feats_a: Sequence[Any], feats_b: Sequence[Any]) -> None:
        """Add one batch: stage outputs of A and B on the same >= 4 images, each (B, C_s, ...)."""
        ea, eb = _gram_matrices(feats_a, feats_b, self.pooling, self.grid)
        if ea[0].shape[0] < 4:
            raise ValueError(f"each minibatch needs at least 4 images for the unbiased HSIC, got {ea[0].shape[0]}")
        Ka = [_gram(X) for X in ea]
        Kb = [_gram(Y) for Y in eb]
        hab = np.array([[unbiased_hsic(K, L) for L in Kb] for K in Ka])
        ha = np.array([unbiased_hsic(K, K) for K in Ka])
        hb = np.array([unbiased_hsic(L, L) for L in Kb])
        if self._hab is None:
            self._hab, self._ha, self._hb = hab, ha, hb
        else:
            if hab.shape != self._hab.shape:
                raise ValueError(f"number of stages changed between batches: {self._hab.shape} -> {hab.shape}")
            self._hab += hab
            self._ha += ha
            self._hb += hb
        self.n_batches += 1

    def compute(self) -> np.ndarray:
        """(n_stages_a, n_stages_b) CKA from the accumulated HSIC_1 terms."""
        if self._hab is None:
            raise RuntimeError("StageMinibatchCKA.compute() called before any update()")
        k = float(self.n_batches)
        out = np.empty_like(self._hab)
        for i in range(out.shape[0]):
            for j in range(out.shape[1]):
                out[i, j] = _ratio(self._hab[i, j] / k, self._ha[i] / k, self._hb[j] / k)
        return out


# ----------------------------------------------------------------------------------------------------------------------
# result files (written by nnssl_cka, read by nnssl_report)
# ----------------------------------------------------------------------------------------------------------------------
def _check_matrix(m: Any, rows: int, cols: int, what: str) -> list[list[float | None]]:
    arr = np.asarray(m, dtype=np.float64)
    if arr.shape != (rows, cols):
        raise ValueError(f"{what}: matrix shape {arr.shape} does not match the stage names ({rows}, {cols})")
    # JSON has no NaN: undefined entries are stored as null
    return [[None if not np.isfinite(v) else float(v) for v in row] for row in arr]


def write_cka_json(
    path: str | os.PathLike,
    *,
    dataset: str,
    method: str,
    shots: str | int,
    matrices: dict[str, Any],
    fold: str | int = "0",
    stages_a: Sequence[str] | None = None,
    stages_b: Sequence[str] | None = None,
    label_a: str = "pretrained",
    label_b: str = "fine-tuned",
    n_examples: int | None = None,
    pooling: str = "flatten",
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write one CKA result file (schema version 1), atomically. Returns the path.

    ``matrices`` maps a kind ("linear" and/or "unbiased") to a (n_stages_a, n_stages_b) matrix from :func:`stage_cka`.
    Put the files under ``<nnUNet_results or report RESULTS folder>/cka/*.json``; ``nnssl_report`` picks them up.
    """
    if not matrices:
        raise ValueError("matrices is empty; pass {'linear': M} and/or {'unbiased': M}")
    first = np.asarray(next(iter(matrices.values())))
    if first.ndim != 2:
        raise ValueError(f"CKA matrices must be 2-D, got shape {first.shape}")
    stages_a = list(stages_a) if stages_a is not None else [f"stage{i}" for i in range(first.shape[0])]
    stages_b = list(stages_b) if stages_b is not None else [f"stage{i}" for i in range(first.shape[1])]
    cka_out = {}
    for kind, m in matrices.items():
        if kind not in CKA_KINDS:
            raise ValueError(f"unknown CKA kind {kind!r}; choose from {CKA_KINDS}")
        cka_out[kind] = _check_matrix(m, len(stages_a), len(stages_b), kind)
    doc: dict[str, Any] = {
        "schema_version": CKA_SCHEMA_VERSION,
        "dataset": str(dataset),
        "method": str(method),
        "shots": str(shots),
        "fold": str(fold),
        "label_a": label_a,
        "label_b": label_b,
        "stages_a": stages_a,
        "stages_b": stages_b,
        "pooling": pooling,
        "n_examples": n_examples,
        "cka": cka_out,
    }
    if extra:
        doc["extra"] = extra
    # Paths etc. in `extra` become strings
    return atomic_write(path, lambda f: json.dump(doc, f, indent=2, default=str), binary=False)


def read_cka_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a CKA result file; matrices come back as float64 arrays (null -> NaN)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); re-run nnssl_cka") from e
    required = ("schema_version", "dataset", "method", "shots", "stages_a", "stages_b", "cka")
    missing = [k for k in required if k not in doc]
    if missing:
        raise ValueError(f"{path} is not an nnssl CKA result: missing keys {missing}")
    if doc["schema_version"] != CKA_SCHEMA_VERSION:
        raise ValueError(f"{path}: schema_version {doc['schema_version']} is not supported (expected {CKA_SCHEMA_VERSION})")
    mats = {}
    for kind, m in doc["cka"].items():
        if kind not in CKA_KINDS:
            raise ValueError(f"{path}: unknown CKA kind {kind!r}")
        arr = np.array([[np.nan if v is None else v for v in row] for row in m], dtype=np.float64)
        if arr.shape != (len(doc["stages_a"]), len(doc["stages_b"])):
            raise ValueError(f"{path}: {kind} matrix shape {arr.shape} does not match stages_a/stages_b")
        mats[kind] = arr
    if not mats:
        raise ValueError(f"{path}: 'cka' holds no matrix")
    doc["cka"] = mats
    doc["shots"] = str(doc["shots"])
    doc["fold"] = str(doc.get("fold", "0"))
    doc.setdefault("label_a", "pretrained")
    doc.setdefault("label_b", "fine-tuned")
    return doc


def plot_cka_heatmap(
    matrix: Any,
    stages_a: Sequence[str] | None = None,
    stages_b: Sequence[str] | None = None,
    title: str = "",
    label_a: str = "pretrained",
    label_b: str = "fine-tuned",
    path: str | os.PathLike | None = None,
    ax: Any = None,
):
    """Heat map of a CKA matrix (rows: stages of A, columns: stages of B), values annotated, colour range [0, 1].

    Draws into ``ax`` if given, else makes a new figure; saves a PNG to ``path`` if given. Returns the figure.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"matrix must be 2-D, got shape {m.shape}")
    stages_a = list(stages_a) if stages_a is not None else [f"stage{i}" for i in range(m.shape[0])]
    stages_b = list(stages_b) if stages_b is not None else [f"stage{i}" for i in range(m.shape[1])]
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(4.5, 1.8 + 0.8 * m.shape[1]), max(3.5, 1.6 + 0.7 * m.shape[0])))
    else:
        fig = ax.figure
    im = ax.imshow(np.ma.masked_invalid(m), vmin=0.0, vmax=1.0, cmap="magma", origin="upper")
    ax.set_xticks(range(m.shape[1]), stages_b, rotation=45, ha="right")
    ax.set_yticks(range(m.shape[0]), stages_a)
    ax.set_xlabel(label_b)
    ax.set_ylabel(label_a)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            v = m[i, j]
            txt = "n/a" if not np.isfinite(v) else f"{v:.2f}"
            ax.text(j, i, txt, ha="center", va="center", fontsize=7, color="white" if (np.isfinite(v) and v < 0.6) else "black")
    if title:
        import textwrap

        ax.set_title("\n".join(textwrap.wrap(title, 45)), fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="CKA")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig
