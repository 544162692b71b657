"""Month close: ``close_month(M)`` turns a month that has ended into invoices.

Steps, each one transaction, each recorded in ``billing_months.step`` and each idempotent by a
unique key — so a second run, or a run after a crash at any point, gives the same invoices and
no duplicate charge:

  closing    M is marked closing: later charges dated in M go to the first open month (late)
  renewals   every subscription billable in M without a charge for it gets one  (subscription, month)
  terms      subscriptions whose term ends with M end; their providers are told   (event id)
  invoices   one invoice per invoiced account, items by provider and content       (account, month)
  published  a `charge` per renewal, an `invoice` per invoice: outbox batch rows    (event id)
  exported   invoices-M.jsonl and invoices-M.csv, written aside and renamed
  closed

Every step is a few set-based statements (INSERT … SELECT, GROUP BY): no Python loop per
subscription, memory flat with size. The two big ones, renewals and invoices, run on
PostgreSQL as ``CHUNKS`` transactions at once, each over the keys that hash to it (SQLite: one);
their step is recorded in a transaction of its own once every chunk has committed, so a rerun
after a failure redoes only what no committed chunk did.
"""

from __future__ import annotations

import csv
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Callable

from sqlalchemy import Connection, Engine, and_, exists, func, literal, select, text, true, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql import ColumnElement

from matomete_core.adapters.database import insert_ignore, release_close_lock, seize_month, try_close_lock
from matomete_core.adapters.tables import (
    billing_months, charges, contents, invoice_items, invoices, outbox, providers, purchases)
from matomete_core.calendar import add_months, month_start
from matomete_core.errors import MatometeError, MonthNotEnded
from matomete_core.rules.purchase import MONTHLY_FLAT
from matomete_core.service import billing, outbox as outbox_svc
from matomete_core.service.months import mark_closing
from matomete_core.service.invoices import TITLE, invoiced_accounts
from matomete_core.service.sqljson import SqlJson

STEPS = ("closing", "renewals", "terms", "invoices", "published", "exported", "closed")
CHUNKS = 2  # PostgreSQL: parallel transactions of a chunked step, one a core of the database machine
Progress = Callable[[str, int, int], None]
ChunkHook = Callable[[str, int], None]

__all__ = ["STEPS", "close_month", "close_due_months", "months_due", "CloseInProgress", "month_has_ended"]


class CloseInProgress(MatometeError, RuntimeError):
    """Another month close holds the close lock."""


def month_has_ended(month: str, now: datetime) -> bool:
    return now >= month_start(add_months(month, 1))


@dataclass(frozen=True)
class Chunk:
    """One of ``of`` parts of a chunked step: the rows whose key hashes to ``index``. Keyed by the
    group a rule works on (Passport ID and content, invoiced account), no group is ever split."""
    index: int
    of: int

    def holds(self, key: ColumnElement) -> ColumnElement:
        if self.of == 1:
            return true()
        return func.hashtext(key).op("&")(0x7FFFFFFF) % self.of == self.index  # & : hashtext may be negative


def _insert(conn: Connection, table, columns: list[str], query, *, skip_existing: bool = True) -> None:  # noqa: ANN001
    """INSERT … SELECT; ``skip_existing``: ON CONFLICT DO NOTHING, for a step whose query does not
    exclude what an earlier run of it inserted."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(table).from_select(columns, query.where(true()))  # SQLite: WHERE before ON CONFLICT
    conn.execute(stmt.on_conflict_do_nothing() if skip_existing else stmt)


def _analyze(conn: Connection, table) -> None:
    """PostgreSQL: the next step plans with the new rows counted. Once, after the chunks: two
    ANALYZEs of one table at once can fail."""
    if conn.dialect.name == "postgresql":
        conn.execute(text(f"ANALYZE {table.name}"))


def _in_chunks(engine: Engine, step: str, month: str, chunk_hook: ChunkHook | None) -> None:
    """Run the step's chunks, each in its own transaction, in parallel on PostgreSQL (SQLite: one
    chunk). Every chunk runs to its end even when another fails; the first failure is raised."""
    def run(chunk: Chunk) -> None:
        with engine.begin() as conn:
            CHUNK_WORK[step](conn, month, chunk)
            if chunk_hook:
                chunk_hook(step, chunk.index)

    of = CHUNKS if engine.dialect.name == "postgresql" else 1
    with ThreadPoolExecutor(max_workers=of, thread_name_prefix=f"close-{step}") as pool:
        for done in [pool.submit(run, Chunk(index, of)) for index in range(of)]:
            done.result()


def _step_of(conn: Connection, month: str) -> str | None:
    return conn.execute(select(billing_months.c.step).where(billing_months.c.month == month)).scalar()


def close_month(engine: Engine, month: str, *, now: datetime, export_dir: str | Path,
                progress: Progress | None = None, after_step: Callable[[str], None] | None = None,
                chunk_hook: ChunkHook | None = None) -> dict:
    """Close ``month``; returns ``{"month", "status", "charges", "invoices", "total"}``.
    ``after_step(step)`` runs after each step commits; ``chunk_hook(step, index)`` inside each
    chunk's transaction, before it commits (tests inject faults there)."""
    if not month_has_ended(month, now):
        raise MonthNotEnded(f"{month} has not ended yet (JST): it can be closed from {add_months(month, 1)}-01")
    with engine.connect() as lock_conn:
        if not try_close_lock(lock_conn):
            raise CloseInProgress(f"another month close is running; {month} was not touched")
        try:
            return _close(engine, month, now, Path(export_dir), progress, after_step, chunk_hook)
        finally:
            release_close_lock(lock_conn)
            lock_conn.commit()


def _close(engine: Engine, month: str, now: datetime, export_dir: Path, progress: Progress | None,
           after_step: Callable[[str], None] | None, chunk_hook: ChunkHook | None) -> dict:
    with engine.connect() as conn:
        done = _step_of(conn, month)
    start = STEPS.index(done) + 1 if done else 0
    for index, step in enumerate(STEPS[start:], start):
        if progress:
            progress(step, index, len(STEPS))
        if step == "exported":
            _export(engine, month, export_dir)
        if step in CHUNK_WORK:
            _in_chunks(engine, step, month, chunk_hook)
        with engine.begin() as conn:
            if step == "closing":
                seize_month(conn, month)
                mark_closing(conn, month, now=now)
            elif step in STEP_WORK:
                STEP_WORK[step](conn, month, now)
            values = {"step": step}
            if step == "closed":
                values.update(_totals(conn, month), status="closed", closed_at=now)
            conn.execute(update(billing_months).where(billing_months.c.month == month).values(**values))
        if after_step:
            after_step(step)
    if progress:
        progress("closed", len(STEPS), len(STEPS))
    with engine.connect() as conn:
        row = conn.execute(select(billing_months).where(billing_months.c.month == month)).mappings().one()
    return {"month": month, "status": row["status"], "charges": row["charges"], "invoices": row["invoices"],
            "total": row["total"]}


def _bill_renewals(conn: Connection, month: str, chunk: Chunk) -> None:
    """One chunk of renewals, by Passport ID and content: "once per Passport ID and content" stays
    inside the chunk."""
    due = billing.renewals_due(month).subquery()
    query = select(due.c.application_number, due.c.customer_id, due.c.passport_id, due.c.provider_id,
                   due.c.content_id, literal(month), literal(month), due.c.quantity, due.c.amount,
                   literal(False), due.c.dedupe_key).where(chunk.holds(due.c.dedupe_key))
    if conn.dialect.name == "postgresql":
        # the query reads charges while the chunks insert into it: a nested loop that scans charges
        # once a purchase (the planner's choice when it takes charges for empty) goes quadratic
        conn.execute(text("SET LOCAL enable_nestloop = off"))
    # renewals_due excludes what is billed already, so a rerun inserts nothing; the unique keys
    # (subscription, month) and (Passport ID and content, month) still stand guard
    _insert(conn, charges, ["application_number", "customer_id", "passport_id", "provider_id", "content_id",
                            "service_month", "billing_month", "quantity", "amount", "late", "dedupe_key"], query,
            skip_existing=False)


def _end_terms(conn: Connection, month: str, now: datetime) -> None:
    p = purchases.c
    ending = and_(p.price_type == MONTHLY_FLAT, p.term_months.is_not(None), p.cancelled_at.is_(None),
                  p.end_cause.is_(None), p.last_month == month)
    j = SqlJson(conn.dialect.name)
    event_id = literal("term-end-") + j.text(p.application_number)
    body = j.obj(type=literal("subscription_ended"), event_id=event_id,
                 application_number=j.text(p.application_number), order_id=p.order_id,
                 ended_at=literal(month_start(add_months(month, 1)).isoformat()), cause=literal("term_end"))
    _insert(conn, outbox, ["event_id", "queue", "body", "created_at"],
            select(event_id, literal("provider-results.") + p.provider_id, j.text(body), literal(now, type_=outbox.c.created_at.type)).where(ending))
    conn.execute(update(purchases).where(ending).values(end_cause="term_end"))


def _renewals_billed(conn: Connection, month: str, now: datetime) -> None:
    """After every renewal chunk: the invoice items plan with the new charges counted."""
    _analyze(conn, charges)


def _make_invoices(conn: Connection, month: str, chunk: Chunk) -> None:
    """One chunk of invoices, by invoiced account: the items by provider and content, then each
    invoice as the sum of its items, in one transaction — so an account has both or neither, and
    only a chunk some of whose accounts have an invoice already (a rerun) has anything to skip."""
    rerun = conn.execute(select(exists().where(invoices.c.month == month,
                                               chunk.holds(invoices.c.billing_account)))).scalar()
    acct = invoiced_accounts(month).subquery()
    c = charges.c
    items = select(acct.c.account, literal(month), c.provider_id, c.content_id, func.sum(c.quantity), func.sum(c.amount)
                   ).join(acct, acct.c.customer_id == c.customer_id
                   ).where(c.billing_month == month, c.voided_at.is_(None), chunk.holds(acct.c.account)
                   ).group_by(acct.c.account, c.provider_id, c.content_id)
    _insert(conn, invoice_items, ["billing_account", "month", "provider_id", "content_id", "quantity", "amount"], items,
            skip_existing=rerun)
    ii = invoice_items.c
    totals = select(ii.billing_account, ii.month, func.sum(ii.amount)).where(
        ii.month == month, chunk.holds(ii.billing_account)).group_by(ii.billing_account, ii.month)
    _insert(conn, invoices, ["billing_account", "month", "total"], totals, skip_existing=rerun)


def _invoices_made(conn: Connection, month: str, now: datetime) -> None:
    """After every invoice chunk: the export plans with the new rows counted."""
    _analyze(conn, invoice_items)
    _analyze(conn, invoices)


def _publish(conn: Connection, month: str, now: datetime) -> None:
    """A `charge` for every renewal this close billed and an `invoice` for every invoice: two
    outbox batch rows, which the relay expands (see service.outbox.expand)."""
    for kind in (outbox_svc.RENEWAL_CHARGES, outbox_svc.INVOICES):
        insert_ignore(conn, outbox, **outbox_svc.batch_row(kind, month, now=now))


def _export(engine: Engine, month: str, export_dir: Path) -> None:
    """invoices-M.jsonl (one invoice a line) and invoices-M.csv (one item a row), from one ordered
    stream of the month's items; written aside, flushed, then renamed — memory stays flat. The
    stream carries ids; provider and content names come from the catalog, read once."""
    export_dir.mkdir(parents=True, exist_ok=True)
    jsonl, csv_path = export_dir / f"invoices-{month}.jsonl", export_dir / f"invoices-{month}.csv"
    tmp_jsonl, tmp_csv = jsonl.with_suffix(".jsonl.part"), csv_path.with_suffix(".csv.part")
    ii, i = invoice_items.c, invoices.c
    rows = select(ii.billing_account, i.total, ii.provider_id, ii.content_id, ii.quantity, ii.amount
                  ).join(invoices, and_(i.billing_account == ii.billing_account, i.month == ii.month)
                  ).where(ii.month == month).order_by(ii.billing_account, ii.provider_id, ii.content_id)
    catalog = select(contents.c.provider_id, contents.c.content_id, providers.c.name, contents.c.name).join(
        providers, providers.c.provider_id == contents.c.provider_id)
    with engine.connect() as conn, open(tmp_jsonl, "w", encoding="utf-8") as fj, \
            open(tmp_csv, "w", encoding="utf-8", newline="") as fc:
        names = {(pid, cid): (pname, cname) for pid, cid, pname, cname in conn.execute(catalog)}
        writer = csv.writer(fc)
        encode = json.JSONEncoder(ensure_ascii=False).encode  # json.dumps with options builds one a call
        writer.writerow(["billing_account", "month", "title", "total", "provider_id", "provider_name",
                         "content_id", "content_name", "quantity", "amount"])
        current: dict | None = None
        for batch in conn.execution_options(stream_results=True, yield_per=10_000).execute(rows).partitions():
            for account, total, pid, cid, qty, amount in batch:
                pname, cname = names[pid, cid]
                if current is None or current["billing_account"] != account:
                    if current is not None:
                        fj.write(encode(current) + "\n")
                    current = {"billing_account": account, "month": month, "title": TITLE, "total": total,
                               "items": []}
                current["items"].append({"provider_id": pid, "provider_name": pname, "content_id": cid,
                                         "content_name": cname, "quantity": qty, "amount": amount})
                writer.writerow((account, month, TITLE, total, pid, pname, cid, cname, qty, amount))
        if current is not None:
            fj.write(encode(current) + "\n")
        for f in (fj, fc):
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp_jsonl, jsonl)
    os.replace(tmp_csv, csv_path)


def _totals(conn: Connection, month: str) -> dict:
    c = charges.c
    n_charges = conn.execute(select(func.count()).where(c.billing_month == month, c.voided_at.is_(None))).scalar_one()
    n_invoices, total = conn.execute(select(func.count(), func.coalesce(func.sum(invoices.c.total), 0))
                                     .where(invoices.c.month == month)).one()
    return {"charges": n_charges, "invoices": n_invoices, "total": int(total)}


CHUNK_WORK = {"renewals": _bill_renewals, "invoices": _make_invoices}  # before the step's own transaction
STEP_WORK = {"renewals": _renewals_billed, "terms": _end_terms, "invoices": _invoices_made, "published": _publish}


def months_due(engine: Engine, *, now: datetime, close_hour: int) -> list[str]:
    """Months that have ended, whose close time (the 1st of the next month at ``close_hour`` JST)
    has passed, and that are not closed yet — from the first month anything was bought in.
    Level-triggered: a missed tick or a beat that was down still finds them."""
    with engine.connect() as conn:
        first = conn.execute(select(func.min(purchases.c.start_month))).scalar()
        closed = set(conn.execute(select(billing_months.c.month).where(billing_months.c.status == "closed")).scalars())
    due, month = [], first
    while month is not None and now >= month_start(add_months(month, 1)) + timedelta(hours=close_hour):
        if month not in closed:
            due.append(month)
        month = add_months(month, 1)
    return due


def close_due_months(engine: Engine, *, now: datetime, close_hour: int, export_dir: str | Path,
                     progress: Callable[[str, str, int, int], None] | None = None) -> list[dict]:
    """Close every month due; ``progress(month, step, done, total)`` as ``close_month``'s, with the month."""
    return [close_month(engine, m, now=now, export_dir=export_dir,
                        progress=None if progress is None else partial(progress, m))
            for m in months_due(engine, now=now, close_hour=close_hour)]
