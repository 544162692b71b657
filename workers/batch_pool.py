"""`matomete batch-worker --concurrency N`: N batch processes under one parent, as Celery's prefork
pool keeps N pool processes under its main process.

One batch process decides one batch at a time, and while it waits on PostgreSQL or Redis its CPU
idles; threads would share one interpreter lock (the benchmark: two threads decided 1.0–1.3 times
what one did, two processes 1.8 times). So each batch loop (workers.batch) is a process of its own,
spawned — it inherits none of the parent's connections — and the parent only watches them:

* SIGTERM or SIGINT: passed on (within a second); each process finishes the batch in hand and
  exits, then the parent;
* a process that exits on its own (killed, out of memory, a loop that failed): logged and replaced
  after a second; the messages it held come back through the visibility sweep;
* a process stuck — no turn of its loop and no retry for longer than the time limit that
  `matomete worker` puts on a task (⅔ of the visibility timeout; workers/app.py): SIGKILLed, so
  its database connection goes and with it its transaction and line locks, and replaced; what it
  held comes back through the visibility sweep, as a task past its hard time limit does;
* the parent killed outright: the kernel kills its processes too (parent-death signal), so none
  decides on unwatched, and what they held comes back when the worker is started again.

Metrics: each process writes its own file in the parent's multiprocess directory (workers.multiproc)
and the parent serves their sum, as for `matomete worker`.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from multiprocessing.connection import wait
from typing import Any

from billiard.util import set_pdeathsig

__all__ = ["run"]

log = logging.getLogger(__name__)

RESTART_PAUSE_S = 1.0


def run(size: int, concurrency: int, loglevel: str) -> None:
    """Keep ``concurrency`` batch processes running until SIGTERM or SIGINT."""
    from workers.app import TIMINGS

    spawn = multiprocessing.get_context("spawn")
    stopping = False
    # when each process last made progress (time.monotonic(): one clock for all processes on Linux)
    progress = [spawn.Value("d", time.monotonic(), lock=False) for _ in range(concurrency)]

    def start(n: int) -> Any:
        progress[n].value = time.monotonic()
        proc = spawn.Process(target=_decide, args=(size, loglevel, os.getpid(), progress[n]), name=f"batch-{n}")
        proc.start()
        return proc

    def stop(_signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    procs = [start(n) for n in range(concurrency)]
    log.info("batch worker: %d processes, up to %d messages a batch each", concurrency, size)
    while not stopping:
        wait([p.sentinel for p in procs], timeout=1.0)
        for n, proc in enumerate(procs):
            stuck = time.monotonic() - progress[n].value
            if proc.exitcode is None and stuck > TIMINGS.time_limit:
                log.error("batch process %s made no progress for %.0fs (the time limit is %ss); killing it",
                          proc.pid, stuck, TIMINGS.time_limit)
                proc.kill()
                proc.join()
            if proc.exitcode is not None and not stopping:
                log.warning("batch process %s exited with %s; starting another", proc.pid, proc.exitcode)
                _forget(proc.pid)
                time.sleep(RESTART_PAUSE_S)
                procs[n] = start(n)
    for proc in procs:  # each finishes the batch in hand
        if proc.exitcode is None:
            os.kill(proc.pid, signal.SIGTERM)
    for proc in procs:
        proc.join()


def _decide(size: int, loglevel: str, parent: int, progress: Any) -> None:
    """One batch process: dies with its parent, logs as it does, decides until told to stop."""
    set_pdeathsig(signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the line above
        return
    from workers import logging as json_logs
    from workers.batch import BatchWorker

    logging.basicConfig(level=loglevel)
    json_logs.use_json(logging.getLogger())
    try:
        BatchWorker(size=size, progress=lambda: setattr(progress, "value", time.monotonic())).run()
    except Exception:  # what the loop does not ride out (a bug): the parent starts another
        log.exception("batch process failed")
        raise SystemExit(1) from None


def _forget(pid: int | None) -> None:
    """A dead process's live gauges leave the served sum (its counters stay, as counters must)."""
    if pid is not None and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
