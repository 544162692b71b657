"""The outbox: outbound messages written in the same transaction as the state they describe.

A relay publishes them after commit, at least once; each carries an ``event_id`` for consumers
to de-duplicate.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel
from sqlalchemy import Connection, insert

from matomete_core.adapters.tables import outbox

BILLING_RECORDS = "billing-records"


def provider_results(provider_id: str) -> str:
    return f"provider-results.{provider_id}"


def new_event_id() -> str:
    return str(uuid.uuid4())


def emit(conn: Connection, queue: str, event: BaseModel, *, now: datetime) -> None:
    """Write an outbound event (which already carries its event_id) for the relay."""
    conn.execute(insert(outbox).values(event_id=event.event_id, queue=queue,
                                       body=event.model_dump_json(), created_at=now))


def emit_many(conn: Connection, rows: list[tuple[str, BaseModel]], *, now: datetime) -> None:
    if rows:
        conn.execute(insert(outbox), [
            {"event_id": e.event_id, "queue": q, "body": e.model_dump_json(), "created_at": now} for q, e in rows])
