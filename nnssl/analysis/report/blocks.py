"""The report as data: headings, paragraphs, tables and figures, rendered by ``render`` to Markdown and HTML."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnssl.nnunet.naming import SCRATCH


@dataclass
class Heading:
    """A section heading of ``level`` (1 = title)."""

    level: int
    text: str


@dataclass
class Para:
    """A paragraph; ``note`` renders it as a highlighted note."""

    text: str
    note: bool = False  # rendered as a highlighted note (missing data, caveats)


@dataclass
class Table:
    """A table of strings with a header row and an optional caption."""

    header: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Figure:
    """A PNG figure (absolute path) with its caption."""

    path: Path  # absolute path of the PNG
    caption: str


@dataclass
class ReportOptions:
    """The report's settings: the from-scratch baseline, bootstrap resamples, seed and level, decimals."""

    baseline: str = SCRATCH
    n_boot: int = 10000
    seed: int = 0
    level: float = 0.95
    digits: int = 3
    #: the CNN baseline the report's CNN family tests against (the grid passes the spec's reference_baseline)
    cnn_reference: str = "nnunet"


@dataclass
class Report:
    """The report as an ordered list of blocks plus the warnings collected while building it."""

    title: str
    blocks: list[Any] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add(self, *blocks: Any) -> None:
        """Append ``blocks`` in order."""
        self.blocks.extend(blocks)

    def tables(self) -> list[Table]:
        """The report's tables, in order."""
        return [b for b in self.blocks if isinstance(b, Table)]


