"""Loading a pretraining checkpoint's encoder into the fine-tuning network (SwinSSLTrainer).

The checkpoint is attached through the plans (``nnssl_attach`` writes ``nnUNetSwinPlans_<name>`` with
``"nnssl_pretrained": {"name", "method", "sha256", "file"}``), following nnU-Net's own pattern of per-experiment plans.
Plans hold no absolute path (they are copied into model folders and exported zips, and moved between datasets), so
the file is found at training time by :func:`resolve_pretrained_checkpoint`:

1. ``file`` as a path: relative to the current directory (the path as given to ``nnssl_attach`` when that was
   relative);
2. ``<nnssl results>/<file>``, the nnssl results folder being ``$nnssl_results``, else
   ``$nnUNet_results/nnssl_pretrain`` (where ``nnssl_pretrain`` writes; ``file`` is relative to it when the checkpoint
   was attached from there);
3. any file of the same name anywhere under the nnssl results folder (a run folder that was moved or renamed).

A candidate is used only if its sha256 is the one in the plans: a different file at the same place (a pretraining run
repeated since) is reported, never loaded. Loading then uses the checkpoint contract:
``nnssl.checkpoint.load_checkpoint`` + ``load_encoder_into`` (which fails on any missing or mismatched encoder tensor
and adapts the patch embedding to another number of input channels).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from torch import nn

from nnssl.io import file_sha256
from nnssl.nnunet.environment import nnssl_results_root
from nnssl.nnunet.naming import SWIN_PLANS, attached_plans_name
from nnssl.nnunet.plans import (ENCODER_KEY, LEGACY_PRETRAINED_PATH, PRETRAINED_FILE, PRETRAINED_KEY,
                                PRETRAINED_METHOD, PRETRAINED_SHA256, make_pretrained_entry)


class NoCheckpointAttachedError(ValueError):
    """SwinSSLTrainer was started with plans that name no pretraining checkpoint."""


class PretrainedCheckpointNotFoundError(FileNotFoundError):
    """No file with the attached checkpoint's sha256 was found where the search looks."""


def attach_hint(dataset: str, base_plans: str = SWIN_PLANS) -> str:
    """How to attach a checkpoint to the Swin plans ``base_plans`` and train with the result."""
    return (f"attach one with: nnssl_attach -d {dataset} --checkpoint /path/to/checkpoint.pt --name NAME "
            f"-p {base_plans}, then train with -p {attached_plans_name(base_plans, 'NAME')} (or use "
            f"SwinScratchTrainer for training from scratch)")


def describe_checkpoint(path: str | os.PathLike, name: str, method: str) -> tuple[dict[str, str], str | None]:
    """The plans entry that identifies the checkpoint at ``path``, and a note when ``file`` can only be its name.

    ``file`` is the path relative to the nnssl results folder when the checkpoint lies in it, else the path as given
    when that is relative, else only the file name (and the note says where training will look for it).
    """
    given = Path(path)
    resolved = given.resolve()
    root = nnssl_results_root()
    note = None
    if root is not None and resolved.is_relative_to(root.resolve()):
        file = resolved.relative_to(root.resolve()).as_posix()
    elif not given.is_absolute():
        file = given.as_posix()
    else:
        file = resolved.name
        where = root if root is not None else "$nnssl_results, unset here"
        note = (f"{resolved} lies outside the nnssl results folder ({where}); plans hold no absolute paths, so they "
                f"store its name and sha256 only, and training looks for it in the current directory and anywhere "
                f"under the nnssl results folder: copy it there (on every machine that fine-tunes)")
    return make_pretrained_entry(name, method, file_sha256(resolved), file), note


def search_locations(entry: dict[str, Any]) -> list[Path]:
    """Where :func:`resolve_pretrained_checkpoint` looks, in order (module docstring); existing files only for the
    recursive search."""
    file = Path(str(entry.get(PRETRAINED_FILE) or ""))
    locations = [file] if str(file) not in ("", ".") else []
    root = nnssl_results_root()
    if root is not None and locations:
        locations.append(root / file)
        if root.is_dir():
            locations.extend(sorted(p for p in root.rglob(file.name) if p.is_file()))
    unique: list[Path] = []
    for p in locations:
        if p.absolute() not in [u.absolute() for u in unique]:
            unique.append(p)
    return unique


def attached_entry(configuration: dict, dataset: str, plans_name: str) -> dict[str, Any]:
    """The plans' checkpoint entry; NoCheckpointAttachedError (how to attach) when there is none, ValueError for
    entries of earlier nnssl versions (an absolute path instead of a hash)."""
    entry = configuration.get(PRETRAINED_KEY)
    if not entry:
        raise NoCheckpointAttachedError(
            f"plans '{plans_name}' name no pretraining checkpoint (no \"{PRETRAINED_KEY}\"): SwinSSLTrainer "
            f"fine-tunes a pretrained encoder; "
            + attach_hint(dataset, SWIN_PLANS if plans_name == "?" else plans_name))
    if not entry.get(PRETRAINED_SHA256):
        legacy = f" (it names {entry[LEGACY_PRETRAINED_PATH]})" if entry.get(LEGACY_PRETRAINED_PATH) else ""
        raise ValueError(
            f"plans '{plans_name}' identify their checkpoint the way earlier nnssl versions did, by absolute path"
            f"{legacy}, not by content hash: re-attach it with nnssl_attach ... --overwrite")
    return entry


def resolve_pretrained_checkpoint(configuration: dict, dataset: str, plans_name: str) -> Path:
    """The checkpoint file the plans attach (search in the module docstring), verified by its sha256.

    Raises PretrainedCheckpointNotFoundError naming the hash, every place searched and files that were found there
    with another hash.
    """
    entry = attached_entry(configuration, dataset, plans_name)
    wanted = entry[PRETRAINED_SHA256]
    others = []
    locations = search_locations(entry)
    for candidate in locations:
        if not candidate.is_file():
            continue
        digest = file_sha256(candidate)
        if digest == wanted:
            return candidate
        others.append(f"{candidate} (sha256 {digest[:12]}...)")
    root = nnssl_results_root()
    searched = ", ".join(str(p) for p in locations) or "nowhere (the entry has no file)"
    found = f" Files of that name with other contents: {'; '.join(others)}." if others else ""
    raise PretrainedCheckpointNotFoundError(
        f"the pretraining checkpoint attached in plans '{plans_name}' (method {entry.get(PRETRAINED_METHOD)}, file "
        f"{entry.get(PRETRAINED_FILE)!r}, sha256 {wanted}) was not found. Searched: {searched}.{found} Copy that "
        f"checkpoint into the nnssl results folder ({root if root is not None else 'set nnssl_results'}) or run "
        f"from the folder its relative path starts in; or attach another checkpoint with nnssl_attach -d {dataset} "
        f"--checkpoint CKPT --name NAME --overwrite")


def normalization_differences(ckpt: dict[str, Any], configuration: dict) -> list[str]:
    """Differences between the pretraining data's intensity normalisation (checkpoint provenance) and the target's."""
    prov = (ckpt.get("provenance") or {}).get("normalization") or {}
    src = prov.get("schemes")
    dst = configuration.get("normalization_schemes")
    if src is None:
        return ["the checkpoint records no normalisation scheme (provenance.normalization.schemes)"]
    if list(src) != list(dst or []):
        # multi-channel targets whose channels all share the single pretraining scheme are fine
        if not (len(set(src)) == 1 and dst and set(dst) == set(src)):
            return [f"pretraining normalisation {list(src)} vs target {list(dst or [])}"]
    return []


def pretraining_mismatches(ckpt: dict[str, Any], configuration: dict) -> tuple[list[dict[str, Any]], list[str]]:
    """What differs between the pretraining data and the fine-tuning configuration and changes what a fine-tuning
    number means: (mismatches ``{"what", "pretraining", "fine_tuning"}``, what the checkpoint does not record).

    Compared: the intensity normalisation schemes, the voxel spacing of every pretraining dataset (a difference above
    1% on an axis) and the pretraining crop against the fine-tuning patch size."""
    found: list[dict[str, Any]] = []
    unrecorded: list[str] = []
    prov = ckpt.get("provenance") or {}
    schemes = (prov.get("normalization") or {}).get("schemes")
    if schemes is None:
        unrecorded.append("normalisation")
    elif normalization_differences(ckpt, configuration):
        found.append({"what": "normalisation", "pretraining": list(schemes),
                      "fine_tuning": list(configuration.get("normalization_schemes") or [])})
    target = [float(x) for x in configuration.get("spacing") or []]
    spacings = [d.get("spacing") for d in prov.get("datasets") or [] if isinstance(d, dict)]
    if not spacings or any(s is None for s in spacings) or not target:
        unrecorded.append("spacing")
    else:
        differing = [[float(x) for x in s] for s in spacings
                     if len(s) != len(target) or any(abs(float(a) - b) > 0.01 * max(abs(b), 1e-9)
                                                      for a, b in zip(s, target))]
        if differing:
            found.append({"what": "spacing", "pretraining": differing, "fine_tuning": target})
    crop = (ckpt.get("config") or {}).get("crop")
    patch = [int(x) for x in configuration.get("patch_size") or []]
    if crop is None or not patch:
        unrecorded.append("patch size")
    elif [int(c) for c in crop] != patch:
        found.append({"what": "patch size", "pretraining": [int(c) for c in crop], "fine_tuning": patch})
    return found, unrecorded


def pretraining_data(ckpt: dict[str, Any]) -> dict[str, Any]:
    """What the design experiments plot against: the share and number of pretraining cases (None when the checkpoint
    does not record them) and the encoder's preset and parameter count."""
    prov = ckpt.get("provenance") or {}
    subset = prov.get("data_subset") if isinstance(prov.get("data_subset"), dict) else None
    counts = [d.get("num_cases") for d in prov.get("datasets") or [] if isinstance(d, dict)]
    cases = subset["num_cases"] if subset else (sum(counts) if counts and all(isinstance(c, int) for c in counts)
                                                else None)
    config = ckpt.get("config") or {}
    encoder = ckpt.get("encoder") or {}
    return {"data_fraction": float(subset["fraction"]) if subset else (1.0 if cases is not None else None),
            "pretraining_cases": cases, "encoder_preset": config.get("encoder"),
            # parameters only: the integer relative-position indices are buffers
            "encoder_parameters": int(sum(int(t.numel()) for t in encoder.values()
                                          if hasattr(t, "is_floating_point") and t.is_floating_point()))}


def describe_mismatch(m: dict[str, Any]) -> str:
    """A pretraining/fine-tuning mismatch record as text: ``"<what>: pretraining <a> vs fine-tuning <b>"``."""
    return f"{m['what']}: pretraining {m['pretraining']} vs fine-tuning {m['fine_tuning']}"


def load_pretrained_encoder(network: nn.Module, configuration: dict, dataset: str, plans_name: str,
                            in_channels: int, log: Callable[[str], None] = print,
                            record: dict[str, Any] | None = None) -> Any:
    """Load the attached checkpoint's encoder into `network` (a SwinUNETR); returns the LoadReport.

    Logs "loaded N/N encoder tensors", warns when the normalisation schemes differ, raises on missing/mismatched keys.
    ``record``, when given, receives what the fine-tuning record keeps of the pretraining run: its method, its compute
    ledger (``nnssl.ledger``, None for checkpoints without one) and the pretraining/fine-tuning mismatches.
    """
    from nnssl.checkpoint import load_checkpoint, load_encoder_into

    path = resolve_pretrained_checkpoint(configuration, dataset, plans_name)
    ckpt = load_checkpoint(path)
    report = load_encoder_into(network, ckpt, in_channels)
    if report.unexpected:
        # the attached plans build a smaller encoder than the checkpoint's (e.g. edited depths): refuse rather than
        # fine-tune a truncated encoder in silence
        raise ValueError(
            f"the checkpoint {path} holds {len(report.unexpected)} encoder tensor(s) the network does not have, e.g. "
            f"{report.unexpected[:5]}: the plans' encoder {configuration.get(ENCODER_KEY)} differs from the "
            f"checkpoint's {ckpt.get('encoder_config')}. Re-attach with nnssl_attach (it copies the encoder config).")
    sha = configuration[PRETRAINED_KEY][PRETRAINED_SHA256]
    log(f"nnssl: pretrained encoder from {path} (method {ckpt.get('method')}, sha256 {sha[:12]}...): "
        f"{report.summary()}")
    if report.adapted:
        src_ch = ckpt.get("encoder_config", {}).get("in_channels")
        log(f"nnssl: the checkpoint has {src_ch} input channel(s), the target {in_channels}: patch embedding "
            f"averaged over its input channels, repeated over the target's and scaled by {src_ch}/{in_channels}")
    for diff in normalization_differences(ckpt, configuration):
        log(f"nnssl: WARNING intensity normalisation differs between pretraining and fine-tuning: {diff}. The "
            f"encoder may see intensities on another scale than in pretraining.")
    mismatches, unrecorded = pretraining_mismatches(ckpt, configuration)
    for m in mismatches:
        if m["what"] != "normalisation":  # warned above
            log(f"nnssl: note: {describe_mismatch(m)} (recorded in the fold's nnssl_finetune.json)")
    if record is not None:
        record.update({"method": ckpt.get("method"), "sha256": sha, "compute": ckpt.get("compute"),
                       "mismatches": mismatches, "unrecorded": unrecorded, **pretraining_data(ckpt)})
    return report
