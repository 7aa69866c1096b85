"""One run per folder: an exclusive lock on a pretraining run folder, held by rank 0 for the whole run.

The lock is the file ``.nnssl.lock`` in the run folder, holding JSON ``{"host", "pid", "started", "command"}``, plus
``fcntl.flock`` on it where the filesystem supports it (the kernel drops a flock when its process dies, so a SIGKILL
cannot leave a lock that looks alive). ``flock`` is not reliable on every cluster filesystem, so the file's content
decides too:

- a holder on this host whose flock is gone, or (without flock) whose pid is dead, left a stale lock: it is taken
  over, with a note;
- a holder on this host that is alive: the run is refused, naming it;
- a holder on another host: refused (this host cannot tell whether it still runs), with how to clear the lock.

Without flock two runs starting in the same instant could both read an empty lock; each re-reads the file after a
short pause and the one whose record was overwritten gives way.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnssl.io import pid_alive

LOCK_NAME = ".nnssl.lock"
#: errors of flock on a filesystem that does not implement it (NFS without lockd, some FUSE and parallel filesystems)
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.EBADF, getattr(errno, "ENOTSUP", 95)}
_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}


class RunLockedError(ValueError):
    """Another run holds the folder; the message names it and what to do."""


class OutputNotWritableError(ValueError):
    """The run folder cannot be created or written."""


@dataclass
class Holder:
    """The content of a lock file: the holding run's host, pid, start time and command line."""

    host: str
    pid: int
    started: str
    command: str = ""

    @classmethod
    def parse(cls, text: str) -> "Holder | None":
        """The Holder in a lock file's JSON text; None when it is no valid record (empty, partial or malformed)."""
        try:
            d = json.loads(text)
            return cls(str(d["host"]), int(d["pid"]), str(d.get("started", "?")), str(d.get("command", "")))
        except (ValueError, KeyError, TypeError):
            return None

    def describe(self) -> str:
        """``host H, pid P, started T`` (and the command when known), for messages."""
        return f"host {self.host}, pid {self.pid}, started {self.started}" + (
            f", command: {self.command}" if self.command else "")


def _not_writable(folder: Path, e: OSError) -> OutputNotWritableError:
    why = "read-only file system" if e.errno == errno.EROFS else "permission denied"
    return OutputNotWritableError(f"cannot write to the output folder {folder} ({why}): choose another --output or "
                                  "make the folder writable")


class RunLock:
    """``with RunLock(folder):`` holds ``folder`` exclusively (creating it); ``notes`` says what acquiring found
    (a stale lock taken over). ``created`` tells whether the folder was made by this lock."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.notes: list[str] = []
        self.created = False
        self._fd: int | None = None
        self._me = Holder(socket.gethostname(), os.getpid(), time.strftime("%Y-%m-%d %H:%M:%S"),
                          " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:300])

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def acquire(self) -> "RunLock":
        """Create the folder if needed and lock it: the kernel flock where the filesystem has one, then this run's
        record written to ``.nnssl.lock``. A stale holder on this host is taken over (a note); a live or foreign one
        raises RunLockedError, an unwritable folder OutputNotWritableError. Returns self."""
        try:
            self.created = not self.folder.exists()
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            if e.errno in _NOT_WRITABLE:
                raise _not_writable(self.folder, e) from None
            raise
        try:
            flock = self._flock(fd)
            holder = Holder.parse(os.pread(fd, 65536, 0).decode("utf-8", "replace"))
            if holder is not None and (holder.host, holder.pid) != (self._me.host, self._me.pid):
                self._judge(holder, flock)
            self._write(fd)
            if not flock:  # no kernel lock: the last of two simultaneous writers wins, the other gives way
                time.sleep(0.05)
                now = Holder.parse(os.pread(fd, 65536, 0).decode("utf-8", "replace"))
                if now is None or (now.host, now.pid) != (self._me.host, self._me.pid):
                    raise RunLockedError(self._held_message(now or holder or self._me))
        except BaseException:
            os.close(fd)
            self._cleanup_folder()
            raise
        self._fd = fd
        return self

    def _flock(self, fd: int) -> bool:
        """Take the kernel lock; False where the filesystem has none. Raises RunLockedError when another process
        holds it."""
        try:
            import fcntl
        except ImportError:  # not POSIX
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = Holder.parse(os.pread(fd, 65536, 0).decode("utf-8", "replace"))
            raise RunLockedError(self._held_message(holder)) from None
        except OSError as e:
            if e.errno in _NO_FLOCK:
                return False
            raise
        # the file may have been removed by its previous holder between our open and our flock: then we hold a lock
        # on a deleted file, so start again on the new one
        try:
            same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            raise RunLockedError(f"{self.folder} was being locked by another run at the same moment: start again")
        return True

    def _judge(self, holder: Holder, flock: bool) -> None:
        """Take over a stale lock (a note) or refuse a live or foreign one."""
        if holder.host == self._me.host:
            if flock or not pid_alive(holder.pid):
                self.notes.append(f"took over the lock of a run that is gone ({holder.describe()})")
                return
            raise RunLockedError(self._held_message(holder))
        raise RunLockedError(
            f"{self.folder} is locked by a run on another host ({holder.describe()}); this host cannot tell whether "
            f"it still runs. Check on {holder.host} (ps -p {holder.pid}); if it is gone, delete {self.path} and start "
            "again, otherwise use another --output")

    def _held_message(self, holder: Holder | None) -> str:
        who = holder.describe() if holder is not None else "a run that is starting"
        tail = f" (if pid {holder.pid} is no nnssl run, delete {self.path})" if holder is not None else ""
        return (f"another run is using {self.folder} ({who}): wait for it to finish, or use another --output"
                + tail)

    def _write(self, fd: int) -> None:
        data = json.dumps(self._me.__dict__).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)

    def _cleanup_folder(self) -> None:
        """Leave nothing behind when acquiring failed in a folder this lock created."""
        if self.created:
            try:
                self.path.unlink(missing_ok=True)
                self.folder.rmdir()
            except OSError:
                pass

    def release(self, remove_empty_folder: bool = False) -> None:
        """Drop the lock (the file first, then the kernel lock). ``remove_empty_folder``: also remove the folder when
        this lock created it and nothing else was written there."""
        if self._fd is None:
            return
        try:
            holder = Holder.parse(os.pread(self._fd, 65536, 0).decode("utf-8", "replace"))
            if holder is not None and (holder.host, holder.pid) == (self._me.host, self._me.pid):
                self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None
        if remove_empty_folder and self.created:
            try:
                self.folder.rmdir()
            except OSError:
                pass


__all__ = ["LOCK_NAME", "Holder", "OutputNotWritableError", "RunLock", "RunLockedError"]
