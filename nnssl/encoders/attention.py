"""Window attention through ``torch.nn.functional.scaled_dot_product_attention``, with gradients, per Swin stage.

MONAI's ``WindowAttention.forward`` (monai/networks/nets/swin_unetr.py, monai 1.6.1, lines 592-629) computes
``softmax(q k^T * scale + relative-position bias [+ shift mask]) v`` eagerly; its SDPA branch (lines 600-612,
``use_flash_attention``) runs only when autograd is off. ``SDPAWindowAttention`` is the same module (same
parameters, buffers and state-dict keys) whose forward passes the relative-position bias plus, in the shifted
blocks, the shift mask as SDPA's float ``attn_mask`` in training too: the bias table receives its gradient through
the mask. It equals the eager path within fp32 rounding (tests/test_sdpa_attention.py: forward and backward, 1e-5).

``set_attention(module, choice)`` switches the blocks of every MONAI SwinTransformer inside ``module`` (a task's
student and its teacher copies alike) by stage; ``eager_attention(module)`` restores MONAI's eager forward inside a
block (the attention analyses read the softmax output, which only the eager path computes). The choice is a runtime
setting of the pretraining run (``nnssl_pretrain --attention``, default eager), not part of the encoder: checkpoints
are unchanged.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from monai.networks.nets.swin_unetr import SwinTransformer, WindowAttention

KINDS = ("eager", "sdpa")
STAGES = 4

#: ``--attention auto``: the stages where SDPA measured faster than the eager path, per device type (forward +
#: backward of one stage's window attention, ``benchmarks/attention.py``; documentation/pretraining.md has the
#: table). On the CPU the trainable bias makes SDPA take its math fallback (the fused CPU kernel gives no gradient for
#: ``attn_mask``): with malloc keeping freed memory, as every CPU run does (nnssl.cpu_memory), it measured 1.13-1.23x
#: the eager time at stages 1-3 of the tiny encoder at 64^3 and 0.99x at stage 4, so the CPU keeps the eager path
#: (it won only at stage 1, 0.87-0.96x, while glibc mapped every large tensor afresh). CUDA is not measured yet, so it
#: keeps MONAI's eager path until the benchmark is run there (``--device cuda``).
#: Device types whose shifted blocks get the shift mask copied per image as a 4-D mask (for the fused kernels);
#: elsewhere a 5-D mask broadcasts over the images.
BATCHED_MASK_DEVICES = {"cuda"}
AUTO: dict[str, tuple[str, ...]] = {"cpu": ("eager",) * STAGES, "cuda": ("eager",) * STAGES}


class SDPAWindowAttention(WindowAttention):
    """MONAI's WindowAttention with the attention computed by SDPA, bias and shift mask as a float mask."""

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """x (B*nW, n, C) windows of n tokens; mask (nW, n, n) with 0 / -100 (shifted blocks) or None."""
        b, n, c = x.shape
        h = self.num_heads
        q, k, v = self.qkv(x).reshape(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.relative_position_bias_table[self.relative_position_index[:n, :n].reshape(-1)]
        bias = bias.reshape(n, n, h).permute(2, 0, 1)  # (h, n, n)
        bias = bias.unsqueeze(0)  # (1, h, n, n)
        if mask is None:
            out = self._sdpa(q, k, v, bias)
        elif x.device.type in BATCHED_MASK_DEVICES:
            # windows of one image are consecutive in the batch: window i of every image takes mask[i]. One mask per
            # window and head, 4-D as in MONAI's no-grad branch (lines 603-605): the fused kernels take 4-D only.
            nw = mask.shape[0]
            bias = bias.unsqueeze(0) + mask.to(bias.dtype).reshape(1, nw, 1, n, n)
            out = self._sdpa(q, k, v, bias.expand(b // nw, nw, h, n, n).reshape(b, h, n, n))
        else:
            # the math path (CPU: no fused kernel takes a mask that needs a gradient) broadcasts a 5-D mask over the
            # images instead of copying it per image
            nw = mask.shape[0]
            q, k, v = (t.reshape(b // nw, nw, h, n, c // h) for t in (q, k, v))
            out = self._sdpa(q, k, v, bias + mask.to(bias.dtype).unsqueeze(1))  # (nW, h, n, n)
        out = out.reshape(b, h, n, c // h).transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(out))

    def _sdpa(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
        p = self.attn_drop.p if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=p, scale=self.scale)


def parse_attention(text: str) -> tuple[str, ...] | str:
    """``--attention`` value: "auto", one kind for every stage, or four comma-separated kinds (stages 1-4)."""
    value = text.strip().lower()
    if value == "auto":
        return "auto"
    kinds = tuple(k.strip() for k in value.split(","))
    if len(kinds) == 1:
        kinds = kinds * STAGES
    if len(kinds) != STAGES or any(k not in KINDS for k in kinds):
        raise ValueError(f"--attention {text!r}: give auto, eager, sdpa, or {STAGES} comma-separated kinds for the "
                         f"stages 1-{STAGES} (e.g. sdpa,sdpa,eager,eager)")
    return kinds


def resolve_attention(choice: str | Sequence[str], device_type: str) -> tuple[str, ...]:
    """The kind per stage (4 entries) that ``choice`` means on ``device_type``."""
    parsed = parse_attention(choice) if isinstance(choice, str) else tuple(choice)
    if parsed == "auto":
        return AUTO.get(device_type, ("eager",) * STAGES)
    return parse_attention(",".join(parsed))  # type: ignore[return-value]


def swin_blocks(module: nn.Module) -> Iterator[tuple[int, nn.Module]]:
    """(stage 1-4, WindowAttention) of every block of every MONAI SwinTransformer inside ``module``."""
    for swin in module.modules():
        if not isinstance(swin, SwinTransformer):
            continue
        for stage in range(1, STAGES + 1):
            for layer in getattr(swin, f"layers{stage}"):
                for block in layer.blocks:
                    if isinstance(block.attn, WindowAttention):
                        yield stage, block.attn


def set_attention(module: nn.Module, kinds: Sequence[str]) -> int:
    """Switch every Swin block inside ``module`` to ``kinds[stage - 1]``; returns how many blocks use SDPA."""
    kinds = tuple(kinds)
    if len(kinds) != STAGES or any(k not in KINDS for k in kinds):
        raise ValueError(f"need {STAGES} kinds out of {KINDS}, got {kinds}")
    sdpa = 0
    for stage, attn in swin_blocks(module):
        use = kinds[stage - 1] == "sdpa"
        attn.__class__ = SDPAWindowAttention if use else WindowAttention
        sdpa += use
    return sdpa


def attention_kinds(module: nn.Module) -> dict[int, set[str]]:
    """Stage -> the kinds its blocks use (for checks and logs)."""
    out: dict[int, set[str]] = {}
    for stage, attn in swin_blocks(module):
        out.setdefault(stage, set()).add("sdpa" if isinstance(attn, SDPAWindowAttention) else "eager")
    return out


@contextmanager
def eager_attention(module: nn.Module) -> Iterator[None]:
    """MONAI's eager attention in every block inside ``module`` within the block (restored after)."""
    switched = [attn for _, attn in swin_blocks(module) if isinstance(attn, SDPAWindowAttention)]
    for attn in switched:
        attn.__class__ = WindowAttention
    try:
        yield
    finally:
        for attn in switched:
            attn.__class__ = SDPAWindowAttention


__all__ = ["AUTO", "KINDS", "SDPAWindowAttention", "attention_kinds", "eager_attention", "parse_attention",
           "resolve_attention", "set_attention", "swin_blocks"]
