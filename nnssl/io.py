"""Atomic file writing (a temporary file in the target folder, fsync, then rename over the target) and content hashes.

A crash or interruption mid-write leaves the previous file intact. A SIGKILL leaves the temporary file behind (nothing
can run at a kill); its name ``.<name>.<pid>.<random>.tmp`` records the writer, so that ``remove_stale_temp_files``
can delete the partial files of dead writers later (the pretraining loop does at every start and resume).
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import IO, Callable

#: ``.<target name>.<writer pid>.<random>.tmp``: the temporary files ``atomic_write`` creates.
TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.(?P<random>[A-Za-z0-9_]+)\.tmp$")
_NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


class NoSpaceError(OSError):
    """A write failed because the device (or the quota) is full; the message names the folder and the sizes."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOSPC, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _mb(n: float) -> str:
    return f"{n / 2**20:.0f} MB" if n >= 2**20 else f"{n / 2**20:.2f} MB"


def _no_space(path: Path, tmp: str, size_hint: int | None, error: BaseException) -> NoSpaceError | None:
    """A NoSpaceError for ``error`` when the device is full (torch.save reports that as a RuntimeError without an
    errno, "[enforce fail at inline_container.cc...]", so the free space decides), else None."""
    try:
        written = os.path.getsize(tmp)
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return None
    needed = max(size_hint or 0, written)
    chain, full = error, False
    while chain is not None and not full:  # torch.save wraps a file's OSError in a RuntimeError
        full = isinstance(chain, OSError) and chain.errno in _NO_SPACE
        chain = chain.__cause__ or chain.__context__
    full = full or free < max(needed - written, 0) + 2**20  # less than the rest of the file (and a margin) left
    if not full:
        return None
    return NoSpaceError(f"no space left on the device of {path.parent} ({_mb(free)} free): {path.name} needs about "
                        f"{_mb(needed)}. Free space there or write elsewhere; the previous {path.name} (if any) is "
                        "intact")


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], binary: bool = True,
                 keep_previous: str | os.PathLike | None = None, size_hint: int | None = None) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, then atomically replace ``path`` with it.

    The file gets the permissions a plain ``open(path, "w")`` would give (0666 minus the umask: colleagues on a
    shared cluster can read it), not the 0600 of a temporary file. ``keep_previous``: rename the existing ``path`` to
    this name first (one older generation; two renames, each atomic, so at every moment one complete generation
    exists under one of the two names). ``size_hint``: the expected size in bytes, for the message of a full device
    (NoSpaceError). A write that fails for lack of space raises NoSpaceError; nothing half-written stays behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        try:
            with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
        except Exception as e:
            full = _no_space(path, tmp, size_hint, e)
            if full is not None:
                raise full from e
            raise
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


#: Files are hashed in chunks of this many bytes (checkpoints can be larger than memory allows to read at once).
_HASH_CHUNK = 1 << 22
#: (resolved path, size, mtime_ns) -> sha256, so that a trainer that checks a checkpoint at construction and again in
#: initialize() reads it once.
_SHA256_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of the file's bytes (cached per path, size and modification time)."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA256_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
                digest.update(chunk)
        _SHA256_CACHE[key] = digest.hexdigest()
    return _SHA256_CACHE[key]


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temp_files(folder: str | os.PathLike, all_writers: bool = False) -> list[tuple[Path, int]]:
    """Delete the temporary files ``atomic_write`` left in ``folder`` when its writer was killed mid-write.

    A file counts as stale when its writer's pid is not alive on this host, or, with ``all_writers``, whenever it is
    not this process's own (for a folder this process holds locked, such as a run folder: no other writer can be at
    work there). Returns the removed files with their sizes.
    """
    folder = Path(folder)
    removed: list[tuple[Path, int]] = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        m = TEMP_RE.match(entry.name)
        if m is None or not entry.is_file():
            continue
        pid = int(m.group("pid"))
        if pid == os.getpid() or (not all_writers and pid_alive(pid)):
            continue
        try:
            size = entry.stat().st_size
            entry.unlink()
        except FileNotFoundError:
            continue
        removed.append((entry, size))
    return removed


def describe_removed(removed: list[tuple[Path, int]]) -> str:
    """One line for the files ``remove_stale_temp_files`` deleted."""
    names = ", ".join(p.name for p, _ in removed[:3]) + (" ..." if len(removed) > 3 else "")
    return (f"removed {len(removed)} partial file(s) of interrupted writes ({_mb(sum(s for _, s in removed))}): "
            f"{names}")


__all__ = ["NoSpaceError", "TEMP_RE", "atomic_write", "describe_removed", "file_sha256", "pid_alive",
           "remove_stale_temp_files"]
