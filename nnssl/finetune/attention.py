"""Attention maps of the Swin encoder, read from MONAI's eager attention path, for ``nnssl.analysis.attention``.

MONAI's ``WindowAttention.forward`` (``monai/networks/nets/swin_unetr.py`` lines 592-629, monai 1.6.1) computes
``softmax(q k^T * scale + relative position bias [+ shifted-window mask])`` with its own ``nn.Softmax`` module
(``self.softmax``, lines 621/623) when ``use_flash_attention`` is off; its fused path
(``torch.nn.functional.scaled_dot_product_attention``, lines 600-612, taken under ``torch.no_grad`` when
``use_flash_attention`` is on) never materialises the weights. :class:`AttentionRecorder` therefore switches every
block to the eager path while recording (and back afterwards; blocks switched to nnssl's SDPA attention,
``nnssl.encoders.attention``, likewise run MONAI's eager forward) and reads the weights with a forward hook on that
softmax module: the encoder computes exactly what it computes without the recorder.

Where a window token sits: ``SwinTransformerBlock.forward_part1`` (lines 696-748) pads the block's token grid to a
multiple of the window at the end of each axis (lines 702-706), rolls it by minus the shift in the shifted blocks
(line 722), and partitions it into windows with ``window_partition`` (lines 410-442); window size and shift are
clipped by ``get_window_size`` (lines 476-500) when the grid is not larger than the window. :func:`window_geometry`
replays those steps on a grid of coordinates with MONAI's own functions, so each window token maps back to its place
in the stage's token grid. The shifted blocks' attention mask (``compute_mask``, lines 879-916: -100 between tokens
from different regions of the rolled grid, so those pairs get ~e^-100 of the weight) is captured as passed to the
attention and kept as the pairs a query may attend to.

Stages: MONAI's ``layers1``..``layers4`` attend on the token grids of stride 2, 4, 8 and 16 (patch embedding of
stride 2, then each stage's attention before its patch merging; ``SwinTransformer.forward``, lines 1273-1293); the
stride-32 output has no attention after it.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from nnssl.analysis.attention import AttentionAccumulator, BlockGeometry, token_labels
from nnssl.encoders.attention import eager_attention
from nnssl.encoders.swin import SwinEncoder
from nnssl.finetune.feature_reuse import load_fold_encoders
from nnssl.nnunet.naming import CONFIGURATION

#: Upper bound on the attention weights converted to numpy at once (windows are processed in chunks below it).
CHUNK_ELEMENTS = 1 << 22


@dataclass
class BlockAttention:
    """One block's attention for a batch: attn (B, nW, H, n, n) as MONAI computed it, and its geometry."""

    geometry: BlockGeometry
    attn: Tensor


def stage_stride(encoder: SwinEncoder, stage: int) -> int:
    """Stride (in voxels) of the token grid MONAI's ``layers{stage}`` attends on: patch size x 2^(stage-1)."""
    return encoder.cfg.patch_size * 2 ** (stage - 1)


def window_geometry(stage: str, block: int, stride: int, grid: Sequence[int], window_size: Sequence[int],
                    shift_size: Sequence[int], mask: Tensor | None) -> BlockGeometry:
    """Where each token of each window of a block sits in the block's (unpadded) token grid.

    grid (d, h, w): the block's token grid; window_size / shift_size: the block's configured values (MONAI clips them
    to the grid); mask: the (nW, n, n) additive mask MONAI passed to the attention (None in unshifted blocks).
    Returns coords (nW, n, 3), valid (nW, n) and allowed (nW, n, n) (None when every pair may attend).
    """
    from monai.networks.nets.swin_unetr import get_window_size, window_partition

    grid = tuple(int(g) for g in grid)
    window, shift = get_window_size(grid, tuple(window_size), tuple(shift_size))
    padded = [int(math.ceil(g / w)) * w for g, w in zip(grid, window)]
    coords = torch.stack(torch.meshgrid(*[torch.arange(p) for p in padded], indexing="ij"), -1)[None]
    if any(s > 0 for s in shift):  # the same roll as forward_part1, on coordinates instead of features
        coords = torch.roll(coords, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
    coords = window_partition(coords, window).numpy()  # (nW, n, 3), MONAI's window and token order
    valid = np.all(coords < np.asarray(grid), axis=-1)
    allowed = None
    if mask is not None and any(s > 0 for s in shift):
        allowed = (mask.detach().cpu().numpy() == 0)
        if allowed.shape != coords.shape[:2] + coords.shape[1:2]:
            raise RuntimeError(f"{stage} block {block}: attention mask {allowed.shape} does not fit the "
                               f"{coords.shape[0]} windows of {coords.shape[1]} tokens: MONAI's windowing changed")
    return BlockGeometry(stage, int(block), int(stride), grid, tuple(window), tuple(shift), coords, valid, allowed)


class AttentionRecorder:
    """Context manager: calls ``callback(BlockAttention)`` for every Swin block of ``encoder`` during its forward.

    The blocks run MONAI's eager attention while recording (``use_flash_attention`` off, restored on exit); hooks
    only read tensors, so the encoder's outputs are unchanged.
    """

    def __init__(self, encoder: SwinEncoder, callback: Callable[[BlockAttention], None]) -> None:
        self.encoder, self.callback = encoder, callback
        self._handles: list[Any] = []
        self._flash: list[tuple[nn.Module, bool]] = []
        self._geometry: dict[tuple, BlockGeometry] = {}
        self._eager: Any = None

    def blocks(self) -> Iterable[tuple[int, int, nn.Module]]:
        """(stage 1-4, block index, block) for every MONAI ``SwinTransformerBlock`` in the encoder's
        ``swinViT.layers<stage>``."""
        from monai.networks.nets.swin_unetr import SwinTransformerBlock

        for stage in range(1, 5):
            for j, blk in enumerate(getattr(self.encoder.swinViT, f"layers{stage}")[0].blocks):
                if isinstance(blk, SwinTransformerBlock):
                    yield stage, j, blk

    def __enter__(self) -> "AttentionRecorder":
        self._eager = eager_attention(self.encoder)
        self._eager.__enter__()
        for stage, j, blk in self.blocks():
            self._flash.append((blk.attn, bool(getattr(blk.attn, "use_flash_attention", False))))
            blk.attn.use_flash_attention = False
            state: dict[str, Any] = {}

            def grid_hook(module: nn.Module, args: tuple, state=state) -> None:
                state["grid"] = tuple(args[0].shape[1:4])  # the block sees (B, D, H, W, C)

            def mask_hook(module: nn.Module, args: tuple, kwargs: dict, state=state) -> None:
                state["mask"] = kwargs["mask"] if "mask" in kwargs else (args[1] if len(args) > 1 else None)

            def softmax_hook(module: nn.Module, args: tuple, out: Tensor, state=state, stage=stage, j=j,
                             blk=blk) -> None:
                geom = self._block_geometry(stage, j, blk, state["grid"], state["mask"])
                n_windows = geom.coords.shape[0]
                self.callback(BlockAttention(geom, out.detach().view(-1, n_windows, *out.shape[1:])))

            self._handles += [blk.register_forward_pre_hook(grid_hook),
                              blk.attn.register_forward_pre_hook(mask_hook, with_kwargs=True),
                              blk.attn.softmax.register_forward_hook(softmax_hook)]
        return self

    def _block_geometry(self, stage: int, j: int, blk: nn.Module, grid: tuple, mask: Tensor | None) -> BlockGeometry:
        key = (stage, j, grid, mask is None)
        if key not in self._geometry:
            self._geometry[key] = window_geometry(f"layers{stage}", j, stage_stride(self.encoder, stage), grid,
                                                  blk.window_size, blk.shift_size, mask)
        return self._geometry[key]

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        for attn, flash in self._flash:
            attn.use_flash_attention = flash
        self._handles, self._flash = [], []
        if self._eager is not None:
            self._eager.__exit__(*exc)
            self._eager = None


def _window_labels(grid_labels: np.ndarray, geom: BlockGeometry, windows: slice) -> np.ndarray:
    """Token labels (B, w, n) of the windows ``windows`` from labels on the token grid (B, d, h, w); padding -> 0."""
    c = np.minimum(geom.coords[windows], np.asarray(geom.grid) - 1)  # padded tokens: any index, masked out later
    lab = grid_labels[:, c[..., 0], c[..., 1], c[..., 2]]
    return np.where(geom.valid[windows][None], lab, 0)


@torch.no_grad()
def measure_attention(encoder: SwinEncoder, images: Sequence[Tensor], labels: Sequence[np.ndarray] | None,
                      spacing_mm: Sequence[float], organs: Sequence[int] = (), batch_size: int = 2,
                      device: str = "cpu") -> list[dict[str, Any]]:
    """Mean attention distance and organ localisation of every stage, block and head on the given images.

    images: (C, D, H, W) each, all of one size; labels: per image (D, H, W) int at image resolution, or None (no
    localisation). Returns :meth:`AttentionAccumulator.summary` (what the result file stores per encoder).
    """
    if not images:
        raise ValueError("no images to measure attention on")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"{len(labels)} label maps for {len(images)} images")
    acc = AttentionAccumulator(spacing_mm, organs)
    encoder = encoder.to(device).eval()
    grid_labels: dict[int, np.ndarray] = {}
    ids: list[int] = []

    def consume(block: BlockAttention) -> None:
        geom, attn = block.geometry, block.attn
        b, n_windows, heads, n = attn.shape[:4]
        lab = grid_labels.get(geom.stride)
        step = max(1, CHUNK_ELEMENTS // max(1, b * heads * n * n))
        for w0 in range(0, n_windows, step):
            windows = slice(w0, min(w0 + step, n_windows))
            chunk = attn[:, windows].float().cpu().numpy()
            acc.add(geom, chunk, ids, None if lab is None else _window_labels(lab, geom, windows), windows)

    strides = [stage_stride(encoder, s) for s in range(1, 5)]
    with AttentionRecorder(encoder, consume):
        for start in range(0, len(images), batch_size):
            batch = list(range(start, min(start + batch_size, len(images))))
            ids[:] = batch
            grid_labels.clear()
            if labels is not None:
                for s in strides:
                    grid_labels[s] = np.stack([token_labels(np.asarray(labels[i]), s) for i in batch])
            encoder(torch.stack([images[i] for i in batch]).float().to(device))
    return acc.summary()


def organ_names(dataset_json: Path) -> dict[int, str]:
    """Foreground labels {value: name} of an nnU-Net dataset.json (integer labels; region lists are left out)."""
    if not dataset_json.is_file():
        return {}
    labels = json.loads(dataset_json.read_text()).get("labels", {})
    return {int(v): str(k) for k, v in labels.items() if isinstance(v, int) and v > 0}


def attention_for_fold(pretrained: str | os.PathLike, dataset: str, trainer: str, plans: str, fold: int | str,
                       configuration: str = CONFIGURATION, n_images: int = 8, batch_size: int = 2,
                       device: str = "cpu", seed: int = 0) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """Attention analyses of the pretrained and the fine-tuned encoder of one nnU-Net fold.

    Both see the same ``n_images`` crops (the fine-tuning patch size) of the fold's validation cases, with their
    labels from the preprocessed ``_seg`` files. Returns ({"pretrained": stages, "fine-tuned": stages}, meta).
    """
    if n_images < 1 or batch_size < 1:
        raise ValueError("--images and --batch must be >= 1")
    fe = load_fold_encoders(pretrained, dataset, trainer, plans, fold, configuration, min_validation_cases=1,
                            seed=seed)
    spacing = list(fe.source.spacing)
    if len(spacing) != 3 or not all(s > 0 for s in spacing):
        raise ValueError(f"the plans of {fe.source.dataset_name} give no 3D spacing ({spacing}): distances in mm "
                         "need the 3d_fullres configuration's 'spacing'")
    crops = [fe.crops.sample(i) for i in range(n_images)]
    images = [c.image for c in crops]
    labels = [fe.crops.crop_labels(c) for c in crops]
    names = organ_names(fe.source.folder.parent / "dataset.json")
    present = sorted({int(v) for lab in labels for v in np.unique(lab) if v > 0})
    organs = sorted(set(names) | set(present))
    names = {o: names.get(o, f"label {o}") for o in organs}
    result = {"pretrained": measure_attention(fe.pretrained, images, labels, spacing, organs, batch_size, device),
              "fine-tuned": measure_attention(fe.finetuned, images, labels, spacing, organs, batch_size, device)}
    meta = fe.meta(trainer, plans, pretrained)
    meta.update(fold=str(fold), spacing_mm=spacing, organs=names, n_images=n_images, seed=seed,
                crop_cases=[fe.crops.cases[c.case][1] for c in crops],
                encoder_config=fe.pretrained.cfg.to_dict())
    return result, meta


__all__ = ["AttentionRecorder", "BlockAttention", "attention_for_fold", "measure_attention", "organ_names",
           "stage_stride", "window_geometry"]
