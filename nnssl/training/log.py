"""Per-step JSON-lines log and loss-curve plot of a pretraining run (written by rank 0 only)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nnssl.io import atomic_write


class LogError(ValueError):
    """A log.jsonl that cannot be read; the message names the line and what to do."""


def _parse(path: Path, text: str) -> tuple[list[dict[str, Any]], str | None]:
    """The records of a log, and a note when a partial last line (a crash during an append) was left out."""
    lines = text.splitlines()
    records, note = [], None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            if number == len(lines):
                note = (f"dropped a partial last line of {path} (a crash during an append): "
                        f"{line[:60]!r}{'...' if len(line) > 60 else ''}")
                break
            raise LogError(f"{path}, line {number}, is not a JSON record ({e}): repair or delete that line") from None
        records.append(record)
    return records, note


class TrainingLog:
    """Appends one JSON object per step to ``log.jsonl``; ``plot()`` draws ``loss.png`` (total and parts).

    On resume, records of steps at or after the resumed step are dropped (they were not checkpointed), and so is a
    partial last line left by a crash during an append (``note`` says so).
    """

    def __init__(self, out_dir: Path, enabled: bool = True, start_step: int = 0) -> None:
        self.path = Path(out_dir) / "log.jsonl"
        self.enabled = enabled
        self.note: str | None = None
        if enabled and self.path.is_file():
            records, self.note = _parse(self.path, self.path.read_text())
            kept = [json.dumps(r) for r in records if r.get("step", 0) < start_step]
            atomic_write(self.path, lambda f: f.write("".join(line + "\n" for line in kept)), binary=False)

    def append(self, record: dict[str, Any]) -> None:
        """Append ``record`` as one JSON line (nothing when disabled)."""
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def records(self) -> list[dict[str, Any]]:
        """The records of ``log.jsonl`` (without a partial last line); [] when there is no log."""
        if not self.path.is_file():
            return []
        return _parse(self.path, self.path.read_text())[0]

    def plot(self) -> Path | None:
        """Draw every ``loss*`` key over the steps into ``loss.png`` beside the log and return its path; None when
        disabled or the log is empty."""
        if not self.enabled:
            return None
        records = self.records()
        if not records:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        keys = sorted({k for r in records for k in r if k.startswith("loss")}, key=lambda k: (k != "loss", k))
        fig, ax = plt.subplots(figsize=(7, 4))
        for key in keys:
            pts = [(r["step"], r[key]) for r in records if key in r]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=key, linewidth=1.5 if key == "loss" else 1.0)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title("pretraining loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        out = self.path.with_name("loss.png")
        try:
            atomic_write(out, lambda f: fig.savefig(f, format="png", dpi=100))
        finally:
            plt.close(fig)
        return out
