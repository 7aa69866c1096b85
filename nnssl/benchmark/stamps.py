"""A grid job's "done" keyed on its settings: the settings record ``.nnssl_job.json`` written when a job succeeds.

A job's identity is what decides its outputs: its command (without resume flags), its environment and the identities
of the jobs whose outputs it reads (``Job.keyed_on``: attaching reads the pretraining's checkpoint, fine-tuning the
attached plans, CKA the fine-tuned fold), hashed. A job whose outputs exist counts as done only when its record holds
the same identity; outputs with another identity are "changed" (the grid names the settings that differ and reruns
them only when asked, ``nnssl_benchmark --rerun-changed``); outputs without a record (made before records existed)
count as done, with a note. The SLURM export checks the same records in its job scripts (nnssl.benchmark.slurm).
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Protocol

from nnssl.io import atomic_write

RECORD_NAME = ".nnssl_job.json"


class Job(Protocol):
    """What this module reads of a grid job (nnssl.benchmark.runner.Job, which imports this module)."""

    key: str
    command: list[str]
    env: dict[str, str]
    keyed_on: list[str]
    settings_file: Path | None
    identity: dict | None


def record_beside(output: Path) -> Path:
    """The settings record of a job whose output is the file ``output``: ``.<name>.nnssl_job.json`` beside it."""
    return output.parent / f".{output.name}{RECORD_NAME}"


def assign_identities(jobs: list[Job]) -> None:
    """Fill ``job.identity`` for every job with a settings record (the jobs come in dependency order)."""
    hashes: dict[str, str] = {}
    for job in jobs:
        if job.settings_file is None:
            continue
        inputs = {key: hashes[key] for key in job.keyed_on if key in hashes}
        identity = {"key": job.key, "command": list(job.command), "env": dict(sorted(job.env.items())),
                    "inputs": inputs}
        identity["identity"] = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
        job.identity = identity
        hashes[job.key] = identity["identity"]


def resolve(path: Path) -> Path | None:
    """``path`` itself, or the first match when it holds a glob (dataset names known only after generation)."""
    text = str(path)
    if "*" not in text:
        return path
    matches = sorted(Path("/").glob(text.lstrip("/")))
    return matches[0] if matches else None


def read_record(job: Job) -> dict[str, Any] | None:
    """The job's settings record, or None when there is none (or it cannot be read: then it is written anew)."""
    if job.settings_file is None:
        return None
    path = resolve(job.settings_file)
    if path is None or not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def record_state(job: Job) -> str:
    """For a job whose outputs exist: "match", "changed" (made with other settings) or "missing" (no record)."""
    record = read_record(job)
    if record is None:
        return "missing"
    return "match" if job.identity and record.get("identity") == job.identity["identity"] else "changed"


def write_record(job: Job) -> Path | None:
    """Record that the job succeeded with its current settings (beside its outputs)."""
    if job.settings_file is None or job.identity is None:
        return None
    folder = resolve(job.settings_file.parent)
    if folder is None or not folder.is_dir():
        return None
    record = {**job.identity, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    return atomic_write(folder / job.settings_file.name, lambda f: json.dump(record, f, indent=1), binary=False)


def _flags(command: list[str]) -> dict[str, list[str]]:
    """A command's words by flag (repeated flags and their values collected, positional words under '')."""
    out: dict[str, list[str]] = {}
    flag = ""
    for word in command:
        if word.startswith("-") and not _is_number(word):
            flag = word
            out.setdefault(flag, [])
        else:
            out.setdefault(flag, []).append(word)
    return out


def _is_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


def describe_changes(record: dict[str, Any], identity: dict[str, Any]) -> list[str]:
    """What differs between a recorded identity and the current one, in words (``--steps 5 -> 7``)."""
    changes = []
    old, new = _flags(list(record.get("command", []))), _flags(list(identity.get("command", [])))
    for flag in sorted(set(old) | set(new), key=lambda f: (f != "", f)):
        a, b = old.get(flag), new.get(flag)
        if a != b:
            name = flag or "arguments"
            changes.append(f"{name} {' '.join(a) if a else '(unset)'} -> {' '.join(b) if b else '(unset)'}"
                           if a is not None and b is not None else
                           f"{name} {'added' if a is None else 'removed'}" + (f" ({' '.join(b or a or [])})"
                                                                              if (b or a) else ""))
    old_env, new_env = record.get("env", {}), identity.get("env", {})
    for key in sorted(set(old_env) | set(new_env)):
        if old_env.get(key) != new_env.get(key):
            changes.append(f"{key}={old_env.get(key, '(unset)')} -> {new_env.get(key, '(unset)')}")
    old_in, new_in = record.get("inputs", {}), identity.get("inputs", {})
    for key in sorted(set(old_in) | set(new_in)):
        if old_in.get(key) != new_in.get(key):
            changes.append(f"its input {key} changed")
    return changes or ["its recorded settings differ"]


def stale_name(path: Path) -> Path:
    """Where ``--rerun-changed`` moves an output of other settings: ``<name>.stale-<time>`` beside it."""
    return path.with_name(f"{path.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")


__all__ = ["RECORD_NAME", "assign_identities", "describe_changes", "read_record", "record_beside", "record_state",
           "resolve", "stale_name", "write_record"]
