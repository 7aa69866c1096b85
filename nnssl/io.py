"""Atomic file writing (a temporary file in the target folder, fsync, then rename over the target) and content hashes.

A crash or interruption mid-write leaves the previous file intact and no half-written one behind.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import IO, Callable


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], binary: bool = True) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, then atomically replace ``path`` with it.

    The file gets the permissions a plain ``open(path, "w")`` would give (0666 minus the umask: colleagues on a
    shared cluster can read it), not the 0600 of a temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_umask())
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
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
