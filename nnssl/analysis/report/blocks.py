"""The report as data: headings, paragraphs, tables and figures, rendered by ``render`` to Markdown and HTML."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnssl.nnunet.naming import SCRATCH


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Para:
    text: str
    note: bool = False  # rendered as a highlighted note (missing data, caveats)


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Figure:
    path: Path  # absolute path of the PNG
    caption: str


@dataclass
class ReportOptions:
    baseline: str = SCRATCH
    n_boot: int = 10000
    seed: int = 0
    level: float = 0.95
    digits: int = 3
    #: the CNN baseline the report's CNN family tests against (the grid passes the spec's reference_baseline)
    cnn_reference: str = "nnunet"


@dataclass
class Report:
    title: str
    blocks: list[Any] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add(self, *blocks: Any) -> None:
        self.blocks.extend(blocks)

    def tables(self) -> list[Table]:
        return [b for b in self.blocks if isinstance(b, Table)]


