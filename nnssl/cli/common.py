"""Shared bits of the command-line entry points."""
from __future__ import annotations

import sys


def fail(message: str, code: int = 2) -> int:
    """Print ``error: message`` on stderr and return the exit code (the CLIs' single way to report bad input)."""
    print(f"error: {message}", file=sys.stderr)
    return code
