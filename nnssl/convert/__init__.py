"""Public Swin checkpoints in and out: MONAI SwinUNETR and its model-zoo bundle, the SwinUNETR self-supervised
release, SMIT, VoCo, SuPreM, BrainSegFounder, nnssl.

Every import normalises the source to MONAI SwinUNETR's encoder layout (keys ``swinViT.*``, the layout of
``nnssl.encoders.swin.SwinEncoder``), infers the architecture from the tensors (``infer_encoder_config``), takes the
settings the tensors do not show (the patch-merging order of the source's code) from the source's registry entry
(``nnssl.convert.sources``), and checks the result against a freshly built encoder of that configuration. What
happened to every source tensor, and how much of the encoder the source covers, is kept in a ``ConversionReport``
that the CLI always prints. A conversion fails on any missing encoder tensor or shape conflict, and on any source
tensor without an exact place in the encoder (``unmappable``, ``unexpected``) unless ``allow_inexact``
(``--drop-unmappable``) drops them by name.

An optional axis map (``nnssl.convert.orientation``) re-expresses the encoder for arrays in another orientation than
the source's training arrays (nnU-Net's SimpleITK arrays instead of MONAI's RAS arrays), exactly.

The adapters live one per source (``monai.py``, ``monai_bundle.py``, ``swinunetr_ssl.py``, ``smit.py``,
``voco.py``, ``suprem.py``, ``brainsegfounder.py``; their layouts are documented there and in
documentation/checkpoints.md); ``detect.py`` recognises a source for ``--from auto``; this module validates, orients
and writes whole files.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from nnssl.checkpoint import load_checkpoint, save_checkpoint
from nnssl.convert.detect import detect_source
from nnssl.convert.orientation import (AxisMap, axis_map_from_codes, check_axis_codes, dataset_array_codes,
                                       orient_encoder)
from nnssl.convert.reading import file_sha256, read_checkpoint_file, strip_prefixes, unwrap_state_dict
from nnssl.convert.report import ConversionReport, Coverage
from nnssl.convert.sources import SOURCES, TARGETS, VOXEL_AXES, Source
from nnssl.encoders.layout import check_architecture, infer_encoder_config, reference_encoder_state, settings_line
from nnssl.encoders.merging import (MERGE_ORDER_DESCRIPTIONS, MERGE_ORDERS, chunk_permutation, merge_order_name,
                                    permute_merging_chunks)
from nnssl.encoders.swin import ENCODER_PREFIX, PRESETS, EncoderConfig
from nnssl.errors import ArchitectureMismatchError, ConversionError
from nnssl.io import atomic_write

#: What each source's authors preprocessed with (their code's defaults), kept in the provenance for the user.
SOURCE_PREPROCESSING = {name: s.preprocessing for name, s in SOURCES.items()}
#: Formats ``--from`` accepts: every source, and ``auto``.
SOURCE_CHOICES: tuple[str, ...] = ("auto",) + tuple(SOURCES)


@dataclasses.dataclass(frozen=True)
class Orientation:
    """An axis map to apply at import, given by the target's axes.

    to: the target arrays' axis codes (e.g. "SPL"); like: images of the target dataset, whose headers give nnU-Net's
    array axes; transpose_forward: the nnU-Net plans' ``transpose_forward``; source_axes: the axes the source was
    trained on, overriding the source's documented ones ("RAS", or "voxel" for a pipeline without reorientation).
    """

    to: str | None = None
    like: tuple[str, ...] = ()
    transpose_forward: tuple[int, int, int] = (0, 1, 2)
    source_axes: str | None = None


def resolve_axis_map(request: Orientation, source: Source) -> tuple[AxisMap, str, str]:
    """(map, source axes in words, target axes in words); ValueError naming what is missing."""
    src = request.source_axes or source.axes
    if src is None:
        raise ValueError(f"the array axes {source.name} was trained on are not known: pass --orient-from with the "
                         "codes of its training arrays (e.g. RAS after MONAI's Orientationd, or voxel)")
    if bool(request.to) == bool(request.like):
        raise ValueError("give the target orientation once: --orient-to CODES or --orient-like IMAGE")
    tf = tuple(int(t) for t in request.transpose_forward)
    if src.lower() == VOXEL_AXES:
        if not request.like:
            raise ValueError(f"{source.name} was trained on each file's voxel axes (no reorientation), which no axis "
                             "codes describe: give --orient-like IMAGE (with --plans for transpose_forward)")
        # nnU-Net's array of a file is its voxel axes reversed (GetArrayFromImage), then transpose_forward: a pure
        # permutation whatever the file's orientation.
        dataset_array_codes(request.like, tf)  # the files must share one orientation all the same
        amap = AxisMap(tuple(2 - t for t in tf), (False, False, False))  # type: ignore[arg-type]
        return amap, "voxel axes (i, j, k)", f"nnU-Net arrays (k, j, i) after transpose_forward {list(tf)}"
    src = check_axis_codes(src)
    target = check_axis_codes(request.to) if request.to else dataset_array_codes(request.like, tf)
    how = "" if request.to else f" (nnU-Net arrays of {request.like[0]}{' ...' if len(request.like) > 1 else ''}, " \
                                f"transpose_forward {list(tf)})"
    return axis_map_from_codes(src, target), src, target + how


# ----------------------------------------------------------------------------------------------------------------
# Validation against a freshly built encoder
# ----------------------------------------------------------------------------------------------------------------

def _parameters(key: str, t: Tensor) -> int:
    # The index buffers follow from the window size: counting them would inflate the learned coverage.
    return 0 if key.endswith("relative_position_index") else t.numel()


def finalize_encoder(state: dict[str, Tensor], report: ConversionReport, expected: EncoderConfig | None = None,
                     merge_order: Any = None, window_shift: Any = None,
                     allow_inexact: bool = False) -> dict[str, Tensor]:
    """Infer the architecture, compare with a fresh encoder and return the exact ``swinViT.*`` dict to save.

    ``merge_order`` / ``window_shift`` are the settings the tensors do not show (None: MONAI's defaults). Fails
    (ConversionError, with the report) on missing encoder tensors, shapes that differ, a relative-position index that
    differs from MONAI's; and, unless ``allow_inexact``, on encoder tensors the encoder does not have and on the
    adapters' unmappable tensors (with it they are dropped and listed as inexact). Fills an absent index buffer (it
    is derived from the window size, not learned). With ``expected``, a differing architecture raises
    ArchitectureMismatchError. Fills ``report.config`` and ``report.coverage``.
    """
    try:
        cfg = infer_encoder_config(state)
        if merge_order is not None or window_shift is not None:
            cfg = cfg.replace(merge_order=merge_order if merge_order is not None else cfg.merge_order,
                              window_shift=window_shift)
    except (ConversionError, ValueError) as e:
        raise ConversionError(str(e), report) from None
    report.config = cfg
    if expected is not None:
        try:
            check_architecture(expected.replace(in_channels=cfg.in_channels), cfg)
        except ArchitectureMismatchError as e:
            e.report = report
            raise
    reference = reference_encoder_state(cfg)
    derived_keys = {dst for src, dst, _ in report.converted if src == "(absent)"}
    out: dict[str, Tensor] = {}
    index_problems: list[str] = []
    for key, ref in reference.items():
        if key not in state:
            if key.endswith("relative_position_index"):
                out[key] = ref
                derived_keys.add(key)
                report.converted.append(("(absent)", key, "relative_position_index recomputed from the window size"))
            else:
                report.missing.append(key)
            continue
        value = state[key]
        if tuple(value.shape) != tuple(ref.shape):
            report.shape_conflicts.append(f"{key}: checkpoint {tuple(value.shape)} vs encoder {tuple(ref.shape)}")
            continue
        if key.endswith("relative_position_index"):
            if not torch.equal(value.to(ref.dtype), ref):
                index_problems.append(f"{key}: the relative-position index differs from MONAI's (another window "
                                      "indexing convention), so the bias table cannot be used as is")
            out[key] = ref
            continue
        if value.dtype != ref.dtype:
            report.converted.append((key, key, f"cast {value.dtype} -> {ref.dtype}"))
        out[key] = value.detach().to(ref.dtype).clone()
    report.unexpected = sorted(set(state) - set(reference))
    _fill_coverage(report, reference, out, derived_keys)
    if report.missing:
        raise ConversionError(
            f"{len(report.missing)} encoder tensor(s) missing from the checkpoint, e.g. {report.missing[:5]}: refusing "
            "a partial encoder. Check that the file is complete and that --from names its format", report)
    if report.shape_conflicts or index_problems:
        raise ConversionError("the checkpoint does not fit the encoder its tensors describe: "
                              + "; ".join(report.shape_conflicts[:5] + index_problems[:5]), report)
    inexact = report.unmappable + [(k, f"encoder tensor that nnssl's encoder ({settings_line(cfg)}) does not have")
                                   for k in report.unexpected]
    if inexact and not allow_inexact:
        by_reason: dict[str, list[str]] = {}
        for key, why in inexact:
            by_reason.setdefault(why, []).append(key)
        listing = "; ".join(f"{', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}: {why}"
                            for why, keys in by_reason.items())
        raise ConversionError(
            f"{len(inexact)} source tensor(s) have no exact place in nnssl's encoder: {listing}. Importing without them "
            "changes what the encoder computes; pass --drop-unmappable (allow_inexact=True) to drop them anyway "
            "(listed in the report and in the checkpoint's provenance)", report)
    for key, why in inexact:
        report.dropped.append((key, "INEXACT: " + why))
        report.inexact.append(key)
    return out


def _fill_coverage(report: ConversionReport, reference: dict[str, Tensor], out: dict[str, Tensor],
                   derived_keys: set[str]) -> None:
    cov = report.coverage
    cov.encoder_tensors = len(reference)
    cov.encoder_parameters = sum(_parameters(k, t) for k, t in reference.items())
    for key in out:
        if key in derived_keys:
            cov.derived_tensors += 1
            cov.derived_parameters += _parameters(key, reference[key])
        else:
            cov.loaded_tensors += 1
            cov.loaded_parameters += _parameters(key, reference[key])


# ----------------------------------------------------------------------------------------------------------------
# Whole-file conversions
# ----------------------------------------------------------------------------------------------------------------

def _select_prefix(state: dict[str, Tensor], prefix: str, report: ConversionReport) -> dict[str, Tensor]:
    """Keep the tensors under ``prefix`` (after runtime prefixes), without it; the rest is dropped by name."""
    inner: dict[str, Tensor] = {}
    for key, value in strip_prefixes(state).items():
        if key.startswith(prefix):
            inner[key[len(prefix):]] = value
        else:
            report.dropped.append((key, f"outside --prefix {prefix}"))
    if not inner:
        raise ConversionError(f"no tensor key starts with --prefix {prefix!r} (after removing module./_orig_mod.)",
                              report)
    return inner


def _merge_order_for(source: Source, merging: str | None, report: ConversionReport) -> str:
    if merging is not None:
        if merging not in MERGE_ORDERS:
            raise ValueError(f"unknown --merging {merging!r}; choose one of {', '.join(MERGE_ORDERS)}")
        report.computation_source = f"--merging {merging}: {MERGE_ORDER_DESCRIPTIONS[merging]}"
        return merging
    if source.merge_order is None:
        raise ConversionError(
            f"a {source.name} file does not record which patch-merging order trained it, and the tensors cannot "
            "show it: MONAI's SwinUNETR concatenated the 2x2x2 sub-grids in another order before MONAI 1.5.0. Pass "
            "--merging monai-legacy for weights trained with MONAI 0.9-1.4 (every public SwinUNETR release before "
            "2025) or --merging monai for MONAI >= 1.5", report)
    report.computation_source = f"{source.name}: {source.merge_order_evidence}"
    return source.merge_order


def load_source(path: str | os.PathLike, source: str, allow_inexact: bool = False,
                expected: EncoderConfig | None = None, merging: str | None = None,
                orientation: Orientation | None = None,
                prefix: str | None = None) -> tuple[dict[str, Tensor], ConversionReport, dict | None]:
    """Read ``path`` in format ``source`` (or ``"auto"``) -> (validated ``swinViT.*`` tensors, report, nnssl
    checkpoint or None). ``report.config`` holds the encoder's configuration, orientation included."""
    if source not in SOURCE_CHOICES:
        raise ValueError(f"unknown source format {source!r}; choose one of {', '.join(SOURCE_CHOICES)}")
    report = ConversionReport(source_format=source, source_file=str(path))
    raw = None
    if source == "auto":
        raw = read_checkpoint_file(path)
        try:
            source, report.detected = detect_source(raw, path)
        except ConversionError as e:
            e.report = report
            raise
        report.source_format = source
    spec = SOURCES[source]
    ckpt = None
    if source == "nnssl":
        if prefix:
            raise ValueError("--prefix selects tensors of a public file; an nnssl checkpoint holds one encoder")
        ckpt = load_checkpoint(path)
        stored = EncoderConfig.from_dict(ckpt["encoder_config"])
        state = dict(ckpt["encoder"])
        report.coverage.source_tensors = len(state)
        report.coverage.source_parameters = sum(t.numel() for t in state.values())
        report.matched.extend(k for k in state if k.startswith(ENCODER_PREFIX))
        for k in state:
            if not k.startswith(ENCODER_PREFIX):
                report.dropped.append((k, "not a swinViT.* encoder tensor"))
        state = {k: v for k, v in state.items() if k.startswith(ENCODER_PREFIX)}
        if merging is not None:
            raise ValueError("--merging names the order a public source was trained with; an nnssl checkpoint "
                             "records its own (encoder_config.merge_order): leave it out")
        report.computation_source = "the checkpoint's encoder_config"
        encoder = finalize_encoder(state, report, expected, stored.merge_order, stored.window_shift, allow_inexact)
        # The stored config must describe the stored tensors: a disagreement would build the wrong network later.
        try:
            check_architecture(stored, report.config, what="the checkpoint's own encoder_config")
        except ArchitectureMismatchError as e:
            e.report = report
            raise
        assert report.config is not None
        report.config = report.config.replace(drop_path_rate=stored.drop_path_rate,
                                              use_checkpoint=stored.use_checkpoint)
    else:
        raw = read_checkpoint_file(path) if raw is None else raw
        state, _ = unwrap_state_dict(raw)
        report.coverage.source_tensors = len(state)
        report.coverage.source_parameters = sum(t.numel() for t in state.values())
        if prefix:
            state = _select_prefix(state, prefix, report)
        assert spec.read is not None
        try:
            state = spec.read(state, report)  # first: a wrong --from gets the adapter's hint, not a --merging question
            order = _merge_order_for(spec, merging, report)
            encoder = finalize_encoder(state, report, expected, MERGE_ORDERS[order], None, allow_inexact)
        except ConversionError as e:
            hint = _other_source_hint(raw, path, source)
            if hint:
                raise type(e)(f"{e}. {hint}", e.report) from None
            raise
    if orientation is not None:
        try:
            amap, src_axes, dst_axes = resolve_axis_map(orientation, spec)
        except ValueError as e:
            raise ConversionError(str(e), report) from None
        assert report.config is not None
        encoder, report.config, report.orientation_notes = orient_encoder(encoder, report.config, amap)
        report.orientation = {"from": src_axes, "to": dst_axes, **amap.to_dict()}
        if not amap.is_identity:
            report.computation_source += "; then mapped by the orientation below"
    return encoder, report, ckpt


def _other_source_hint(raw: Any, path: str | os.PathLike, source: str) -> str | None:
    """When a conversion with ``--from source`` failed: the source the file's layout points at, if another one."""
    try:
        detected, evidence = detect_source(raw, path)
    except ConversionError:
        state, _ = unwrap_state_dict(raw)
        if any(k.startswith(ENCODER_PREFIX) for k in strip_prefixes(state)):
            return ("The file is a plain SwinUNETR state dict ('swinViT.*' keys): use --from monai-swinunetr with "
                    "--merging monai or monai-legacy (or monai-bundle, voco, suprem if it came from them; --from auto "
                    "lists them)")
        return None
    if detected == source:
        return None
    return f"The file looks like a {detected} checkpoint ({evidence}): use --from {detected}"


def imported_payload(encoder: dict[str, Tensor], report: ConversionReport, in_path: str | os.PathLike,
                     method: str | None = None) -> dict[str, Any]:
    """nnssl checkpoint payload (see nnssl.checkpoint) for an imported public encoder."""
    assert report.config is not None
    in_path = Path(in_path).resolve()
    return {
        "method": method or f"imported-{report.source_format}",
        "encoder_config": report.config.to_dict(),
        "encoder": encoder,
        "task_state": {},
        "optimizer": None,
        "scaler": None,
        "step": 0,
        "config": {"imported": True, "source_format": report.source_format},
        "provenance": {
            # Public releases do not record nnU-Net plans or normalisation; the trainer warns about that.
            "datasets": [], "plans": None, "configuration": None, "spacing": None, "normalization": None,
            "imported_from": {
                "file": str(in_path),
                "sha256": file_sha256(in_path),
                "format": report.source_format,
                "source_preprocessing": SOURCE_PREPROCESSING.get(report.source_format, "unknown"),
                "conversion": report.to_dict(),
            },
        },
        "rng": {},
    }


def encoder_for_order(encoder: dict[str, Tensor], cfg: EncoderConfig, order: str, target: str) -> dict[str, Tensor]:
    """The encoder's tensors with the patch-merging chunks in the named ``order`` (for code that runs that order).

    ConversionError when no chunk permutation gives that order (the LayerNorm would see other inputs), or when the
    encoder needs a window shift other than MONAI's (no exported layout can carry it).
    """
    check_exportable_shift(cfg, target)
    perm = chunk_permutation(cfg.merge_order, MERGE_ORDERS[order])
    if perm is None:
        raise ConversionError(
            f"the encoder's patch merging ({cfg.to_dict()['merge_order']}) is not a rearrangement of the "
            f"'{order}' order that {target}'s code runs ({MERGE_ORDER_DESCRIPTIONS[order]}): the merging LayerNorm "
            "would normalise other sub-grids, so the export cannot compute the same function. "
            + ("Pass --merging monai or monai-legacy for the MONAI that will load the file" if target == "monai"
               else ""), None)
    if perm == list(range(8)):
        return dict(encoder)
    return {k: permute_merging_chunks(v, perm) if k.endswith(("downsample.reduction.weight", "downsample.norm.weight",
                                                              "downsample.norm.bias")) else v
            for k, v in encoder.items()}


def check_exportable_shift(cfg: EncoderConfig, target: str) -> None:
    """ConversionError when the encoder needs a window shift no exported layout carries (MONAI shifts by w // 2)."""
    if cfg.window_shift is not None:
        raise ConversionError(
            f"the encoder uses window_shift {list(cfg.window_shift)} (an axis map flipped an axis of odd window "
            f"size): {target}'s code always shifts by window_size // 2, so it would compute another function. Export "
            "the encoder before orienting it")


def _export_order(to: str, cfg: EncoderConfig, merging: str | None) -> str:
    """The merge order the target's code runs: fixed by the publisher's pinned MONAI, or the MONAI that loads it."""
    fixed = SOURCES[to].runtime_merge_order if to in SOURCES else None
    if fixed is not None:
        if merging is not None and merging != fixed:
            raise ValueError(f"--merging {merging}: {to}'s code runs the '{fixed}' order, whatever is asked")
        return fixed
    if merging is not None:
        return merging
    own = merge_order_name(cfg.merge_order)
    if own is None:
        for name, order in MERGE_ORDERS.items():
            if chunk_permutation(cfg.merge_order, order) is not None:
                return name
        raise ConversionError(f"the encoder's patch-merging order {cfg.to_dict()['merge_order']} is neither MONAI's "
                              "nor MONAI's pre-1.5 one: no MONAI SwinUNETR computes it")
    return own


def export_note(to: str, order: str) -> str:
    """Which code loads an export exactly, in words."""
    if to in ("monai", "monai-bundle"):
        versions = "MONAI >= 1.5.0" if order == "monai" else "MONAI 0.9-1.4 (MONAI >= 1.5 changed the order)"
        return f"patch merging '{order}': computes the same function in SwinUNETR of {versions}"
    return f"patch merging '{order}': the order {to}'s pinned code runs"


def convert_file(in_path: str | os.PathLike, out_path: str | os.PathLike, source: str, to: str = "nnssl",
                 method: str | None = None, expected: EncoderConfig | None = None,
                 allow_inexact: bool = False, merging: str | None = None, target_merging: str | None = None,
                 orientation: Orientation | None = None, prefix: str | None = None) -> ConversionReport:
    """Convert ``in_path`` (format ``source`` or ``"auto"``) to an nnssl checkpoint (``to="nnssl"``), a MONAI state
    dict (``to="monai"``) or a source's own layout (``to`` = a source with a writer).

    ``merging``: the patch-merging order the source's training code used (needed for a plain MONAI SwinUNETR state
    dict; overrides a source's documented order). ``target_merging``: the order of the MONAI that will load a
    ``monai`` / ``monai-bundle`` export (default: the encoder's own). Raises ConversionError (``.report`` filled) on
    anything that cannot be converted exactly.
    """
    if to not in TARGETS:
        raise ValueError(f"unknown target format {to!r}; choose one of {', '.join(TARGETS)}")
    if Path(in_path).resolve() == Path(out_path).resolve():
        raise ValueError(f"input and output are the same file ({in_path}): choose another output path")
    if target_merging is not None and to not in ("monai", "monai-bundle"):
        raise ValueError(f"--target-merging names the MONAI that loads a monai / monai-bundle export; {to} files are "
                         "read by code with its own fixed order")
    encoder, report, ckpt = load_source(in_path, source, allow_inexact=allow_inexact, expected=expected,
                                        merging=merging, orientation=orientation, prefix=prefix)
    assert report.config is not None
    if to == "nnssl":
        if ckpt is not None:  # nnssl -> nnssl: keep everything, store the validated (maybe oriented) encoder
            payload = {k: v for k, v in ckpt.items() if k not in ("format", "format_version")}
            payload["encoder"] = encoder
            payload["encoder_config"] = report.config.to_dict()
            if report.orientation is not None:
                provenance = dict(payload.get("provenance") or {})
                provenance["orientation"] = {**report.orientation, "notes": report.orientation_notes}
                payload["provenance"] = provenance
            if method:
                payload["method"] = method
            save_checkpoint(out_path, payload)
        else:
            save_checkpoint(out_path, imported_payload(encoder, report, in_path, method))
        return report
    check_exportable_shift(report.config, to)
    order = _export_order(to, report.config, target_merging)
    tensors = encoder_for_order(encoder, report.config, order, to)
    writer = SOURCES["monai-swinunetr" if to == "monai" else to].write
    assert writer is not None
    payload = writer(tensors)
    atomic_write(out_path, lambda f: torch.save(payload, f))
    report.export_note = export_note(to, order)
    return report


def preset_config(name: str) -> EncoderConfig:
    """An encoder preset by name, with an error listing the presets."""
    if name not in PRESETS:
        raise ValueError(f"unknown encoder preset {name!r}; choose one of {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name])


__all__ = ["ConversionReport", "Coverage", "Orientation", "SOURCES", "SOURCE_CHOICES", "SOURCE_PREPROCESSING",
           "TARGETS", "convert_file", "encoder_for_order", "export_note", "finalize_encoder", "imported_payload",
           "load_source", "preset_config", "resolve_axis_map"]
