"""The outbox: outbound messages written in the same transaction as the state they describe.

A relay publishes them after commit, at least once; each carries an ``event_id`` for consumers
to de-duplicate. Published rows are kept for a while (for an operator asking what went out, and
when), then pruned.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from typing import Any, NamedTuple

from pydantic import BaseModel
from sqlalchemy import Connection, Engine, Executable, delete, exists, literal, select

from matomete_core.adapters.database import inserting, pipelined
from matomete_core.adapters.tables import charges, invoices, outbox, purchases
from matomete_core.messages import ChargeRecord

BILLING_RECORDS = "billing-records"


def provider_results(provider_id: str) -> str:
    return f"provider-results.{provider_id}"


def new_event_id() -> str:
    return str(uuid.uuid4())


class Written(NamedTuple):
    event_id: str
    queue: str
    body: str


_tracked: ContextVar[list[Written] | None] = ContextVar("outbox_tracked", default=None)


@contextmanager
def track() -> Iterator[list[Written]]:
    """Collect the rows emitted inside, so that whoever commits them can publish them at once
    (adapters.relay.publish_written) instead of reading them back."""
    rows: list[Written] = []
    token = _tracked.set(rows)
    try:
        yield rows
    finally:
        _tracked.reset(token)


def emit(conn: Connection, queue: str, event: BaseModel, *, now: datetime) -> None:
    """Write an outbound event (which already carries its event_id) for the relay."""
    emit_many(conn, [(queue, event)], now=now)


def emit_many(conn: Connection, rows: list[tuple[str, BaseModel]], *, now: datetime) -> None:
    pipelined(conn, *emitting(conn.dialect.name, rows, now=now))


def emitting(dialect_name: str, rows: list[tuple[str, BaseModel]], *, now: datetime) -> list[tuple[Executable, Any]]:
    """emit_many's statement, to run with others in the same transaction (``database.pipelined``)."""
    written = [Written(e.event_id, q, e.model_dump_json()) for q, e in rows]
    tracked = _tracked.get()
    if tracked is not None:
        tracked.extend(written)
    return inserting(dialect_name, outbox, [{"event_id": w.event_id, "queue": w.queue, "body": w.body,
                                             "created_at": now} for w in written])


# ---- batches: one row, many messages, built as the relay goes --------------------------------

RENEWAL_CHARGES, INVOICES = "renewal_charges", "invoices"


def batch_row(kind: str, month: str, *, now: datetime) -> dict[str, Any]:
    return {"event_id": f"{kind}-{month}", "queue": BILLING_RECORDS, "body": json.dumps({"month": month}),
            "batch": kind, "created_at": now}


def expand(conn: Connection, kind: str, spec: dict, cursor: str | None, *, limit: int) -> tuple[list[tuple[str, str]], str | None]:
    """The next ``limit`` messages of a batch after ``cursor``: [(event_id, body)], new cursor."""
    return _EXPANDERS[kind](conn, spec["month"], cursor, limit)


def _renewal_charges(conn: Connection, month: str, cursor: str | None, limit: int):  # noqa: ANN202
    from matomete_core.service.invoices import invoiced_accounts

    c, p = charges.c, purchases.c
    acct = invoiced_accounts(month).subquery()
    rows = conn.execute(
        select(c.id, c.application_number, c.customer_id, acct.c.billing_account, c.passport_id, c.provider_id,
               c.content_id, c.billing_month, c.quantity, c.amount, c.late)
        .join(acct, acct.c.customer_id == c.customer_id)
        .where(c.billing_month == month, c.service_month == month, c.id > int(cursor or 0),
               exists().where(p.application_number == c.application_number, p.start_month < month))
        .order_by(c.id).limit(limit)).all()
    events = [(f"charge-{r.id}", ChargeRecord(
        event_id=f"charge-{r.id}", application_number=str(r.application_number), customer_id=r.customer_id,
        billing_account=r.billing_account, passport_id=r.passport_id, provider_id=r.provider_id,
        content_id=r.content_id, month=r.billing_month, quantity=r.quantity, amount=r.amount, late=r.late,
    ).model_dump_json()) for r in rows]
    return events, str(rows[-1].id) if rows else cursor


def _invoices(conn: Connection, month: str, cursor: str | None, limit: int):  # noqa: ANN202
    from matomete_core.service.invoices import invoice_json
    from matomete_core.service.sqljson import SqlJson

    j, i = SqlJson(conn.dialect.name), invoices.c
    event_id = literal(f"invoice-{month}-") + i.billing_account
    rows = conn.execute(
        select(i.billing_account, event_id, j.text(invoice_json(j, month, type=literal("invoice"), event_id=event_id)))
        .where(i.month == month, i.billing_account > (cursor or "")).order_by(i.billing_account).limit(limit)).all()
    return [(r[1], r[2]) for r in rows], rows[-1][0] if rows else cursor


_EXPANDERS = {RENEWAL_CHARGES: _renewal_charges, INVOICES: _invoices}


def prune(engine: Engine, *, published_before: datetime, chunk: int = 5_000) -> int:
    """Delete the rows published before ``published_before``, oldest first, ``chunk`` a transaction
    (a long backlog never holds one long transaction or lock); returns how many. A row not
    published yet stays, however old: the relay still owes it."""
    oldest = select(outbox.c.id).where(outbox.c.published_at < published_before).order_by(outbox.c.id).limit(chunk)
    total = 0
    while True:
        with engine.begin() as conn:
            gone = conn.execute(delete(outbox).where(outbox.c.id.in_(oldest.scalar_subquery()))).rowcount
        total += gone
        if gone < chunk:
            return total
