"""Statements sent together (``adapters.database.pipelined``): one round trip to PostgreSQL, and
the same rows, the same locks and the same errors as one statement after another."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, bindparam, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from matomete_core.adapters.database import inserting, is_transient, locking_line, make_engine, pipelined
from matomete_core.adapters.migrate import upgrade
from matomete_core.adapters.tables import billing_months, lines

pytestmark = pytest.mark.integration

_RESTRICTED = select(lines.c.customer_id, lines.c.restricted).where(lines.c.customer_id == bindparam("customer_id"))
AT = datetime(2026, 10, 1, tzinfo=timezone.utc)
_SHUT = select(billing_months.c.month).order_by(billing_months.c.month)
AUGUST, SEPTEMBER = ({"month": "2026-08", "status": "closed", "closing_at": AT},
                     {"month": "2026-09", "status": "closing", "closing_at": AT})


@pytest.fixture
def engine(pg_url):
    upgrade(pg_url)
    engine = make_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE lines, billing_months CASCADE"))
        conn.execute(lines.insert().values(customer_id="CAF00000001", access_service="flets_hikari_next",
                                           access_key_hash="x", line_limit=50_000, restricted=False))
    yield engine
    engine.dispose()


def test_a_read_sent_with_a_lock_sees_what_the_locks_previous_holder_committed(engine):
    """Each statement of a pipeline runs on its own snapshot: the read after the line's lock is not
    the stale view of the moment the pipeline was sent (as one statement doing both would be)."""
    holder = engine.connect()
    holder.begin()
    holder.execute(update(lines).values(restricted=True))  # holds the line's row lock, uncommitted
    seen: list = []

    def decide() -> None:
        with engine.begin() as conn:
            seen.extend(pipelined(conn, locking_line(conn.dialect.name, "CAF00000001"),
                                  (_RESTRICTED, {"customer_id": "CAF00000001"})))

    waiting = threading.Thread(target=decide)
    waiting.start()
    time.sleep(0.5)
    assert waiting.is_alive() and seen == []  # still waiting for the lock
    holder.commit()
    holder.close()
    waiting.join(timeout=10)
    locked, read = seen
    assert locked[0].restricted is True and read[0].restricted is True


def test_pipelined_statements_return_the_rows_of_each_in_order(engine):
    with engine.begin() as conn:
        done = pipelined(conn, *inserting(conn.dialect.name, billing_months, [AUGUST, SEPTEMBER]),
                         (_SHUT, {}), (_RESTRICTED, {"customer_id": "nobody"}))
    assert done[0] == [] and [r.month for r in done[1]] == ["2026-08", "2026-09"] and done[2] == []


def test_a_failed_statement_raises_as_sqlalchemy_would_and_the_transaction_rolls_back(engine):
    with pytest.raises(IntegrityError):
        with engine.begin() as conn:
            pipelined(conn, *inserting(conn.dialect.name, billing_months, [AUGUST]),
                      *inserting(conn.dialect.name, billing_months, [AUGUST]))
    with engine.connect() as conn:
        assert conn.execute(_SHUT).all() == []


def test_a_lost_connection_is_transient_and_the_next_transaction_reconnects(engine):
    with pytest.raises(DBAPIError) as lost:
        with engine.begin() as conn:
            pipelined(conn, (text("SELECT pg_terminate_backend(pg_backend_pid())"), {}), (_SHUT, {}))
    assert is_transient(lost.value) and lost.value.connection_invalidated
    with engine.begin() as conn:
        assert pipelined(conn, (_SHUT, {})) == [[]]


def test_work_sent_first_on_a_connection_is_committed_by_its_commit(engine):
    """As SQLAlchemy's own execute would: the pipeline begins the transaction SQLAlchemy commits
    ("commit as you go"), so the work is neither lost to the pool's rollback nor left open."""
    with engine.connect() as conn:
        pipelined(conn, *inserting(conn.dialect.name, billing_months, [AUGUST]))
        assert conn.in_transaction()
        conn.commit()
    with engine.connect() as conn:
        assert [r.month for r in conn.execute(_SHUT)] == ["2026-08"]


def test_an_insert_that_would_need_a_python_side_default_is_refused(engine):
    """SQLAlchemy fills such a default in the execution path pipelined skips: refused rather than
    written as NULL."""
    table = Table("stamped", MetaData(), Column("id", Integer, primary_key=True), Column("note", String(10)),
                  Column("kind", String(10), default="plain"))
    with engine.begin() as conn, pytest.raises(TypeError, match="kind"):
        pipelined(conn, (table.insert(), {"id": 1, "note": "x"}))


def test_on_sqlite_the_statements_run_one_after_another_with_the_same_rows(tmp_path):
    url = f"sqlite:///{tmp_path / 'pipelined.db'}"
    upgrade(url)
    engine = make_engine(url)
    with engine.begin() as conn:
        done = pipelined(conn, *inserting(conn.dialect.name, billing_months, [AUGUST, SEPTEMBER]), (_SHUT, {}))
    assert done[0] == [] and [r.month for r in done[1]] == ["2026-08", "2026-09"]


def test_inserted_rows_keep_their_text_and_times_exactly_and_a_naive_time_is_refused(engine):
    from zoneinfo import ZoneInfo

    from matomete_core.adapters.tables import outbox

    row = {"event_id": "e-1", "queue": "provider-results.PA", "created_at": datetime(
               2026, 11, 3, 10, 15, 0, 250001, tzinfo=ZoneInfo("Asia/Tokyo")),
           "body": '{"name": "コイン\\u2028「引用」\\"\\\\", "tab": "\t", "emoji": "🎫"}'}
    with engine.begin() as conn:
        pipelined(conn, *inserting(conn.dialect.name, outbox, [row]))
        kept = conn.execute(select(outbox.c.body, outbox.c.created_at)).one()
    assert kept.body == row["body"] and kept.created_at == row["created_at"]
    with pytest.raises(TypeError) as naive:
        inserting("postgresql", outbox, [{**row, "created_at": datetime(2026, 11, 3, 10, 15)}])
    assert "naive" in str(naive.value.__cause__)
