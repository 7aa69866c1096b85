"""DINO: self-distillation with no labels.

Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021 (arXiv:2104.14294); reference
code facebookresearch/dino (cited in documentation/methods/dino.md with file and line).
A student and an EMA teacher (same architecture, no gradient to the teacher) see different crops of a volume. The
teacher sees the two global crops, the student all crops (two global + several smaller local crops: 3D multi-crop).
Both map a global token to out_dim logits through the DINO head (MLP, L2-normalised bottleneck, weight-normalised
last layer). The teacher distribution is centred (running mean of teacher logits, momentum 0.9) and sharpened
(teacher temperature), the student uses temperature 0.1, and the loss is the cross-entropy over all (teacher view,
student view) pairs except same-view (``nnssl.losses.dino.DINOLoss``).

3D multi-crop (``nnssl.views.multi_crop``): global crops have the crop size (voxel fraction ``global_crop_scale`` of
the crop, resized), local crops half of it per axis rounded down to a multiple of 32 (at least 32, Swin's divisor);
flips and the 3D photometric analogue of DINO's colour augmentations (``nnssl.views.Photometric``: blur on global
crop 1, blur + solarisation on global crop 2, blur p 0.5 on local crops, as main_dino.py:421-456). The global token
is the mean of the last-stage tokens after a LayerNorm (the affine final norm a ViT/Swin backbone has and MONAI's
normalised outputs lack).

Shapes (B batch, C channels, crop D x H x W divisible by 32, F feature size, L = local_crops_number, local crop
d x h x w):
    make_views: crops (B, C, D, H, W) -> {"global": (2B, C, D, H, W), "local": (L*B, C, d, h, w)} (view-major;
                "local" absent when L = 0)
    student/teacher: encoder last stage (N_img, 16F, D/32, ...) -> global token (N_img, 16F) -> logits (N_img, out_dim)
    forward -> {"loss", "loss/global"}
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import torch
from torch import Tensor

from nnssl.distillation import DistillationSchedule, HeadSettings, distillation_heads, global_logits, normalized_tokens
from nnssl.encoders.swin import SwinEncoder, encode_by_size
from nnssl.losses.dino import DINOLoss
from nnssl.recipes import OptimRecipe
from nnssl.tasks.base import PretextTask, ViewFn
from nnssl.teacher import MomentumTeacher
from nnssl.views import DINO_GLOBAL_PHOTOMETRIC, DINO_LOCAL_PHOTOMETRIC, local_crop_size, multi_crop

N_GLOBAL = 2


@dataclass
class DINOConfig:
    """DINO defaults: main_dino.py's defaults (the README's vanilla ViT-S/16 run). out_dim 65536 is the paper's;
    lower it for small runs and tests."""

    out_dim: int = 65536
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    head_layers: int = 3
    norm_last_layer: bool = True
    student_temp: float = 0.1
    teacher_temp_start: float = 0.04
    teacher_temp: float = 0.04
    #: Warm-up of the teacher temperature as a fraction of the run (main_dino.py's default: 0 epochs).
    teacher_temp_warmup_fraction: float = 0.0
    center_momentum: float = 0.9
    ema_start: float = 0.996
    ema_end: float = 1.0
    #: The heads' last layer is frozen during the first epoch of 100.
    freeze_last_layer_fraction: float = 0.01
    local_crops_number: int = 8
    #: Voxel fractions of the crop covered by global / local crops (DINO's area fractions used as volume fractions).
    global_crop_scale: tuple[float, float] = (0.4, 1.0)
    local_crop_scale: tuple[float, float] = (0.05, 0.4)
    #: Local crop edge relative to the crop edge (96 / 224 px in DINO; rounded down to a multiple of 32, min 32).
    local_crop_fraction: float = 0.5

    def __post_init__(self) -> None:
        self.global_crop_scale = tuple(float(v) for v in self.global_crop_scale)
        self.local_crop_scale = tuple(float(v) for v in self.local_crop_scale)
        if self.local_crops_number < 0:
            raise ValueError(f"local_crops_number={self.local_crops_number} must be >= 0")
        for name in ("global_crop_scale", "local_crop_scale"):
            lo, hi = getattr(self, name)
            if not 0.0 < lo <= hi <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must satisfy 0 < low <= high <= 1")
        if not 0.0 < self.local_crop_fraction <= 1.0:
            raise ValueError(f"local_crop_fraction={self.local_crop_fraction} must lie in (0, 1]")
        if min(self.student_temp, self.teacher_temp_start, self.teacher_temp) <= 0:
            raise ValueError("temperatures must be > 0")
        if min(self.out_dim, self.head_hidden_dim, self.head_bottleneck_dim, self.head_layers) < 1:
            raise ValueError("head sizes must be >= 1")


def dino_views(crops: Tensor, generator: torch.Generator, *, cfg: DINOConfig) -> dict[str, Tensor]:
    """Crops (B, C, D, H, W) -> {"global": (2B, ...), "local": (nB, ...)}: DINO's multi-crop."""
    c = cfg
    return multi_crop(crops, generator, c.global_crop_scale, DINO_GLOBAL_PHOTOMETRIC, c.local_crops_number,
                      c.local_crop_fraction, c.local_crop_scale, DINO_LOCAL_PHOTOMETRIC)


class DINO(PretextTask):
    """DINO (Caron et al., ICCV 2021) with 3D multi-crop on the Swin encoder; see the module docstring."""

    name: ClassVar[str] = "dino"
    family: ClassVar[str] = "self-distillation"
    paper: ClassVar[str] = "Caron et al., Emerging Properties in Self-Supervised Vision Transformers (DINO), ICCV 2021"
    Config: ClassVar[type] = DINOConfig
    #: main_dino.py: AdamW, lr 5e-4 per 256 images, 10 warm-up epochs of 100, cosine to 1e-6, weight decay
    #: 0.04 -> 0.4 (cosine), per-parameter gradient clipping at 3.0.
    recipe: ClassVar[OptimRecipe] = OptimRecipe(
        base_lr=5e-4, reference_batch=256, min_lr=1e-6, warmup_fraction=0.1, weight_decay=0.04,
        weight_decay_end=0.4, clip_grad=3.0, clip_mode="per-parameter",
        source="facebookresearch/dino main_dino.py defaults (vanilla ViT-S/16, 100 epochs)")

    def __init__(self, encoder: SwinEncoder, cfg: DINOConfig | None = None) -> None:
        super().__init__(encoder, cfg)
        c = self.cfg
        head = HeadSettings(c.out_dim, c.head_hidden_dim, c.head_bottleneck_dim, c.head_layers, c.norm_last_layer)
        self.heads = distillation_heads(encoder.out_channels[-1], head)
        self.global_loss = DINOLoss(c.out_dim, c.student_temp, c.center_momentum)
        self.teacher = MomentumTeacher({"encoder": encoder, "heads": self.heads}, c.ema_start, c.ema_end)
        self.schedule = DistillationSchedule(c.teacher_temp_start, c.teacher_temp, c.teacher_temp_warmup_fraction,
                                             c.freeze_last_layer_fraction)

    def setup(self, total_steps: int) -> None:
        """Set up the teacher's EMA momentum and the teacher-temperature schedule for ``total_steps``."""
        super().setup(total_steps)
        self.teacher.setup(total_steps)
        self.schedule.setup(total_steps)

    @classmethod
    def check_crop(cls, crop: tuple[int, ...], cfg: DINOConfig) -> list[str]:
        """Swin's rule; warns when local crops are asked for but would have the global crops' size (a 32^3 crop:
        local crop sizes are rounded down to a multiple of 32, at least 32)."""
        super().check_crop(crop, cfg)
        small = local_crop_size(crop, cfg.local_crop_fraction)
        if cfg.local_crops_number and small == tuple(crop):
            return [f"DINO's local crops of a {tuple(crop)} crop have the global crops' size (32 is Swin's "
                    "smallest input): use a crop of at least 64 (96, the paper's ratio 96/224 at 224 px, "
                    "recommended) for local crops smaller than the global ones"]
        return []

    def view_fn(self) -> ViewFn:
        """``dino_views`` bound to the config: two global and ``local_crops_number`` local crops per crop."""
        return partial(dino_views, cfg=self.cfg)

    def forward(self, views: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        """Student: global (2B, C, D, H, W) and local crops, one encoder call per crop size -> global logits; EMA
        teacher: the two global crops. Returns {"loss": DINO cross-entropy over all (teacher, student) view pairs
        except same-view at the scheduled teacher temperature, "loss/global": same}."""
        g, loc = views["global"], views.get("local")
        batch = g.shape[0] // N_GLOBAL
        inputs = [g] if loc is None else [g, loc]
        s_all = torch.cat([global_logits(normalized_tokens(f[-1], self.heads), self.heads)
                           for f in encode_by_size(self.student, inputs)])
        with torch.no_grad():
            t_heads = self.teacher["heads"]
            t_global = global_logits(normalized_tokens(self.teacher["encoder"](g)[-1], t_heads), t_heads)
        loss = self.global_loss(s_all.split(batch), t_global.split(batch), self.schedule.teacher_temp(step))
        return {"loss": loss, "loss/global": loss.detach()}

    def before_optimizer_step(self, step: int) -> None:
        """Cancel the gradients of the head's last layer during the first ``freeze_last_layer_fraction`` of the run."""
        self.schedule.freeze(step, self.heads)

    @torch.no_grad()
    def on_step_end(self, step: int) -> None:
        """EMA update of the teacher's encoder and heads from the student's (cosine momentum schedule)."""
        self.teacher.update(step, {"encoder": self.student, "heads": self.heads})
