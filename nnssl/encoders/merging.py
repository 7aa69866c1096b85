"""Patch merging with an explicit concatenation order of the eight 2x2x2 sub-grids.

Swin's patch merging halves every axis by concatenating the eight sub-grids ``x[:, a::2, b::2, c::2]`` (offsets
``(a, b, c)`` along (D, H, W)) to 8C channels, then applies a LayerNorm over the 8C channels and a linear reduction to
2C. The weights only mean something together with the order of that concatenation, and the order is not visible in
the tensors (every order has the same shapes). The orders that matter:

- ``MONAI_MERGE_ORDER``: MONAI's ``PatchMerging`` ("merging", SwinUNETR's default) since MONAI 1.5.0 (Project-MONAI/
  MONAI@1c00ea2, "Fix PatchMerging duplicate merging", #8285): eight distinct sub-grids;
- ``MONAI_LEGACY_MERGE_ORDER``: the same class in MONAI 0.9.0 - 1.4.x (e.g. MONAI@1.4.0
  monai/networks/nets/swin_unetr.py:769-776): offsets (0,1,0) and (0,0,1) are taken twice and (1,1,0), (0,1,1)
  never. Every public SwinUNETR checkpoint trained before MONAI 1.5 used it; its LayerNorm statistics include the
  duplicates, so no permutation of the weights makes MONAI >= 1.5 compute the same function.

``OrderedPatchMerging`` takes any 8-offset order (duplicates allowed), so nnssl's encoder computes exactly what the
source network computed, and an axis permutation or flip of the input (``nnssl.convert.orientation``) becomes a
change of order instead of an approximation.
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence

import torch
from torch import Tensor, nn

Offset = tuple[int, int, int]

MONAI_MERGE_ORDER: tuple[Offset, ...] = (
    (0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1), (1, 1, 1))
MONAI_LEGACY_MERGE_ORDER: tuple[Offset, ...] = (
    (0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 0, 1), (0, 1, 0), (0, 0, 1), (1, 1, 1))

#: Names accepted wherever an order is configured (encoder config, plans, the CLI's --merging).
MERGE_ORDERS: dict[str, tuple[Offset, ...]] = {"monai": MONAI_MERGE_ORDER, "monai-legacy": MONAI_LEGACY_MERGE_ORDER}

#: What each named order is, in words (load reports, errors, documentation).
MERGE_ORDER_DESCRIPTIONS = {
    "monai": "MONAI >= 1.5 PatchMerging: eight distinct sub-grids",
    "monai-legacy": "MONAI 0.9-1.4 PatchMerging: sub-grids (0,1,0) and (0,0,1) twice, (1,1,0) and (0,1,1) never",
}


def normalize_merge_order(order: str | Sequence[Sequence[int]]) -> tuple[Offset, ...]:
    """A merge order given by name or as 8 (d, h, w) offsets in {0, 1} -> the canonical tuple of tuples."""
    if isinstance(order, str):
        if order not in MERGE_ORDERS:
            raise ValueError(f"unknown merge order {order!r}; choose one of {', '.join(MERGE_ORDERS)} or give 8 "
                             "(d, h, w) offsets")
        return MERGE_ORDERS[order]
    out = tuple(tuple(int(v) for v in offset) for offset in order)
    if len(out) != 8 or any(len(o) != 3 or any(v not in (0, 1) for v in o) for o in out):
        raise ValueError(f"merge_order={order!r}: expected 8 offsets (d, h, w), each 0 or 1")
    return out  # type: ignore[return-value]


def merge_order_name(order: Sequence[Offset]) -> str | None:
    """The name of a known order, or None for another one."""
    for name, known in MERGE_ORDERS.items():
        if tuple(order) == known:
            return name
    return None


def chunk_permutation(src: Sequence[Offset], dst: Sequence[Offset]) -> list[int] | None:
    """perm with ``dst[j] == src[perm[j]]`` (the source chunk that lands in target chunk j), or None if ``dst`` is not
    a rearrangement of ``src`` (another multiset of offsets). Duplicated offsets are matched in order."""
    if Counter(src) != Counter(dst):
        return None
    used: set[int] = set()
    perm = []
    for offset in dst:
        i = next(i for i, o in enumerate(src) if o == offset and i not in used)
        used.add(i)
        perm.append(i)
    return perm


def permute_merging_chunks(t: Tensor, perm: Sequence[int]) -> Tensor:
    """Reorder the 8 channel chunks of a patch-merging tensor along its last axis (LayerNorm (8C,), Linear (O, 8C)).

    LayerNorm statistics over all 8C channels do not depend on the order, so permuting its weights together with the
    reduction's input columns (and the concatenation order) reproduces the output exactly.
    """
    c8 = t.shape[-1]
    if c8 % 8:
        raise ValueError(f"patch-merging tensor of shape {tuple(t.shape)}: last axis not divisible by 8")
    chunks = t.reshape(*t.shape[:-1], 8, c8 // 8)
    return chunks[..., list(perm), :].reshape(t.shape).contiguous()


class OrderedPatchMerging(nn.Module):
    """Swin patch merging with a given sub-grid order: (B, D, H, W, C) -> (B, D/2, H/2, W/2, 2C).

    Parameter names (``norm``, ``reduction``) are MONAI's, so state dicts are interchangeable with MONAI's
    ``PatchMerging``. Odd sizes are zero-padded at the end of the axis, as MONAI does.
    """

    def __init__(self, dim: int, norm_layer: type[nn.LayerNorm] = nn.LayerNorm, spatial_dims: int = 3,
                 order: Sequence[Offset] = MONAI_MERGE_ORDER) -> None:
        super().__init__()
        if spatial_dims != 3:
            raise ValueError("OrderedPatchMerging is 3D only")
        self.order = normalize_merge_order(order)
        self.reduction = nn.Linear(8 * dim, 2 * dim, bias=False)
        self.norm = norm_layer(8 * dim)

    def forward(self, x: Tensor) -> Tensor:
        """(B, D, H, W, C) -> (B, ceil(D/2), ceil(H/2), ceil(W/2), 2C): concatenate the 8 sub-grids in ``order``,
        LayerNorm, linear reduction."""
        if x.ndim != 5:
            raise ValueError(f"expected (B, D, H, W, C), got shape {tuple(x.shape)}")
        _, d, h, w, _ = x.shape
        if d % 2 or h % 2 or w % 2:
            x = nn.functional.pad(x, (0, 0, 0, w % 2, 0, h % 2, 0, d % 2))
        x = torch.cat([x[:, a::2, b::2, c::2, :] for a, b, c in self.order], -1)
        return self.reduction(self.norm(x))


__all__ = ["MERGE_ORDERS", "MERGE_ORDER_DESCRIPTIONS", "MONAI_LEGACY_MERGE_ORDER", "MONAI_MERGE_ORDER",
           "OrderedPatchMerging", "chunk_permutation", "merge_order_name", "normalize_merge_order",
           "permute_merging_chunks"]
