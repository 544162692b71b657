"""Helpers for tests that run `matomete` processes: find the command, read a log's tail, and tell
whether a process group still lives. Nothing here imports the project."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["matomete_bin", "tail", "group_alive", "kill_group", "stop_group"]


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


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal the process group of a process a test started (start_new_session=True)."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def stop_group(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM (Celery's warm shutdown), then SIGKILL the group after ``grace`` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    deadline = time.monotonic() + 3
    while group_alive(proc.pid) and time.monotonic() < deadline:  # pool children finishing
        time.sleep(0.1)
    if group_alive(proc.pid) or proc.poll() is None:
        kill_group(proc)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
