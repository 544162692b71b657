"""Published outbox rows are kept MATOMETE_OUTBOX_RETENTION_DAYS (default 7), then beat prunes
them, a chunk a transaction; a row not published yet stays however old (the relay still owes it)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import insert, select

from matomete_core.adapters.tables import outbox
from matomete_core.config import Settings
from matomete_core.service import housekeeping, outbox as outbox_svc
from matomete_core.service.deps import Deps
from matomete_core.testing import jst

NOW = jst("2026-11-20 04:30")


def _rows(deps: Deps, rows: dict[str, tuple[datetime, datetime | None]], batch: str | None = None) -> None:
    """event_id: (created_at, published_at)."""
    with deps.engine.begin() as conn:
        conn.execute(insert(outbox), [{"event_id": event_id, "queue": "billing-records", "body": "{}",
                                       "created_at": created, "published_at": published, "batch": batch}
                                      for event_id, (created, published) in rows.items()])


def _left(deps: Deps) -> set[str]:
    with deps.engine.connect() as conn:
        return set(conn.execute(select(outbox.c.event_id)).scalars())


def published_rows_past_the_retention_are_pruned_and_no_other(deps: Deps) -> None:
    """The scenario, on whichever database ``deps`` has (the integration tier runs it on PostgreSQL)."""
    day = timedelta(days=1)
    _rows(deps, {"old": (NOW - 9 * day, NOW - 8 * day),
                 "just-old": (NOW - 8 * day, NOW - 7 * day - timedelta(seconds=1)),
                 "recent": (NOW - 8 * day, NOW - 6 * day),  # created long ago, published within the week
                 "never-published": (NOW - 30 * day, None)})
    _rows(deps, {"invoices-2026-09": (NOW - 60 * day, NOW - 50 * day)}, batch="invoices")  # a close's batch row

    assert housekeeping.prune_outbox(deps, now=NOW) == 3
    assert _left(deps) == {"recent", "never-published"}
    assert housekeeping.prune_outbox(deps, now=NOW) == 0  # again: nothing more


def test_published_outbox_rows_past_the_retention_are_pruned_and_unpublished_ones_stay(deps):
    published_rows_past_the_retention_are_pruned_and_no_other(deps)


def test_pruning_goes_a_chunk_a_transaction_until_none_is_left(deps):
    _rows(deps, {f"e-{i}": (NOW - timedelta(days=20), NOW - timedelta(days=10)) for i in range(7)})
    _rows(deps, {"recent": (NOW, NOW)})
    assert outbox_svc.prune(deps.engine, published_before=NOW - timedelta(days=7), chunk=3) == 7
    assert _left(deps) == {"recent"}


def test_the_retention_comes_from_the_environment(monkeypatch):
    assert Settings().outbox_retention == timedelta(days=7)
    monkeypatch.setenv("MATOMETE_OUTBOX_RETENTION_DAYS", "30")
    assert Settings.from_env().outbox_retention == timedelta(days=30)


def test_beat_prunes_the_outbox_daily_on_the_housekeeping_queue():
    from workers.app import HOUSEKEEPING_QUEUE, ROUTES, create_app

    [entry] = [e for e in create_app(Settings()).conf.beat_schedule.values() if e["task"] == "matomete.prune_outbox"]
    assert (entry["schedule"].hour, entry["schedule"].minute) == ({4}, {30})  # JST: the app's timezone
    assert ROUTES["matomete.prune_outbox"] == HOUSEKEEPING_QUEUE
