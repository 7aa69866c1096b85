"""What a conversion did with every tensor: the load-coverage report every import prints."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nnssl.encoders.swin import EncoderConfig


@dataclass
class ConversionReport:
    """What a conversion did with every tensor.

    matched: target keys copied unchanged (only the wrapper/prefix of the key differed);
    converted: (source key, target key, how) for renamed or transformed tensors;
    dropped: (source key, why) for tensors that are not part of the encoder;
    missing: encoder tensors the source lacks (any entry makes the conversion fail);
    inexact: source tensors dropped although they change the encoder's function (only with allow_inexact).
    """

    source_format: str
    source_file: str = ""
    matched: list[str] = field(default_factory=list)
    converted: list[tuple[str, str, str]] = field(default_factory=list)
    dropped: list[tuple[str, str]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    inexact: list[str] = field(default_factory=list)
    config: EncoderConfig | None = None

    def summary(self, verbose: bool = False) -> str:
        """Human-readable load report; groups by reason and shows three examples per group unless ``verbose``."""
        lines = [f"load report ({self.source_format}{': ' + self.source_file if self.source_file else ''})"]
        if self.config is not None:
            c = self.config
            lines.append(f"  architecture (from the tensors): feature_size={c.feature_size} depths={list(c.depths)} "
                         f"num_heads={list(c.num_heads)} window_size={c.window_size} patch_size={c.patch_size} "
                         f"in_channels={c.in_channels} use_v2={c.use_v2}")
        lines.append(f"  matched:   {len(self.matched)} tensor(s) copied unchanged")
        lines.append(f"  converted: {len(self.converted)} tensor(s)")
        lines += _grouped([(how, f"{src} -> {dst}") for src, dst, how in self.converted], verbose)
        lines.append(f"  dropped:   {len(self.dropped)} tensor(s)")
        lines += _grouped([(why, src) for src, why in self.dropped], verbose)
        lines.append(f"  missing:   {len(self.missing)} encoder tensor(s)")
        lines += [f"      {k}" for k in (self.missing if verbose else self.missing[:10])]
        if len(self.missing) > 10 and not verbose:
            lines.append(f"      ... and {len(self.missing) - 10} more")
        if self.inexact:
            lines.append(f"  WARNING inexact: {len(self.inexact)} tensor(s) with no counterpart in MONAI's Swin were "
                         f"dropped ({', '.join(self.inexact)}); the encoder computes a different function than the "
                         "source's")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data version for the checkpoint's provenance (tensor names only)."""
        return {
            "source_format": self.source_format,
            "matched": len(self.matched),
            "converted": [list(c) for c in self.converted],
            "dropped": [list(d) for d in self.dropped],
            "missing": list(self.missing),
            "inexact": list(self.inexact),
        }


def _grouped(items: list[tuple[str, str]], verbose: bool) -> list[str]:
    groups: dict[str, list[str]] = {}
    for reason, name in items:
        groups.setdefault(reason, []).append(name)
    lines = []
    for reason, names in groups.items():
        shown = names if verbose else names[:3]
        more = "" if verbose or len(names) <= 3 else f", ... (+{len(names) - 3})"
        lines.append(f"    [{len(names)}] {reason}: {', '.join(shown)}{more}")
    return lines


__all__ = ["ConversionReport"]
