"""The worker's consumer: Celery's, except that it rides out kombu's failures around a lost Redis
connection, and keeps what Celery cannot run — where Celery's would stop the worker or drop it.

On a lost broker connection Celery's consumer collects the connection (kombu's
``Connection.collect``: close the channel, release the transport), then closes it, ignoring
connection errors. With Redis gone, the first channel close can fail part-way. The second then
restores the unacknowledged messages through a transport that ``collect`` already released, and
kombu 5.7 raises ``AttributeError`` (``'NoneType' object has no attribute 'hostname'``). That is
not a connection error, so it ended the consumer as an "unrecoverable error": the worker stopped
and never decided again (seen in CI, tests/faults/test_broker_restart.py).

Here that error is logged and the consumer carries on to reconnect, as it does for every other
failure to close a dead connection. The messages it could not restore are still in Redis'
``unacked`` hash, and the visibility sweep hands them out again. What Celery's handler would have
done after the close is skipped: it lowers the prefetch count for tasks still running, so a
reconnect after this error prefetches in full.

The same kombu error comes back later, from a task that finishes after its connection was lost:
Celery runs the task's ack (or reject) from the event loop, on the channel the message came on,
and that channel's transport is the one ``collect`` released. The error left the event loop as
"Unrecoverable error", and the worker stopped (CI again). A closed channel can no longer settle
a message, and reconnecting would not help: the consumer already has, or is about to. So such an
ack is logged and left; the message is still in Redis' ``unacked`` hash, the visibility sweep
hands it out again, and the inbox replays its decision. An ack that fails on an open channel
still raises into the consumer, which reconnects (workers.requests).

It also keeps what Celery cannot run. Celery logs and drops a message whose body it cannot decode,
one whose content type it refuses, one that is no task message (workers.requests), and one naming
a task nobody registered. Here each is quarantined ``INVALID_MESSAGE`` (as the batch worker does,
and as the bus does with a task message it cannot decide), its decision stored as the task's
result when it has a task id, and then acknowledged. If the quarantine cannot be written (the
database is away), Celery's own handling follows: logged, and dropped — such a message can be no
decision, and holding it unacknowledged would hold one of the consumer's prefetch slots for good.

A Redis list entry that is not even a kombu message (not JSON, or JSON without kombu's envelope,
or with no delivery tag) is taken like any other (workers.transport) and raised as ``Unreadable``
before Celery sees it. Here it is quarantined ``INVALID_MESSAGE`` as the batch worker quarantines
it (workers.entries: the same row, and the task's own body, redacted, when the envelope can be
read), and discarded from Redis; and the error becomes a connection error: the consumer
reconnects, handing the messages it had prefetched back to the queue, and carries on. If the
quarantine cannot be written, the entry stays where the take put it: one with a delivery tag in
``unacked``, for the visibility sweep to put back; one without in the held list, which this
consumer sweeps every few seconds as the batch worker does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timezone
from functools import lru_cache, wraps
from typing import Any

from celery import states
from celery.worker.consumer import Consumer as CeleryConsumer
from sqlalchemy import Engine
from sqlalchemy.pool import NullPool

from matomete_core.adapters.database import make_engine
from matomete_core.config import Settings
from matomete_core.messages import Decision
from matomete_core.reasons import Quarantine
from matomete_core.service.quarantine import quarantine_message, readable
from workers.app import TIMINGS
from workers.entries import Taken, decode, quarantine_entry
from workers.transport import HELD, Unreadable

__all__ = ["Consumer"]

log = logging.getLogger(__name__)


class Consumer(CeleryConsumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loop = _past_unreadable_entries(self.loop, self)
        self.timer.call_repeatedly(TIMINGS.restore_interval, set_aside_held, (self,))

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        try:
            super().on_connection_error_after_connected(exc)
        except AttributeError:
            log.warning("closing the lost broker connection failed inside kombu; reconnecting anyway",
                        exc_info=True)

    def call_soon_ack(self, p: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return super().call_soon_ack(_unless_channel_closed(p), *args, **kwargs)

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        if not self._set_aside(message, f"the body cannot be decoded: {type(exc).__name__}"):
            super().on_decode_error(message, exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        if not self._set_aside(message, "not a task message: no task header"):
            super().on_unknown_message(body, message)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        if not self._set_aside(message, f"no such task: {_header(message, 'task')}"):
            super().on_unknown_task(body, message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        if not self._set_aside(message, f"{type(exc).__name__}: {exc}"):
            super().on_invalid_task(body, message, exc)

    def _set_aside(self, message: Any, detail: str) -> bool:
        if not set_aside(self.app.backend, _engine(), message, detail):
            return False
        message.ack_log_error(log, self.connection_errors)
        return True


def _past_unreadable_entries(loop: Callable[..., Any], consumer: Consumer) -> Callable[..., Any]:
    """Celery's event loop, except that an entry that is no kombu message is set aside, and the
    consumer reconnects (see above)."""

    @wraps(loop)
    def run(*args: Any) -> Any:
        try:
            return loop(*args)
        except Unreadable as exc:
            log.error("%s; set aside, reconnecting", exc.detail)
            if set_aside_entry(consumer.app.backend, _engine(), decode(exc.raw, exc.tag), exc.detail):
                exc.discard()
            raise ConnectionError(exc.detail) from exc

    return run


def set_aside_held(consumer: Consumer) -> None:
    """Quarantine the bodies left in the held list: their taker died, or could not quarantine them."""
    if consumer.connection is None:  # not connected yet
        return
    try:
        with consumer.connection.default_channel.conn_or_acquire() as client:
            for raw in client.lrange(HELD, 0, 99):
                if set_aside_entry(consumer.app.backend, _engine(), decode(raw, None)):
                    client.lrem(HELD, 1, raw)
    except Exception as exc:  # noqa: BLE001 — the next sweep tries again
        log.warning("could not sweep the held queue entries: %s: %s", type(exc).__name__, exc)


def _unless_channel_closed(settle: Callable[..., Any]) -> Callable[..., Any]:
    """``settle`` (a message's ``ack_log_error`` or ``reject_log_error``), except that kombu's
    AttributeError on a message whose channel is already closed is logged, not raised."""
    message = getattr(settle, "__self__", None)

    @wraps(settle)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return settle(*args, **kwargs)
        except AttributeError:
            if not _channel_closed(message):
                raise
            log.warning("a message taken on a lost broker connection cannot be settled there; it stays "
                        "unacknowledged in Redis until the visibility sweep hands it out again",
                        extra={"task_id": _header(message, "id"), "delivery_tag": message.delivery_tag})
            return None

    return run


def _channel_closed(message: Any) -> bool:
    channel = getattr(message, "channel", None)
    if channel is None:
        return False
    transport = getattr(channel, "connection", None)  # kombu's released transport has no client
    return bool(getattr(channel, "closed", False)) or getattr(transport, "client", None) is None


@lru_cache(maxsize=1)
def _engine() -> Engine:
    """The main process's own engine, for these rare writes: with no pool, so no connection of it
    is ever inherited by a pool process forked later."""
    return make_engine(Settings.from_env().database_url, poolclass=NullPool)


def _header(message: Any, name: str) -> str | None:
    headers = message.headers if isinstance(message.headers, dict) else {}
    value = headers.get(name)
    return value if isinstance(value, str) else None


def set_aside(backend: Any, engine: Engine, message: Any, detail: str) -> bool:
    """Quarantine a message Celery cannot run, and store the decision as its task's result; False,
    with an error logged, if the quarantine could not be written."""
    return _kept(backend, _header(message, "id"), lambda now: quarantine_message(
        engine, task=_header(message, "task") or "unknown", reason=Quarantine.INVALID_MESSAGE, detail=detail,
        body=readable(message.body), now=now))


def set_aside_entry(backend: Any, engine: Engine, taken: Taken, detail: str | None = None) -> bool:
    """set_aside for a queue entry that is no kombu message (workers.entries)."""
    return _kept(backend, taken.task_id, lambda now: quarantine_entry(engine, taken, now=now, detail=detail))


def _kept(backend: Any, task_id: str | None, quarantine: Callable[[datetime], Decision]) -> bool:
    try:
        decision = quarantine(datetime.now(timezone.utc))
        if task_id is not None:
            backend.store_result(task_id, decision.model_dump(mode="json"), states.SUCCESS)
    except Exception:  # noqa: BLE001 — Celery's own handling follows
        log.error("a message that is no task could not be quarantined", exc_info=True)
        return False
    return True
