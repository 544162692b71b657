"""A decision reads the rows of its own line, order and message, not everyone's — also while
PostgreSQL's statistics are stale (early in a month, before autoanalyze), when the planner believes
the tables small. Its cost must not grow with everyone else's purchases:

* a usage check (SPEC: limits are per line and per Passport ID) reads its line's charges of the
  month, not the whole month's — the one-message check and a micro-batch's, which asks about a few
  hundred lines at once;
* a micro-batch's duplicate checks read its own orders and message ids, not all of the provider's.

Each test reads the row counts of EXPLAIN ANALYZE, never timings."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from matomete_core.service.batch import _PLAN_FOR_THE_BATCH, _reads
from matomete_core.service.billing import _usage_by_passport

pytestmark = pytest.mark.integration

MONTH = "2026-08"


@pytest.fixture
def stale_month(pg_deps):
    """5,000 charges in MONTH on 500 lines (10 each), all made after the last ANALYZE."""
    engine = pg_deps.engine
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO purchases (provider_id, order_id, passport_id, customer_id, content_id, price_type,"
            " unit_price, quantity, purchased_at, start_month, last_month) "
            "SELECT 'PB', 'early-' || i, 'p' || (i % 500), 'L' || lpad((i % 500)::text, 12, '0'), 'coin', 'per_use',"
            " 10, 1, '2026-07-15T12:00:00+09', '2026-07', '2026-07' FROM generate_series(1, 5000) i"))
        conn.execute(text(
            "INSERT INTO charges (application_number, customer_id, passport_id, provider_id, content_id,"
            " service_month, billing_month, quantity, amount, late) "
            "SELECT application_number, customer_id, passport_id, 'PB', 'coin', '2026-07', '2026-07', 1, 10, false"
            " FROM purchases WHERE order_id LIKE 'early-%'"))
    with engine.connect() as conn:  # statistics taken before this month's first charge
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("ANALYZE charges"))
    with engine.begin() as conn:  # then the month fills up: 5,000 charges on 500 lines
        conn.execute(text(
            "INSERT INTO charges (application_number, customer_id, passport_id, provider_id, content_id,"
            " service_month, billing_month, quantity, amount, late) "
            "SELECT application_number, customer_id, passport_id, 'PB', 'coin', :m, :m, 1, 10, false"
            " FROM purchases WHERE order_id LIKE 'early-%'"), {"m": MONTH})
    return engine


def _rows_read(engine, stmt, values: dict, *, batch: bool = False, table: str = "charges") -> tuple[int, list]:  # noqa: ANN001
    """How many rows of ``table`` the statement's plan read (kept or filtered out), and its rows."""
    compiled = stmt.compile(dialect=engine.dialect)
    params = compiled.construct_params(values)
    with engine.begin() as conn:
        if batch:
            conn.execute(_PLAN_FOR_THE_BATCH)
        cursor = conn.connection.driver_connection.cursor()
        cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + compiled.string, params)
        plan = cursor.fetchone()[0][0]["Plan"]
        cursor.execute(compiled.string, params)
        rows = cursor.fetchall()

    def scans(node: dict) -> list[dict]:
        found = [node] if node.get("Relation Name") == table else []
        for child in node.get("Plans", []):
            found += scans(child)
        return found
    found = scans(plan)
    assert found, plan
    # per loop in EXPLAIN: a scan run once per line reports each line's average
    return sum((s.get("Actual Rows", 0) + s.get("Rows Removed by Filter", 0) + s.get("Rows Removed by Index Recheck", 0))
               * s.get("Actual Loops", 1) for s in found), rows


def test_a_line_usage_check_reads_only_that_line_charges_while_the_month_statistics_are_stale(stale_month):
    read, rows = _rows_read(stale_month, _usage_by_passport(), {"month": MONTH, "customer_id": "L000000000007"})
    assert sum(amount for _, amount in rows) == 100
    assert read <= 10, f"the check read {read} charges for a line that has 10 this month"


def test_a_batch_usage_check_reads_only_its_lines_charges_while_the_month_statistics_are_stale(stale_month):
    lines = [f"L{n:012d}" for n in range(0, 500, 10)]  # 50 lines, 10 charges each this month
    read, rows = _rows_read(stale_month, _reads(True)["usage"], {"month": MONTH, "customers": lines}, batch=True)
    assert {line for line, _, _ in rows} == set(lines) and sum(amount for _, _, amount in rows) == 50 * 100
    assert read <= 50 * 10, f"the batch's check read {read} charges for 50 lines that have 500 this month"


def test_a_batch_duplicate_check_reads_only_its_own_orders_and_message_ids_while_the_statistics_are_stale(pg_deps):
    engine = pg_deps.engine  # 5,000 purchases of one provider, never analyzed
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO purchases (provider_id, order_id, passport_id, customer_id, content_id, price_type,"
            " unit_price, quantity, purchased_at, start_month, last_month) "
            "SELECT 'PB', 'o-' || i, 'p' || (i % 500), 'L' || lpad((i % 500)::text, 12, '0'), 'coin', 'per_use',"
            " 10, 1, '2026-07-15T12:00:00+09', '2026-07', '2026-07' FROM generate_series(1, 5000) i"))
        conn.execute(text(
            "INSERT INTO inbox (sender, message_id, task, content_hash, order_id, decision, received_at) "
            "SELECT 'PB', 'm-' || i, 'matomete.purchase', md5(i::text) || md5(i::text), 'o-' || i,"
            " '{\"status\": \"accepted\"}', now() FROM generate_series(1, 5000) i"))
    batch = list(range(4990, 5040))  # 50 messages: 11 of them seen before
    values = {"providers": ["PB"] * len(batch), "orders": [f"o-{i}" for i in batch],
              "ids": [f"m-{i}" for i in batch], "passports": ["p1"], "first": "2026-08"}
    for table in ("purchases", "inbox"):
        read, rows = _rows_read(engine, _reads(True)["facts"], values, batch=True, table=table)
        assert sorted(key for kind, _, key in rows if kind == "taken") == [f"o-{i}" for i in range(4990, 5001)]
        assert sorted(key for kind, _, key in rows if kind == "seen") == [f"m-{i}" for i in range(4990, 5001)]
        assert read <= len(batch), f"the batch's check read {read} rows of {table} for {len(batch)} messages"
