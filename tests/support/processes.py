"""Helpers for tests that run `matomete` processes: find the command, read a log's tail, and tell
whether a process group still lives. Nothing here imports the project."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

__all__ = ["matomete_bin", "tail", "group_alive"]


def matomete_bin() -> str:
    """``MATOMETE_BIN``, else the console script beside this interpreter, else the one on PATH."""
    explicit = os.environ.get("MATOMETE_BIN")
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "matomete"
    if beside.exists():
        return str(beside)
    found = shutil.which("matomete")
    if not found:
        raise RuntimeError("no `matomete` executable: install the project or set MATOMETE_BIN")
    return found


def tail(path: Path, lines: int = 80) -> str:
    """The last lines of a log, or why it cannot be read."""
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(cannot read {path}: {exc})"


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
