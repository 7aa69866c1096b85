"""Set up the project's virtual environment on first use, then run the demo or the tests in it.

Run from a clone with the system Python (this module uses the standard library only):

    python3 -m nnssl.bootstrap demo    # the demo benchmark on generated phantoms
    python3 -m nnssl.bootstrap test    # the test suite

The environment is ``.venv`` in the repository. It is created when missing and reinstalled only when setup.py or
constraints.txt changed since the last install (a stamp file records their hash). torch and torchvision are pinned by
constraints.txt.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv"
STAMP = VENV / ".nnssl-install-stamp"

COMMANDS = {
    "demo": ["nnssl_benchmark", "--demo"],
    "test": ["-m", "pytest", "-q", "-m", "not slow", "tests"],
}


def _python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _install_hash() -> str:
    h = hashlib.sha256()
    for name in ("setup.py", "constraints.txt"):
        h.update((REPO / name).read_bytes())
    return h.hexdigest()


def ensure_environment() -> Path:
    """Create or refresh .venv; returns its python."""
    wanted = _install_hash()
    if STAMP.is_file() and STAMP.read_text().strip() == wanted and _python().is_file():
        return _python()
    if not _python().is_file():
        print(f"[nnssl] creating the virtual environment {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    py = str(_python())
    print("[nnssl] installing nnssl and its dependencies (a few minutes the first time)", flush=True)
    subprocess.run([py, "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    subprocess.run([py, "-m", "pip", "install", "-q", "-c", str(REPO / "constraints.txt"), "-e", f"{REPO}[test]"],
                   check=True)
    STAMP.write_text(wanted)
    return _python()


def main(argv: list[str] | None = None) -> int:
    """``python3 -m nnssl.bootstrap {demo|test} [extra arguments]``: build the project's virtual environment if needed,
    then run the demo benchmark or the test suite in it; returns that command's exit status (2 for an unknown
    command)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python3 -m nnssl.bootstrap {{{'|'.join(COMMANDS)}}} [extra arguments]", file=sys.stderr)
        return 2
    py = ensure_environment()
    name, extra = argv[0], argv[1:]
    cmd = COMMANDS[name]
    if cmd[0] == "-m":
        full = [str(py), *cmd, *extra]
    else:
        full = [str(py.parent / cmd[0]), *cmd[1:], *extra]
    return subprocess.run(full, cwd=REPO).returncode


if __name__ == "__main__":
    sys.exit(main())
