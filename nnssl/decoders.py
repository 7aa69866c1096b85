"""Reconstruction decoders for masked image modelling.

SimMIM (Xie et al., CVPR 2022) shows that a one-layer prediction head is enough: a 1x1 convolution from the last
encoder stage to ``stride^d * C`` channels followed by a pixel shuffle back to the input resolution. SMIT (Jiang et
al., MICCAI 2022) uses the same light decoder in its released code (``decoder1 = Conv3d(768, 32**3, 1)`` on the
stride-32 bottleneck followed by a rearrange to voxels), so both tasks share ``LightDecoder``. SwinUNETR's
masked-volume inpainting (Tang et al., CVPR 2022) decodes with ``InpaintingDecoder``.
"""
from __future__ import annotations

from torch import Tensor, nn


def pixel_shuffle_3d(x: Tensor, factor: int) -> Tensor:
    """(B, C * f^3, d, h, w) -> (B, C, d*f, h*f, w*f); channel index = ((c * f + i) * f + j) * f + k."""
    b, ch, d, h, w = x.shape
    f3 = factor**3
    if ch % f3 != 0:
        raise ValueError(f"{ch} channels cannot be shuffled by factor {factor}: need a multiple of {f3}")
    c = ch // f3
    x = x.view(b, c, factor, factor, factor, d, h, w)
    x = x.permute(0, 1, 5, 2, 6, 3, 7, 4)  # b, c, d, i, h, j, w, k
    return x.reshape(b, c, d * factor, h * factor, w * factor)


class LightDecoder(nn.Module):
    """SimMIM / SMIT prediction head: 1x1x1 conv to ``stride^3 * out_channels`` channels + 3D pixel shuffle.

    forward((B, in_channels, D/stride, H/stride, W/stride)) -> (B, out_channels, D, H, W).
    With the Swin encoder the input is its last output (16F channels at stride 32).
    """

    def __init__(self, in_channels: int, out_channels: int = 1, stride: int = 32) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1 or stride < 1:
            raise ValueError(
                f"in_channels={in_channels}, out_channels={out_channels} and stride={stride} must all be >= 1"
            )
        self.stride = stride
        self.proj = nn.Conv3d(in_channels, stride**3 * out_channels, kernel_size=1)

    def forward(self, features: Tensor) -> Tensor:
        """(B, in_channels, D/stride, H/stride, W/stride) -> (B, out_channels, D, H, W)."""
        return pixel_shuffle_3d(self.proj(features), self.stride)


class InpaintingDecoder(nn.Module):
    """Tang et al.'s default ("vae") reconstruction decoder (research-contributions SwinUNETR/Pretrain
    models/ssl_head.py:44-77): 5 x [conv3 -> InstanceNorm -> LeakyReLU -> 2x upsample]
    with channels dim/2, dim/4, dim/8, dim/16, dim/16, then a 1x1 conv to the image channels.

    (B, dim, D/32, H/32, W/32) -> (B, out_channels, D, H, W).
    """

    def __init__(self, dim: int, out_channels: int) -> None:
        super().__init__()
        if dim % 16 != 0:
            raise ValueError(f"decoder input channels {dim} must be divisible by 16 (the last Swin stage is 16F)")
        widths = [dim, dim // 2, dim // 4, dim // 8, dim // 16, dim // 16]
        blocks: list[nn.Module] = []
        for cin, cout in zip(widths[:-1], widths[1:]):
            blocks += [nn.Conv3d(cin, cout, kernel_size=3, padding=1), nn.InstanceNorm3d(cout), nn.LeakyReLU(),
                       nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False)]
        blocks.append(nn.Conv3d(widths[-1], out_channels, kernel_size=1))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        """(B, dim, D/32, H/32, W/32) -> (B, out_channels, D, H, W)."""
        return self.net(x)


__all__ = ["InpaintingDecoder", "LightDecoder", "pixel_shuffle_3d"]
