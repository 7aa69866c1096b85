"""Where a Swin encoder's windowed self-attention looks: mean attention distance and organ localisation.

Everything here is numpy on arrays the fine-tuning side (``nnssl.finetune.attention``) extracted from the encoder's
eager attention path; nothing here builds an encoder. Shapes follow MONAI's ``WindowAttention``: one attention map per
window, head, query token and key token, ``attn (..., H, n, n)`` whose rows (keys) sum to 1, with ``n`` the tokens of
one (possibly clipped) window.

* **Mean attention distance** (Raghu et al. 2021, "Do Vision Transformers See Like Convolutional Neural Networks?",
  arXiv:2108.08810): per head, the attention-weighted distance between a query token and every
  key token, averaged over the queries: ``(1 / |Q|) sum_q sum_k a_qk ||p_q - p_k||``. Distances are between token
  centres in mm (token spacing = image spacing x the stage's stride) and, window-relative, with every axis measured
  in units of the window's extent on that axis (``window tokens x token spacing``), which for isotropic spacing is
  ``distance_mm / (window x token spacing)``.
* **Organ localisation**: for a query token inside organ ``o``, the attention mass on key tokens inside ``o``,
  averaged over the queries of each organ. Uniform attention over what a query may attend to gives the organ's share
  of those keys (:func:`uniform_attention`), reported beside it as the chance level.

Swin's attention is windowed, so unlike a ViT's both numbers are bounded by the window: a query attends only to the
tokens of its window (the shifted blocks additionally mask pairs from different regions of the rolled grid), so its
distance is at most the window diagonal ``sqrt(3) (w - 1) x token spacing`` and its window-relative distance below
``sqrt(3)``. Growth of the distance in mm with depth mostly reflects the growing token spacing.

Padding convention: MONAI pads a token grid whose size is not a multiple of the window with zero features at the
end of each axis (``monai/networks/nets/swin_unetr.py`` lines 702-706, monai 1.6.1); the padded tokens take part in
the attention of unshifted windows. Here padded queries are left out, and each real query's attention is
renormalised over the real keys (:func:`renormalise`), so every distance is between image tokens; the mass moved away
from padded keys is reported as ``padding_mass``.

The result file written by ``nnssl_attention`` and read by ``nnssl_report`` is :func:`write_attention_json` (schema
in documentation/report.md).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
import warnings
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from nnssl.io import atomic_write

ATTENTION_SCHEMA_VERSION = 1
ENCODERS = ("pretrained", "fine-tuned")
#: How a label map becomes one label per token (see :func:`token_labels`).
LABEL_RULE = "majority"
PADDING_CONVENTION = ("padded queries excluded; each query's attention renormalised over the non-padded keys "
                      "(padding_mass = the share removed)")


# ----------------------------------------------------------------------------------------------------------------------
# per-query primitives
# ----------------------------------------------------------------------------------------------------------------------
def renormalise(attn: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Attention restricted to real (non-padded) keys and renormalised per query.

    attn (..., H, n, n) rows summing to 1; valid (..., n) bool, True for image tokens, or None (all real).
    Returns (attn' (..., H, n, n) float64 with rows summing to 1 over real keys, padding mass (..., H, n)).
    A query whose whole mass was on padding (not produced by a softmax with a real self-key) keeps zeros.
    """
    a = np.asarray(attn, dtype=np.float64)
    if valid is None:
        return a, np.zeros(a.shape[:-1])
    keys = np.asarray(valid, dtype=bool)[..., None, None, :]
    padding = np.where(keys, 0.0, a).sum(-1)  # exactly 0 without padded keys (not 1 - a rounded row sum)
    a = np.where(keys, a, 0.0)
    kept = a.sum(-1)
    return a / np.where(kept > 0, kept, 1.0)[..., None], padding


def pairwise_distance(pos: np.ndarray) -> np.ndarray:
    """Euclidean distances between the tokens of each window: pos (..., n, 3) -> (..., n, n)."""
    p = np.asarray(pos, dtype=np.float64)
    return np.sqrt(((p[..., :, None, :] - p[..., None, :, :]) ** 2).sum(-1))


def expected_distance(attn: np.ndarray, pos: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Per query, the attention-weighted distance to the keys: ``sum_k a'_qk ||p_q - p_k||``.

    attn (..., H, n, n); pos (..., n, 3) token positions (mm, or any unit: window-relative positions give
    window-relative distances); valid (..., n) or None. Returns (..., H, n); padded queries get 0 (mask them with
    ``valid`` when averaging). ``a'`` is the attention renormalised over real keys (:func:`renormalise`).
    """
    a, _ = renormalise(attn, valid)
    d = pairwise_distance(pos)[..., None, :, :]
    return (a * d).sum(-1)


def own_label_mass(attn: np.ndarray, labels: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Per query, the attention mass on keys that carry the query's own label: (..., H, n).

    attn (..., H, n, n); labels (..., n) int, one label per token; valid (..., n) or None.
    """
    a, _ = renormalise(attn, valid)
    lab = np.asarray(labels)
    same = (lab[..., :, None] == lab[..., None, :])[..., None, :, :]
    return (a * same).sum(-1)


def uniform_attention(allowed: np.ndarray | None, valid: np.ndarray | None, n: int | None = None) -> np.ndarray:
    """Uniform attention over what each query may attend to, as a (..., 1, n, n) map (one head).

    allowed (..., n, n) bool: True where the query (row) may attend to the key (column), i.e. MONAI's shifted-window
    mask is 0 (``monai/networks/nets/swin_unetr.py`` compute_mask, lines 879-916); None = every key of the window.
    valid (..., n) or None. Give ``n`` when both are None.
    """
    if allowed is None:
        if valid is None:
            if n is None:
                raise ValueError("uniform_attention needs allowed, valid or n")
            allowed = np.ones((1, n, n), dtype=bool)
        else:
            v = np.asarray(valid, dtype=bool)
            allowed = np.ones(v.shape + v.shape[-1:], dtype=bool)
    a = np.asarray(allowed, dtype=np.float64)
    if valid is not None:
        a = a * np.asarray(valid, dtype=bool)[..., None, :]
    total = a.sum(-1, keepdims=True)
    return (a / np.where(total > 0, total, 1.0))[..., None, :, :]


# ----------------------------------------------------------------------------------------------------------------------
# the two measures on one set of windows
# ----------------------------------------------------------------------------------------------------------------------
def _query_mask(valid: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    """valid (..., n) broadcast to the per-query result shape (..., H, n)."""
    if valid is None:
        return np.ones(shape, dtype=bool)
    return np.broadcast_to(np.asarray(valid, dtype=bool)[..., None, :], shape)


def mean_attention_distance(attn: np.ndarray, pos: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Mean attention distance per head over all real queries of all windows: (H,).

    attn (W, H, n, n) (any leading axes before H); pos (W, n, 3); valid (W, n) or None.
    """
    e = expected_distance(attn, pos, valid)
    q = _query_mask(valid, e.shape)
    axes = tuple(i for i in range(e.ndim) if i != e.ndim - 2)
    return np.where(q, e, 0.0).sum(axes) / np.maximum(q.sum(axes), 1)


def attention_localisation(attn: np.ndarray, labels: np.ndarray, valid: np.ndarray | None = None,
                           organs: Iterable[int] | None = None) -> dict[int, np.ndarray]:
    """Per organ, the mean over its real query tokens of their attention mass inside the organ, per head.

    attn (W, H, n, n); labels (W, n) int (0 = background); valid (W, n) or None; organs: the labels to report
    (default: every label > 0 present among the real tokens). Returns {organ: (H,)}; NaN for an organ with no query.
    """
    lab = np.asarray(labels)
    mass = own_label_mass(attn, lab, valid)
    q = _query_mask(valid, mass.shape)
    lab_q = np.broadcast_to(lab[..., None, :], mass.shape)
    if organs is None:
        present = lab[np.asarray(valid, dtype=bool)] if valid is not None else lab
        organs = sorted(int(o) for o in np.unique(present) if o > 0)
    axes = tuple(i for i in range(mass.ndim) if i != mass.ndim - 2)
    out = {}
    for o in organs:
        sel = q & (lab_q == o)
        n = sel.sum(axes)
        out[int(o)] = np.where(n > 0, np.where(sel, mass, 0.0).sum(axes) / np.maximum(n, 1), np.nan)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# labels on the token grid
# ----------------------------------------------------------------------------------------------------------------------
def token_labels(seg: np.ndarray, stride: int) -> np.ndarray:
    """One label per token of a stage: seg (D, H, W) int at image resolution -> (D/s, H/s, W/s).

    A token of stride ``s`` stands for an ``s^3`` block of voxels (patch embedding and patch mergings tile the image
    without overlap); its label is the majority label of that block, ties going to the smaller label (so a token that
    is half background, half organ counts as background). Negative labels (nnU-Net marks voxels outside the
    non-zero region with -1) count as background. Sizes must be divisible by ``stride``.
    """
    s = int(stride)
    seg = np.asarray(seg)
    if seg.ndim != 3:
        raise ValueError(f"expected a label map (D, H, W), got shape {seg.shape}")
    if any(n % s for n in seg.shape):
        raise ValueError(f"label map {seg.shape} is not divisible by the stride {s}")
    lab = np.where(seg < 0, 0, seg).astype(np.int64)
    d, h, w = (n // s for n in seg.shape)
    blocks = lab.reshape(d, s, h, s, w, s).transpose(0, 2, 4, 1, 3, 5).reshape(d, h, w, s ** 3)
    n_labels = int(lab.max()) + 1
    counts = np.stack([(blocks == v).sum(-1) for v in range(n_labels)], -1)
    return counts.argmax(-1)  # argmax takes the first maximum: ties go to the smaller label


# ----------------------------------------------------------------------------------------------------------------------
# accumulating over images, windows and blocks
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class BlockGeometry:
    """What one Swin block's attention was computed on (from MONAI's own window size and shift for its grid).

    coords (nW, n, 3) int: each window token's position in the stage's (padded) token grid, before the cyclic shift;
    valid (nW, n) bool: inside the unpadded grid; allowed (nW, n, n) bool or None: pairs the shifted-window mask lets
    attend (None: unshifted, every pair).
    """

    stage: str
    block: int
    stride: int
    grid: tuple[int, int, int]
    window: tuple[int, int, int]
    shift: tuple[int, int, int]
    coords: np.ndarray
    valid: np.ndarray
    allowed: np.ndarray | None


@dataclass
class _BlockSums:
    heads: int
    window: tuple[int, int, int]
    shift: tuple[int, int, int]
    dist_mm: np.ndarray
    dist_win: np.ndarray
    pad: np.ndarray
    uniform_mm: float = 0.0
    uniform_win: float = 0.0
    queries: int = 0
    per_image_mm: dict[int, list[float]] = field(default_factory=dict)  # image -> [sum over heads, queries x heads]
    loc: dict[int, np.ndarray] = field(default_factory=dict)  # organ -> (H,) sums over its queries
    loc_uniform: dict[int, float] = field(default_factory=dict)
    loc_queries: dict[int, int] = field(default_factory=dict)


class AttentionAccumulator:
    """Pools mean attention distance and organ localisation over images for every (stage, block, head).

    ``add`` takes one block's attention for a batch of images, window by window (any split of the windows, e.g. in
    chunks to bound memory); ``summary`` returns the stages as the result file stores them.
    """

    def __init__(self, spacing_mm: Sequence[float], organs: Sequence[int] = ()) -> None:
        self.spacing = np.asarray(spacing_mm, dtype=np.float64)
        if self.spacing.shape != (3,) or not np.all(self.spacing > 0):
            raise ValueError(f"spacing_mm must be 3 positive values (mm per voxel), got {spacing_mm}")
        self.organs = [int(o) for o in organs]
        self._stages: dict[str, dict[str, Any]] = {}
        self._blocks: dict[tuple[str, int], _BlockSums] = {}

    def add(self, geom: BlockGeometry, attn: np.ndarray, images: Sequence[int], labels: np.ndarray | None = None,
            windows: slice = slice(None)) -> None:
        """attn (B, w, H, n, n) for the windows ``windows`` of ``geom`` and the B images ``images`` (ids);
        labels (B, w, n) token labels of those windows, or None (no localisation)."""
        attn = np.asarray(attn)
        coords, valid = geom.coords[windows], geom.valid[windows]
        allowed = None if geom.allowed is None else geom.allowed[windows]
        b, w, heads = attn.shape[:3]
        if coords.shape[0] != w or len(images) != b:
            raise ValueError(f"attention for {b} image(s) x {w} window(s) does not match {len(images)} image id(s) "
                             f"and {coords.shape[0]} window(s) of the geometry")
        token_mm = self.spacing * geom.stride
        window_mm = np.asarray(geom.window, dtype=np.float64) * token_mm
        key = (geom.stage, geom.block)
        sums = self._blocks.get(key)
        if sums is None:
            sums = self._blocks[key] = _BlockSums(heads, geom.window, geom.shift, np.zeros(heads), np.zeros(heads),
                                                  np.zeros(heads))
            self._stages.setdefault(geom.stage, {"stride": geom.stride, "grid": list(geom.grid),
                                                 "window": list(geom.window), "heads": heads,
                                                 "token_spacing_mm": token_mm.tolist(),
                                                 "window_extent_mm": window_mm.tolist()})
        pos_mm = coords * token_mm
        pos_win = coords * (token_mm / window_mm)  # = coords / window tokens, per axis
        q = np.broadcast_to(valid[None, :, None, :], (b, w, heads, valid.shape[-1]))
        # renormalised once; the measures below then take every key as real
        attn, pad = renormalise(attn, valid[None])
        e_mm = expected_distance(attn, pos_mm[None])
        e_win = expected_distance(attn, pos_win[None])
        sums.dist_mm += np.where(q, e_mm, 0.0).sum((0, 1, 3))
        sums.dist_win += np.where(q, e_win, 0.0).sum((0, 1, 3))
        sums.pad += np.where(q, pad, 0.0).sum((0, 1, 3))
        n_q = int(valid.sum())
        sums.queries += b * n_q
        per_image = np.where(q, e_mm, 0.0).sum((1, 2, 3))
        for i, img in enumerate(images):
            acc = sums.per_image_mm.setdefault(int(img), [0.0, 0])
            acc[0] += float(per_image[i])
            acc[1] += n_q * heads
        u = uniform_attention(allowed, valid)  # (w, 1, n, n)
        qu = valid[:, None, :]
        sums.uniform_mm += b * float(np.where(qu, expected_distance(u, pos_mm, valid), 0.0).sum())
        sums.uniform_win += b * float(np.where(qu, expected_distance(u, pos_win, valid), 0.0).sum())
        if labels is None or not self.organs:
            return
        labels = np.asarray(labels)
        mass = own_label_mass(attn, labels)  # (B, w, H, n); attn is already renormalised
        u_mass = own_label_mass(u[None], labels, valid[None])  # (B, w, 1, n)
        for o in self.organs:
            sel = (labels == o) & valid[None]  # (B, w, n)
            n = int(sel.sum())
            if not n:
                continue
            sums.loc[o] = sums.loc.get(o, np.zeros(heads)) + np.where(sel[:, :, None, :], mass, 0.0).sum((0, 1, 3))
            sums.loc_uniform[o] = sums.loc_uniform.get(o, 0.0) + float(np.where(sel, u_mass[:, :, 0], 0.0).sum())
            sums.loc_queries[o] = sums.loc_queries.get(o, 0) + n

    def summary(self) -> list[dict[str, Any]]:
        """The stages in encoder order, each with its blocks and the stage means (see documentation/report.md)."""
        stages = []
        for name, info in self._stages.items():
            blocks = []
            keys = sorted(b for s, b in self._blocks if s == name)
            per_image: dict[int, list[float]] = {}
            loc_sum: dict[int, float] = {}
            loc_uniform: dict[int, float] = {}
            loc_tokens: dict[int, int] = {}
            for b in keys:
                s = self._blocks[(name, b)]
                n = max(s.queries, 1)
                loc = {str(o): (s.loc[o] / s.loc_queries[o]).tolist() for o in sorted(s.loc)}
                blocks.append({
                    "block": b, "shift": list(s.shift),
                    "distance_mm": (s.dist_mm / n).tolist(), "distance_window": (s.dist_win / n).tolist(),
                    "uniform_distance_mm": s.uniform_mm / n, "uniform_distance_window": s.uniform_win / n,
                    "padding_mass": (s.pad / n).tolist(),
                    "localisation": loc,
                    "uniform_localisation": {str(o): s.loc_uniform[o] / s.loc_queries[o] for o in sorted(s.loc)},
                })
                for img, (total, count) in s.per_image_mm.items():
                    acc = per_image.setdefault(img, [0.0, 0])
                    acc[0] += total
                    acc[1] += count
                for o in s.loc:
                    loc_sum[o] = loc_sum.get(o, 0.0) + float(s.loc[o].sum())
                    loc_uniform[o] = loc_uniform.get(o, 0.0) + s.loc_uniform[o] * s.heads
                    loc_tokens[o] = loc_tokens.get(o, 0) + s.loc_queries[o] * s.heads
            dist_mm = np.mean([blk["distance_mm"] for blk in blocks], axis=0)
            dist_win = np.mean([blk["distance_window"] for blk in blocks], axis=0)
            stages.append({
                "name": name, **info,
                "distance_mm": dist_mm.tolist(), "distance_window": dist_win.tolist(),
                "uniform_distance_mm": float(np.mean([blk["uniform_distance_mm"] for blk in blocks])),
                "uniform_distance_window": float(np.mean([blk["uniform_distance_window"] for blk in blocks])),
                "per_image_distance_mm": [per_image[i][0] / max(per_image[i][1], 1) for i in sorted(per_image)],
                "localisation": {str(o): {"attention": loc_sum[o] / loc_tokens[o],
                                          "uniform": loc_uniform[o] / loc_tokens[o],
                                          # query tokens of the organ over all images (the same in every block)
                                          "tokens": loc_tokens[o] // (len(keys) * info["heads"])}
                                 for o in sorted(loc_sum)},
                "blocks": blocks,
            })
        return stages


# ----------------------------------------------------------------------------------------------------------------------
# result files (written by nnssl_attention, read by nnssl_report)
# ----------------------------------------------------------------------------------------------------------------------
def _finite(x: Any) -> Any:
    """NaN/Inf -> None, recursively (JSON has no NaN)."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def write_attention_json(path: str | os.PathLike, *, dataset: str, method: str, shots: str | int,
                         encoders: Mapping[str, list[dict[str, Any]]], fold: str | int = "0", draw: int = 0,
                         n_images: int, image_size: Sequence[int], spacing_mm: Sequence[float],
                         organs: Mapping[int | str, str] | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write one attention result file (schema version 1) atomically; ``encoders`` maps "pretrained" and/or
    "fine-tuned" to :meth:`AttentionAccumulator.summary`. Returns the path."""
    if not encoders:
        raise ValueError("encoders is empty: pass {'pretrained': stages} and/or {'fine-tuned': stages}")
    unknown = sorted(set(encoders) - set(ENCODERS))
    if unknown:
        raise ValueError(f"unknown encoder name(s) {unknown}; use {ENCODERS}")
    doc = {
        "schema_version": ATTENTION_SCHEMA_VERSION,
        "dataset": str(dataset), "method": str(method), "shots": str(shots), "fold": str(fold), "draw": int(draw),
        "n_images": int(n_images), "image_size": [int(s) for s in image_size],
        "spacing_mm": [float(s) for s in spacing_mm],
        "label_rule": LABEL_RULE, "padding": PADDING_CONVENTION,
        "organs": {str(k): str(v) for k, v in (organs or {}).items()},
        "encoders": {k: {"stages": v} for k, v in encoders.items()},
    }
    if extra:
        doc["extra"] = extra
    return atomic_write(path, lambda f: json.dump(_finite(doc), f, indent=1, default=str), binary=False)


def read_attention_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate an attention result file; null values come back as NaN."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); re-run nnssl_attention") from e
    missing = [k for k in ("schema_version", "dataset", "method", "shots", "encoders") if k not in doc]
    if missing:
        raise ValueError(f"{path} is not an nnssl attention result: missing keys {missing}")
    if doc["schema_version"] != ATTENTION_SCHEMA_VERSION:
        raise ValueError(f"{path}: schema_version {doc['schema_version']} is not supported "
                         f"(expected {ATTENTION_SCHEMA_VERSION})")
    if not doc["encoders"] or set(doc["encoders"]) - set(ENCODERS):
        raise ValueError(f"{path}: 'encoders' must hold {' and/or '.join(ENCODERS)}, got {sorted(doc['encoders'])}")
    for enc, body in doc["encoders"].items():
        stages = body.get("stages") if isinstance(body, dict) else None
        if not stages:
            raise ValueError(f"{path}: encoder {enc!r} has no stages")
        for s in stages:
            lacking = [k for k in ("name", "stride", "heads", "window", "distance_mm", "distance_window") if k not in s]
            if lacking:
                raise ValueError(f"{path}: encoder {enc!r} stage {s.get('name', '?')} lacks {lacking}")
            for k in ("distance_mm", "distance_window"):
                s[k] = [math.nan if v is None else float(v) for v in s[k]]
                if len(s[k]) != s["heads"]:
                    raise ValueError(f"{path}: {enc} {s['name']}.{k} has {len(s[k])} values for {s['heads']} heads")
            s.setdefault("localisation", {})
            s.setdefault("per_image_distance_mm", [])
    doc["shots"] = str(doc["shots"])
    doc["fold"] = str(doc.get("fold", "0"))
    doc["draw"] = int(doc.get("draw", 0) or 0)
    doc.setdefault("organs", {})
    return doc


def _nanmean(values: Sequence[Any], axis: int = 0) -> Any:
    arr = np.asarray(values, dtype=np.float64)
    with warnings.catch_warnings():  # an all-NaN column stays NaN without a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(arr, axis=axis)


def stage_signature(doc: Mapping[str, Any], encoder: str) -> tuple:
    """What must agree for two result files to be pooled: per stage its name, stride, heads and window."""
    return tuple((s["name"], s["stride"], s["heads"], tuple(s["window"])) for s in doc["encoders"][encoder]["stages"])


def pool_attention(docs: Sequence[Mapping[str, Any]], encoder: str) -> list[dict[str, Any]]:
    """One encoder's stages averaged over several result files (folds, k-shot draws) of the same architecture.

    Per stage: distance_mm / distance_window (H,) and the uniform-attention distances are means over the files;
    per_image_distance_mm concatenates every file's images (the unit of the report's bootstrap CI); padding_mass is
    the mean over files, blocks and heads; localisation per organ the mean over the files that have the organ.
    """
    have = [d for d in docs if encoder in d["encoders"]]
    if not have:
        return []
    sig = stage_signature(have[0], encoder)
    if any(stage_signature(d, encoder) != sig for d in have[1:]):
        raise ValueError(f"the {encoder} encoders of the files differ in stages, heads or windows; they cannot be pooled")
    out = []
    for i, first in enumerate(have[0]["encoders"][encoder]["stages"]):
        stages = [d["encoders"][encoder]["stages"][i] for d in have]
        organs = sorted({o for s in stages for o in s.get("localisation", {})}, key=lambda o: int(o))
        loc = {}
        for o in organs:
            entries = [s["localisation"][o] for s in stages if o in s.get("localisation", {})]
            loc[o] = {"attention": float(_nanmean([e["attention"] for e in entries])),
                      "uniform": float(_nanmean([e["uniform"] for e in entries])),
                      "tokens": int(sum(e.get("tokens") or 0 for e in entries)), "files": len(entries)}
        pad = [v for s in stages for b in s.get("blocks", []) for v in b.get("padding_mass", [])]
        out.append({
            "name": first["name"], "stride": first["stride"], "heads": first["heads"], "window": first["window"],
            "token_spacing_mm": first.get("token_spacing_mm"), "window_extent_mm": first.get("window_extent_mm"),
            "distance_mm": _nanmean([s["distance_mm"] for s in stages]).tolist(),
            "distance_window": _nanmean([s["distance_window"] for s in stages]).tolist(),
            "uniform_distance_mm": float(_nanmean([s.get("uniform_distance_mm", math.nan) for s in stages])),
            "uniform_distance_window": float(_nanmean([s.get("uniform_distance_window", math.nan) for s in stages])),
            "per_image_distance_mm": [float(v) for s in stages for v in s.get("per_image_distance_mm", [])
                                      if v is not None],
            "padding_mass": float(_nanmean([v for v in pad if v is not None])) if pad else math.nan,
            "localisation": loc, "files": len(stages),
        })
    return out


__all__ = ["ATTENTION_SCHEMA_VERSION", "AttentionAccumulator", "BlockGeometry", "ENCODERS", "LABEL_RULE",
           "PADDING_CONVENTION", "attention_localisation", "expected_distance", "mean_attention_distance",
           "own_label_mass", "pairwise_distance", "pool_attention", "read_attention_json", "renormalise", "stage_signature", "token_labels",
           "uniform_attention", "write_attention_json"]
