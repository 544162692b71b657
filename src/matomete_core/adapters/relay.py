"""The outbox relay: publishes outbox rows with kombu, then marks them published.

At least once: a relay killed between publishing and marking publishes again, with the same
``event_id``. Several relays may run (after each decision, and from beat); on PostgreSQL they
skip each other's rows (``FOR UPDATE SKIP LOCKED``).
"""

from __future__ import annotations

import logging
from datetime import datetime

from kombu import Connection as KombuConnection, Exchange, Queue
from sqlalchemy import Engine, select, update

from matomete_core.adapters.tables import outbox

log = logging.getLogger(__name__)


class KombuPublisher:
    """Publishes JSON bodies to durable queues through the default exchange."""

    def __init__(self, broker_url: str):
        self._conn = KombuConnection(broker_url)
        self._declared: set[str] = set()

    def publish(self, queue: str, body: str, event_id: str) -> None:
        producer = self._conn.Producer(serializer=None)
        declare = [] if queue in self._declared else [Queue(queue, Exchange(""), routing_key=queue, durable=True)]
        producer.publish(body.encode("utf-8"), routing_key=queue, exchange="", content_type="application/json",
                         content_encoding="utf-8", delivery_mode=2, declare=declare, retry=True,
                         retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5},
                         headers={"event_id": event_id})
        self._declared.add(queue)

    def close(self) -> None:
        self._conn.release()


def relay(engine: Engine, publisher, *, now: datetime, batch: int = 200) -> int:  # noqa: ANN001
    """Publish every unpublished outbox row, oldest first; returns how many were published."""
    total = 0
    while True:
        with engine.begin() as conn:
            stmt = select(outbox.c.id, outbox.c.queue, outbox.c.body, outbox.c.event_id).where(
                outbox.c.published_at.is_(None)).order_by(outbox.c.id).limit(batch)
            if conn.dialect.name == "postgresql":
                stmt = stmt.with_for_update(skip_locked=True)
            rows = conn.execute(stmt).all()
            for row in rows:
                publisher.publish(row.queue, row.body, row.event_id)
            if rows:
                conn.execute(update(outbox).where(outbox.c.id.in_([r.id for r in rows])).values(published_at=now))
        total += len(rows)
        if len(rows) < batch:
            return total
