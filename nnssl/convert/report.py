"""The load report of a conversion: what happened to every source tensor, and how much of the encoder it covers."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nnssl.encoders.swin import EncoderConfig


@dataclass
class Coverage:
    """How much of the encoder the source filled.

    Counts are tensors; parameters count elements of learned tensors (the relative-position index buffers, which
    follow from the window size, are left out). ``derived`` tensors are exact consequences of the source's code
    (a zero qkv bias for ``qkv_bias=False``, a recomputed index) rather than values read from the file.
    """

    encoder_tensors: int = 0
    encoder_parameters: int = 0
    loaded_tensors: int = 0
    loaded_parameters: int = 0
    derived_tensors: int = 0
    derived_parameters: int = 0
    source_tensors: int = 0
    source_parameters: int = 0

    @property
    def loaded_fraction(self) -> float:
        """Share of the encoder's parameters read from the source (0 for an empty encoder)."""
        return self.loaded_parameters / self.encoder_parameters if self.encoder_parameters else 0.0

    @property
    def full(self) -> bool:
        """Every encoder tensor came from the source or follows from its code exactly."""
        return self.encoder_tensors > 0 and self.loaded_tensors + self.derived_tensors == self.encoder_tensors


@dataclass
class ConversionReport:
    """What a conversion did with every tensor.

    matched: target keys copied unchanged (only the wrapper/prefix of the key differed);
    converted: (source key, target key, how) for renamed or transformed tensors;
    dropped: (source key, why) for tensors that are not part of the encoder (decoders, pretraining heads);
    missing: encoder tensors the source lacks (any entry makes the conversion fail);
    unexpected: encoder tensors of the source that nnssl's encoder does not have;
    shape_conflicts: 'key: checkpoint (...) vs encoder (...)' (any entry makes the conversion fail);
    unmappable: (source key, why) for source tensors that change the source's function but have no exact place in
    nnssl's encoder (SMIT's patch-embedding norm, unrecognised tensors): the conversion fails on them unless
    ``allow_inexact`` (``--drop-unmappable``) drops them, which lists them in ``inexact``.
    """

    source_format: str
    source_file: str = ""
    matched: list[str] = field(default_factory=list)
    converted: list[tuple[str, str, str]] = field(default_factory=list)
    dropped: list[tuple[str, str]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_conflicts: list[str] = field(default_factory=list)
    unmappable: list[tuple[str, str]] = field(default_factory=list)
    inexact: list[str] = field(default_factory=list)
    config: EncoderConfig | None = None
    coverage: Coverage = field(default_factory=Coverage)
    #: Where the settings that the tensors do not show (merge order) came from, in words.
    computation_source: str = ""
    #: The axis map applied ({"from": codes, "to": codes, "perm": [...], "flips": [...]}) or None.
    orientation: dict[str, Any] | None = None
    orientation_notes: list[str] = field(default_factory=list)
    #: How the source was recognised with --from auto (None when --from named it).
    detected: str | None = None
    #: For exports to another layout: which code loads the file exactly.
    export_note: str = ""

    def summary(self, verbose: bool = False) -> str:
        """Human-readable load report; groups by reason and shows three examples per group unless ``verbose``."""
        lines = [f"load report ({self.source_format}{': ' + self.source_file if self.source_file else ''})"]
        if self.detected:
            lines.append(f"  recognised as {self.source_format}: {self.detected}")
        if self.config is not None:
            c = self.config
            lines.append(f"  architecture (from the tensors): feature_size={c.feature_size} depths={list(c.depths)} "
                         f"num_heads={list(c.num_heads)} window_size={c.window_size} patch_size={c.patch_size} "
                         f"in_channels={c.in_channels} use_v2={c.use_v2}")
            d = c.to_dict()
            lines.append(f"  computation (not in the tensors): merge_order={d['merge_order']} "
                         f"window_shift={list(c.shifts())}"
                         + (f" ({self.computation_source})" if self.computation_source else ""))
        if self.orientation is None:
            lines.append("  orientation: none applied (the encoder keeps the source's array axes)")
        else:
            o = self.orientation
            lines.append(f"  orientation: {o['from']} -> {o['to']} applied")
            lines += [f"      {note}" for note in self.orientation_notes]
        cov = self.coverage
        if cov.encoder_tensors:
            derived = f", {cov.derived_tensors} derived exactly ({cov.derived_parameters:,} parameters)" \
                if cov.derived_tensors else ""
            lines.append(f"  coverage: {cov.loaded_tensors}/{cov.encoder_tensors} encoder tensors loaded from the "
                         f"source, {100 * cov.loaded_fraction:.2f}% of {cov.encoder_parameters:,} parameters{derived}"
                         f" -> {'FULL' if cov.full and not self.inexact else 'INCOMPLETE'}")
        if cov.source_tensors and cov.encoder_tensors:
            lines.append(f"  source: {cov.source_tensors} tensors ({cov.source_parameters:,} parameters): "
                         f"{cov.loaded_tensors} into the encoder, {len(self.dropped)} dropped as not part of it")
        lines.append(f"  matched:   {len(self.matched)} tensor(s) copied unchanged")
        lines.append(f"  converted: {len(self.converted)} tensor(s)")
        lines += _grouped([(how, f"{src} -> {dst}") for src, dst, how in self.converted], verbose)
        lines.append(f"  dropped:   {len(self.dropped)} tensor(s)")
        lines += _grouped([(why, src) for src, why in self.dropped], verbose)
        lines.append(f"  missing:   {len(self.missing)} encoder tensor(s)")
        lines += _listed(self.missing, verbose)
        lines.append(f"  unexpected: {len(self.unexpected)} encoder tensor(s) nnssl's encoder does not have")
        lines += _listed(self.unexpected, verbose)
        lines.append(f"  shape conflicts: {len(self.shape_conflicts)}")
        lines += _listed(self.shape_conflicts, verbose)
        lines.append(f"  unmappable: {len(self.unmappable)} tensor(s) with no exact place in nnssl's encoder")
        lines += _grouped([(why, src) for src, why in self.unmappable], verbose)
        if self.export_note:
            lines.append(f"  export: {self.export_note}")
        if self.inexact:
            lines.append(f"  WARNING inexact: {len(self.inexact)} tensor(s) were dropped by --drop-unmappable "
                         f"({', '.join(self.inexact[:10])}{', ...' if len(self.inexact) > 10 else ''}); the encoder "
                         "computes a different function than the source's")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data version for the checkpoint's provenance (tensor names only)."""
        cov = self.coverage
        return {
            "source_format": self.source_format,
            "detected": self.detected,
            "matched": len(self.matched),
            "converted": [list(c) for c in self.converted],
            "dropped": [list(d) for d in self.dropped],
            "missing": list(self.missing),
            "unexpected": list(self.unexpected),
            "shape_conflicts": list(self.shape_conflicts),
            "unmappable": [list(u) for u in self.unmappable],
            "inexact": list(self.inexact),
            "coverage": {"encoder_tensors": cov.encoder_tensors, "encoder_parameters": cov.encoder_parameters,
                         "loaded_tensors": cov.loaded_tensors, "loaded_parameters": cov.loaded_parameters,
                         "derived_tensors": cov.derived_tensors, "derived_parameters": cov.derived_parameters,
                         "source_tensors": cov.source_tensors, "source_parameters": cov.source_parameters},
            "computation_source": self.computation_source,
            "orientation": self.orientation,
            "orientation_notes": list(self.orientation_notes),
        }


def _listed(items: list[str], verbose: bool) -> list[str]:
    lines = [f"      {k}" for k in (items if verbose else items[:10])]
    if len(items) > 10 and not verbose:
        lines.append(f"      ... and {len(items) - 10} more")
    return lines


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


__all__ = ["ConversionReport", "Coverage"]
