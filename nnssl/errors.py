"""The error types shared by checkpoint loading, architecture reading and checkpoint conversion.

They live apart from those modules so that each can raise them without importing the others.
"""
from __future__ import annotations

from typing import Any


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked; the message says why and what to do."""


class ConversionError(CheckpointError):
    """A source checkpoint that cannot be converted exactly; ``report`` holds what was found so far."""

    def __init__(self, message: str, report: Any = None) -> None:
        super().__init__(message)
        self.report = report


class ArchitectureMismatchError(ConversionError):
    """The tensors describe another encoder architecture than the one expected; the message names the settings."""


__all__ = ["ArchitectureMismatchError", "CheckpointError", "ConversionError"]
