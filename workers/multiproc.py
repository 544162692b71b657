"""Prometheus multiprocess mode for Celery's prefork pool, set up before prometheus_client loads.

A prefork worker is one main process and N pool processes that it forks; the decisions happen in
the pool processes, so their counters and histograms live there. In multiprocess mode every
process writes its metrics to its own memory-mapped file in ``PROMETHEUS_MULTIPROC_DIR`` and the
main process serves their sum (``workers.metrics``). A pool process that is replaced leaves its
file behind, so its counts survive it, as counters must.

prometheus_client chooses its mode once, when it is first imported; ``prepare`` must run before
that, which is why this module does not import it and why ``matomete worker`` calls it first.

The directory belongs to one worker: ``prepare`` makes a private one (removed at exit) unless
``PROMETHEUS_MULTIPROC_DIR`` names one, which it then empties — files left by an earlier run
would be counted again.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import MutableMapping

__all__ = ["ENV", "prepare"]

ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare(environ: MutableMapping[str, str] = os.environ) -> Path:
    """Point ``PROMETHEUS_MULTIPROC_DIR`` at an empty directory owned by this worker; return it."""
    if environ is os.environ and "prometheus_client.values" in sys.modules and not environ.get(ENV):
        raise RuntimeError("prometheus_client was imported before its multiprocess directory was set")
    given = environ.get(ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
        return path
    path = Path(tempfile.mkdtemp(prefix="matomete-metrics-"))
    environ[ENV] = str(path)
    owner = os.getpid()

    def remove() -> None:
        if os.getpid() == owner:  # never from a forked pool process
            shutil.rmtree(path, ignore_errors=True)

    atexit.register(remove)
    return path
