"""`matomete` with one fault injected, for the fault suite: ``python wrapped_worker.py worker [options]``.

The fault is chosen by ``MATOMETE_FAULTS_INJECT`` and patched in before the worker forks its pool:

* ``slow-relay:FILE`` — after each outbound message is published, its event_id is appended to FILE
  and the relay pauses 0.5 s before the next, so a test can SIGKILL the worker between publishing
  and marking the outbox rows published.
* ``poison`` — a purchase whose ``order_id`` starts with ``poison`` crashes its handler
  (``RuntimeError``), every time it is delivered: a bug that only this message triggers.
* ``slow:SECONDS`` — a purchase whose ``order_id`` starts with ``slow`` takes SECONDS longer to
  decide, so a test can keep every pool process busy while it stops a server.
* ``hang:FILE`` — a purchase whose ``order_id`` starts with ``hang`` never returns, and swallows the
  soft time limit as a careless library would, so only the hard time limit ends it: ``hang-once``
  orders on their first delivery (their message ids are kept in FILE), ``hang-always`` ones on every
  delivery.
* ``consumer-error:SECONDS`` — SECONDS after the worker's consumer starts, its event loop runs a
  callback that raises an error that is no connection error: Celery's "Unrecoverable error".

Everything else is the real `matomete` command line.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable
from typing import Any


def _slow_relay(path: str) -> None:
    from matomete_core.adapters import relay

    publish = relay.KombuPublisher.publish

    @functools.wraps(publish)
    def announced(self, queue: str, body: str, event_id: str) -> None:  # noqa: ANN001
        publish(self, queue, body, event_id)
        with open(path, "a", encoding="utf-8") as out:
            out.write(event_id + "\n")
        time.sleep(0.5)

    def announced_each(self, messages: list[tuple[str, str, str]]) -> None:  # noqa: ANN001
        for queue, body, event_id in messages:
            announced(self, queue, body, event_id)

    relay.KombuPublisher.publish = announced
    relay.KombuPublisher.publish_many = announced_each


def _before_each_purchase(fault: Callable[[Any], None]) -> None:
    """Run ``fault(msg)`` ahead of the real handler of every purchase."""
    from matomete_core.service import bus

    handler = bus.HANDLERS["matomete.purchase"]

    @functools.wraps(handler)
    def faulty(conn, msg, body, now, **kw):  # noqa: ANN001, ANN003, ANN202
        fault(msg)
        return handler(conn, msg, body, now, **kw)

    bus.HANDLERS["matomete.purchase"] = faulty


def _poison() -> None:
    def poison(msg: Any) -> None:
        if msg.order_id.startswith("poison"):
            raise RuntimeError("injected: this message crashes its handler every time")
    _before_each_purchase(poison)


def _slow(seconds: float) -> None:
    def slow(msg: Any) -> None:
        if msg.order_id.startswith("slow"):
            time.sleep(seconds)
    _before_each_purchase(slow)


def _hang(path: str) -> None:
    from celery.exceptions import SoftTimeLimitExceeded

    def hung() -> None:
        while True:
            try:
                time.sleep(3600)
            except SoftTimeLimitExceeded:
                pass

    def hang(msg: Any) -> None:
        if msg.order_id.startswith("hang-always"):
            hung()
        if msg.order_id.startswith("hang-once"):
            seen = open(path, encoding="utf-8").read().split() if os.path.exists(path) else []
            if msg.message_id not in seen:
                with open(path, "a", encoding="utf-8") as out:
                    out.write(msg.message_id + "\n")
                hung()
    _before_each_purchase(hang)


def _consumer_error(seconds: float) -> None:
    from celery import bootsteps

    from workers.app import app

    def fail() -> None:
        raise RuntimeError("injected: a callback of the consumer's event loop failed")

    class Fail(bootsteps.StartStopStep):
        requires = ("celery.worker.consumer.tasks:Tasks",)

        def start(self, c: Any) -> None:
            c.hub.call_later(seconds, lambda: c.hub.call_soon(fail))  # as an ack runs: call_soon

    app.steps["consumer"].add(Fail)


def main() -> None:
    fault = os.environ.get("MATOMETE_FAULTS_INJECT", "")
    if fault.startswith("slow-relay:"):
        _slow_relay(fault.split(":", 1)[1])
    elif fault == "poison":
        _poison()
    elif fault.startswith("slow:"):
        _slow(float(fault.split(":", 1)[1]))
    elif fault.startswith("hang:"):
        _hang(fault.split(":", 1)[1])
    elif fault.startswith("consumer-error:"):
        _consumer_error(float(fault.split(":", 1)[1]))
    elif fault:
        sys.exit(f"unknown MATOMETE_FAULTS_INJECT={fault!r}")
    from matomete_core.cli import main as matomete

    matomete(sys.argv[1:])


if __name__ == "__main__":
    main()
