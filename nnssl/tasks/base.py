"""The pretext-task interface every pretraining method implements.

A task is an ``nn.Module`` that owns its networks (student encoder, heads, teacher) and none of the training
mechanics: the single loop in ``nnssl.training`` handles optimiser, schedules of the learning rate, AMP, devices,
DDP and checkpoints for every task alike.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor, nn

from nnssl.encoders.swin import SwinEncoder, check_swin_input_size
from nnssl.recipes import OptimRecipe

#: A method's view building without the task: ``(crops (B, C, D, H, W), generator) -> views``. A module-level
#: function bound to the task's settings (``functools.partial(fn, cfg=..., ...)``): picklable, so DataLoader workers
#: run it, and pure (all randomness from the generator), so the views of a step do not depend on where it runs.
ViewFn = Callable[[Tensor, torch.Generator], dict[str, Tensor]]


class PretextTask(nn.Module, ABC):
    """Base class of the pretext tasks.

    Subclasses set ``name`` (the ``-m`` key), ``family``, ``paper`` (citation shown by ``nnssl_pretrain --list``),
    ``Config`` (a dataclass whose defaults are the reference values, validated in ``__post_init__``) and ``recipe``
    (the reference optimisation settings, ``nnssl.recipes.OptimRecipe``), and implement ``view_fn`` (or
    ``make_views``) and ``forward``. The student encoder is ``self.student``; what fine-tuning loads is ``self.encoder()``.
    """

    name: ClassVar[str]
    family: ClassVar[str]
    paper: ClassVar[str]
    Config: ClassVar[type]
    recipe: ClassVar[OptimRecipe]
    #: True for methods that hide patches behind the encoder's mask token (their checkpoints keep it).
    uses_mask_token: ClassVar[bool] = False
    #: Contrastive methods: the global batch (crops per optimiser step, all ranks) their page recommends at least;
    #: the loop warns below it (too few negatives make the task solvable from intensity statistics alone).
    recommended_batch: ClassVar[int | None] = None
    #: Whether the method scores against the negatives of every rank (SimCLR, MoCo v3) or of its own rank only
    #: (Tang's contrastive loss): the batch the recommendation applies to is then the per-rank one.
    gathers_negatives: ClassVar[bool] = True

    def __init__(self, encoder: SwinEncoder, cfg: Any = None) -> None:
        super().__init__()
        self.student = encoder
        self.cfg = cfg if cfg is not None else self.Config()
        self.total_steps = 1

    def setup(self, total_steps: int) -> None:
        """Called once by the loop before the first step: precompute per-step schedules (EMA, temperatures)."""
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.total_steps = int(total_steps)

    @classmethod
    def check_crop(cls, crop: tuple[int, ...], cfg: Any) -> list[str]:
        """Validate the loader's crop size for this method and config before training (and when a grid spec is
        read): raise ValueError (naming the smallest size that works) when the method cannot run on it; return
        warnings for sizes that run but are below what the method's page recommends. Default: Swin's rule (every
        axis a multiple of 32)."""
        check_swin_input_size(crop)
        return []

    def negatives_per_anchor(self, batch: int, world_size: int = 1) -> int | None:
        """Contrastive methods: negatives each anchor is scored against at ``batch`` crops per rank; None for
        methods without negatives."""
        return None

    def view_fn(self) -> ViewFn | None:
        """The method's view building as a picklable pure function of (crops, generator) (see ``ViewFn``), which
        the loop runs in its DataLoader workers; None when the views need the task itself (the loop then builds
        them in the main process with ``make_views``). It may read settings only (config, patch size, tables),
        never parameters or buffers."""
        return None

    def make_views(self, crops: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """Crops (B, C, D, H, W) -> everything the method needs: views, masks, rotation labels, targets.

        Default: ``view_fn()(crops, generator)``; a task without a ``view_fn`` overrides this instead."""
        fn = self.view_fn()
        if fn is None:
            raise NotImplementedError(f"{type(self).__name__} implements neither view_fn nor make_views")
        return fn(crops, generator)

    @abstractmethod
    def forward(self, views: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        """Returns {"loss": total, "loss/<part>": parts...}; ``step`` is the global step (0-based)."""

    def before_optimizer_step(self, step: int) -> None:
        """After backward and gradient clipping, before the optimiser step (e.g. freezing a head's last layer)."""

    @torch.no_grad()
    def on_step_end(self, step: int) -> None:
        """After the optimiser step: EMA teacher, centres, queues. Default: nothing."""

    def encoder(self) -> SwinEncoder:
        """The encoder that fine-tuning loads."""
        return self.student


def config_from_overrides(config_cls: type, overrides: dict[str, str] | None = None) -> Any:
    """Build a task config from ``-o key=value`` strings, converting each value to the field's type.

    Unknown keys raise a ValueError that suggests the closest known key.
    """
    overrides = overrides or {}
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    hints = typing.get_type_hints(config_cls)
    values: dict[str, Any] = {}
    for key, raw in overrides.items():
        if key not in fields:
            close = difflib.get_close_matches(key, fields, 1)
            suggestion = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(
                f"unknown option {key!r} for {config_cls.__qualname__}{suggestion}; "
                f"known: {', '.join(sorted(fields))}"
            )
        values[key] = _convert(raw, hints[key], key)
    return config_cls(**values)


def _convert(raw: Any, annotation: Any, key: str) -> Any:
    if not isinstance(raw, str):
        return raw
    origin = typing.get_origin(annotation)
    try:
        if annotation is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if annotation in (int, float, str):
            return annotation(raw)
        if origin in (tuple, list):
            (item_type, *_) = typing.get_args(annotation) or (str,)
            items = [p for p in raw.replace("(", "").replace(")", "").split(",") if p.strip()]
            return origin(_convert(p.strip(), item_type, key) for p in items)
    except ValueError:
        raise ValueError(f"option {key}={raw!r} is not a valid {getattr(annotation, '__name__', annotation)}") from None
    return raw
