"""A pool process's outbound messages, published in the background a few decisions at a time.

A decision commits its outbound messages to the outbox (service.outbox). Publishing them right
after each commit — a Redis pipeline, and a statement to mark them — added about 80% to the CPU
of the decision itself; by courier it adds about 20% (ops/bench/decision_cost.py). The task hands
the committed rows to its process's ``Courier`` and returns: a thread
gathers what comes in over ``linger`` seconds (a quiet system waits no longer than that, a busy one
sends many decisions' messages in one pipeline and marks them in one statement), then publishes.

Nothing is lost on the way: the rows are committed before they are handed over, and a row this
process never publishes — it died, Redis or the database failed — is still unpublished in the
outbox, where the beat relay finds it (at least once, with its ``event_id``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable

from matomete_core.service.outbox import Written

log = logging.getLogger(__name__)

LINGER_S = 0.05
MAX_ROWS = 500  # a publish takes no more decisions' rows once it has this many


class Courier:
    """``put`` the rows a transaction committed; they are published within about ``linger`` seconds
    by ``publish`` (which must not raise: what it cannot publish stays in the outbox), from a thread
    started on the first ``put`` — in the process that uses it, after any fork."""

    _STOP = object()

    def __init__(self, publish: Callable[[list[Written]], None], *, linger: float = LINGER_S,
                 max_rows: int = MAX_ROWS):
        self._publish = publish
        self._linger = linger
        self._max_rows = max_rows
        self._waiting: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def put(self, rows: list[Written]) -> None:
        if not rows:
            return
        self._waiting.put(list(rows))
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="matomete-courier", daemon=True)
                    self._thread.start()

    def close(self, timeout: float) -> None:
        """Publish what is waiting, then stop (a process shutting down)."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._waiting.put(self._STOP)
            thread.join(timeout)

    def _run(self) -> None:
        stop = False
        while not stop:
            rows = self._waiting.get()
            if rows is self._STOP:
                return
            deadline = time.monotonic() + self._linger
            while len(rows) < self._max_rows:
                try:
                    more = self._waiting.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if more is self._STOP:
                    stop = True
                    break
                rows.extend(more)
            try:
                self._publish(rows)
            except Exception:  # noqa: BLE001 — a bug in publish; the outbox keeps the rows, the thread lives on
                log.exception("the courier could not publish %d outbound messages; beat will relay them", len(rows))
