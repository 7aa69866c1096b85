"""Heads written once and shared by the pretext tasks: token pooling, projection MLPs, the DINO head."""
from __future__ import annotations

from torch import Tensor, nn
import torch.nn.functional as F


def global_token(features: Tensor) -> Tensor:
    """(B, C, d, h, w) -> (B, C): average of the tokens of one encoder stage."""
    return features.flatten(2).mean(dim=2)


def tokens(features: Tensor) -> Tensor:
    """(B, C, d, h, w) -> (B, N, C) with N = d*h*w in row-major (d, h, w) order."""
    return features.flatten(2).transpose(1, 2)


class MLP(nn.Module):
    """Linear layers with optional normalisation and an activation between them (projection / predictor heads).

    (B, in_dim) -> (B, out_dim). ``norm``: "bn" (SimCLR, MoCo v3), "ln" or None; ``activation``: "gelu" or "relu"
    (SimCLR, MoCo v3). ``last_norm`` adds a non-affine BatchNorm after the last layer as MoCo v3's projector and ViT
    predictor do (facebookresearch/moco-v3 moco/builder.py:47-50); a layer followed by a BatchNorm has no bias (the
    norm's shift replaces it, moco/builder.py:42).
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, layers: int = 2, norm: str | None = "bn",
                 last_norm: bool = False, activation: str = "gelu") -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"an MLP needs at least one layer, got {layers}")
        if norm not in ("bn", "ln", None):
            raise ValueError(f"norm must be 'bn', 'ln' or None, got {norm!r}")
        if activation not in ("gelu", "relu"):
            raise ValueError(f"activation must be 'gelu' or 'relu', got {activation!r}")
        act = nn.GELU if activation == "gelu" else nn.ReLU
        dims = [in_dim] + [hidden_dim] * (layers - 1) + [out_dim]
        blocks: list[nn.Module] = []
        for i in range(layers):
            last = i == layers - 1
            blocks.append(nn.Linear(dims[i], dims[i + 1], bias=(last and not last_norm) or (not last and norm is None)))
            if not last:
                if norm == "bn":
                    blocks.append(nn.BatchNorm1d(dims[i + 1]))
                elif norm == "ln":
                    blocks.append(nn.LayerNorm(dims[i + 1]))
                blocks.append(act())
        if last_norm:
            blocks.append(nn.BatchNorm1d(out_dim, affine=False))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_dim) -> (B, out_dim)."""
        return self.net(x)


class DINOHead(nn.Module):
    """DINO projection head (Caron et al. 2021): MLP -> L2-normalised bottleneck -> weight-normalised linear.

    (..., in_dim) -> (..., out_dim) logits. The last layer's norm is frozen to 1 (``norm_last_layer``) as in DINO,
    which stabilises training. Works on global tokens (B, C) and on patch tokens (B, N, C) alike.
    """

    def __init__(self, in_dim: int, out_dim: int = 65536, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 layers: int = 3, norm_last_layer: bool = True) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (layers - 1) + [bottleneck_dim]
        blocks: list[nn.Module] = []
        for i in range(layers):
            blocks.append(nn.Linear(dims[i], dims[i + 1]))
            if i < layers - 1:
                blocks.append(nn.GELU())
        self.mlp = nn.Sequential(*blocks)
        self.apply(self._init)
        self.last_layer = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        self.last_layer.parametrizations.weight.original0.data.fill_(1.0)
        if norm_last_layer:
            self.last_layer.parametrizations.weight.original0.requires_grad_(False)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """(..., in_dim) -> (..., out_dim) logits: MLP, L2-normalise the bottleneck, weight-normed linear."""
        x = F.normalize(self.mlp(x), dim=-1, eps=1e-6)
        return self.last_layer(x)


def cancel_last_layer_gradients(module: nn.Module) -> None:
    """Drop the gradients of every DINOHead's last layer in ``module`` (DINO's ``freeze_last_layer``: the output
    layer stays fixed during the first epoch, which the DINO authors found to stabilise the start of training)."""
    for head in module.modules():
        if isinstance(head, DINOHead):
            for p in head.last_layer.parameters():
                p.grad = None
