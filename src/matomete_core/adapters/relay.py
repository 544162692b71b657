"""The outbox relay: publishes outbox rows with kombu, then marks them published.

At least once: a relay killed between publishing and marking publishes again, with the same
``event_id``. A batch row (month close's renewal charges, its invoices) is expanded chunk by chunk
and keeps its place in ``cursor``. Several relays may run (after each decision, and from beat); on PostgreSQL they
skip each other's rows (``FOR UPDATE SKIP LOCKED``).
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import uuid
from datetime import datetime, timedelta
from functools import lru_cache

import orjson
from kombu import Connection as KombuConnection, Exchange, Queue
from sqlalchemy import Engine, Update, bindparam, func, select, true, update

from matomete_core.adapters.database import among, list_param
from matomete_core.adapters.tables import outbox
from matomete_core.service.outbox import Written, expand

log = logging.getLogger(__name__)


class KombuPublisher:
    """Publishes JSON bodies to durable queues through the default exchange. One connection, used
    by one thread at a time (a pool process's tasks and its courier, workers.outbound, share it).

    ``publish_many`` on a Redis broker builds each message's envelope here — the one kombu's
    Redis transport writes (``kombu_envelope``), which any kombu consumer reads as it reads
    kombu's own — and pushes them in one pipeline, one LPUSH a queue: kombu's producer spent about
    45 µs of CPU a message on layers a plain push does not need, over a quarter of a batch
    process's CPU (docs/scale-out.md). Queues are still declared by kombu, once each."""

    def __init__(self, broker_url: str):
        self._conn = KombuConnection(broker_url)
        self._declared: set[str] = set()
        self._lock = threading.Lock()

    def publish(self, queue: str, body: str, event_id: str) -> None:
        with self._lock:
            self._send(self._conn.Producer(serializer=None), queue, body, event_id, retry=True)

    def publish_many(self, messages: list[tuple[str, str, str]]) -> None:
        """(queue, body, event_id) each, sent in one Redis pipeline; if it fails none is known to be
        out, and the caller publishes them all again."""
        with self._lock:
            if self._conn.transport.driver_type != "redis":
                producer = self._conn.Producer(serializer=None)
                with producer.batch(max_size=max(1, len(messages))):
                    for queue, body, event_id in messages:
                        self._send(producer, queue, body, event_id, retry=False)
                return
            channel = self._conn.default_channel
            for queue in {queue for queue, _, _ in messages} - self._declared:
                _durable(queue)(channel).declare()
                self._declared.add(queue)
            by_queue: dict[str, list[bytes]] = {}
            for queue, body, event_id in messages:
                by_queue.setdefault(queue, []).append(kombu_envelope(queue, body, event_id))
            with channel.conn_or_acquire() as client, client.pipeline(transaction=False) as pipe:
                for queue, envelopes in by_queue.items():
                    pipe.lpush(queue, *envelopes)  # one LPUSH a queue: they are popped in this order
                pipe.execute()

    def _send(self, producer, queue: str, body: str, event_id: str, *, retry: bool) -> None:  # noqa: ANN001
        declare = [] if queue in self._declared else [_durable(queue)]
        producer.publish(body.encode("utf-8"), routing_key=queue, exchange="", content_type="application/json",
                         content_encoding="utf-8", delivery_mode=2, declare=declare, retry=retry,
                         retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5},
                         headers={"event_id": event_id})
        self._declared.add(queue)

    def close(self) -> None:
        self._conn.release()


def _durable(queue: str) -> Queue:
    return Queue(queue, Exchange(""), routing_key=queue, durable=True)


def kombu_envelope(queue: str, body: str, event_id: str) -> bytes:
    """The message ``_send`` has kombu's Redis transport write for ``body`` on ``queue`` (priority 0:
    the list named after the queue), with a delivery tag of its own.
    tests/integration/test_relay_redis.py checks it against kombu's, field by field."""
    return orjson.dumps({
        "body": base64.b64encode(body.encode("utf-8")).decode("ascii"),
        "content-encoding": "utf-8", "content-type": "application/json", "headers": {"event_id": event_id},
        "properties": {"delivery_mode": 2, "delivery_info": {"exchange": "", "routing_key": queue}, "priority": 0,
                       "body_encoding": "base64", "delivery_tag": str(uuid.uuid4())}})


def relay(engine: Engine, publisher, *, now: datetime, batch: int = 500,  # noqa: ANN001
          settled_for: timedelta = timedelta(0)) -> int:
    """Publish every unpublished outbox row, oldest first, then expand batch rows chunk by chunk;
    returns how many messages were published. A row written less than ``settled_for`` before
    ``now`` is left: the worker that wrote it publishes it itself, a few milliseconds after its
    commit (a courier's, up to 50 ms), and a relay taking it meanwhile sends it a second time."""
    written_by = now - settled_for if settled_for else None
    return _relay_rows(engine, publisher, now, batch, written_by) + _relay_batches(engine, publisher, now, batch)


def publish_written(engine: Engine, publisher, rows: list[Written], *, now: datetime) -> None:  # noqa: ANN001
    """Publish rows just committed (service.outbox.track), then mark them in one statement — the
    relay's work without reading them back. Failing half-way leaves them to the relay."""
    if not rows:
        return
    _publish_all(publisher, [(r.queue, r.body, r.event_id) for r in rows])
    with engine.connect() as conn:
        pg = conn.dialect.name == "postgresql"
        if pg:  # one statement: no BEGIN/COMMIT round trips
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.execute(_mark_published(pg), {"event_ids": [r.event_id for r in rows], "now": now})
        conn.commit()


@lru_cache(maxsize=2)
def _mark_published(pg: bool) -> Update:
    """Built once. On PostgreSQL the ids travel as one array (``list_param``: the same statement for
    any count), and this one commit does not wait for its WAL flush: the mark only spares the relay
    a second publish, so losing it in a crash costs a duplicate with the same event_id, never a
    message — and it halves the cost of marking, paid after every decision."""
    ids = list_param("event_ids", outbox.c.event_id.type, arrays=pg)
    stmt = update(outbox).where(among(outbox.c.event_id, ids), outbox.c.published_at.is_(None))
    if pg:  # set once as the statement runs, and local to its own transaction
        stmt = stmt.where(select(func.set_config("synchronous_commit", "off", true())).scalar_subquery().is_not(None))
    return stmt.values(published_at=bindparam("now"))


def _publish_all(publisher, messages: list[tuple[str, str, str]]) -> None:  # noqa: ANN001
    """At once if the publisher can (KombuPublisher.publish_many), else one by one."""
    if not messages:
        return
    many = getattr(publisher, "publish_many", None)
    if many is not None:
        many(messages)
    else:
        for queue, body, event_id in messages:
            publisher.publish(queue, body, event_id)


def _locked(conn, stmt):  # noqa: ANN001, ANN202
    return stmt.with_for_update(skip_locked=True) if conn.dialect.name == "postgresql" else stmt


def _relay_rows(engine: Engine, publisher, now: datetime, batch: int,  # noqa: ANN001
                written_by: datetime | None) -> int:
    unpublished = select(outbox.c.id, outbox.c.queue, outbox.c.body, outbox.c.event_id).where(
        outbox.c.published_at.is_(None), outbox.c.batch.is_(None)).order_by(outbox.c.id).limit(batch)
    if written_by is not None:
        unpublished = unpublished.where(outbox.c.created_at <= written_by)
    total = 0
    while True:
        with engine.begin() as conn:
            rows = conn.execute(_locked(conn, unpublished)).all()
            _publish_all(publisher, [(r.queue, r.body, r.event_id) for r in rows])
            if rows:
                conn.execute(update(outbox).where(outbox.c.id.in_([r.id for r in rows])).values(published_at=now))
        total += len(rows)
        if len(rows) < batch:
            return total


def _relay_batches(engine: Engine, publisher, now: datetime, batch: int) -> int:  # noqa: ANN001
    """Each chunk is published, then the row's cursor moves on, in one transaction: a relay killed
    in between publishes the chunk again — the same event ids, never a gap."""
    total = 0
    while True:
        with engine.begin() as conn:
            row = conn.execute(_locked(conn, select(outbox.c.id, outbox.c.queue, outbox.c.body, outbox.c.batch,
                                                    outbox.c.cursor)
                                       .where(outbox.c.published_at.is_(None), outbox.c.batch.is_not(None))
                                       .order_by(outbox.c.id).limit(1))).first()
            if row is None:
                return total
            events, cursor = expand(conn, row.batch, json.loads(row.body), row.cursor, limit=batch)
            _publish_all(publisher, [(row.queue, body, event_id) for event_id, body in events])
            done = {"cursor": cursor} if events else {"published_at": now}
            conn.execute(update(outbox).where(outbox.c.id == row.id).values(**done))
        total += len(events)
