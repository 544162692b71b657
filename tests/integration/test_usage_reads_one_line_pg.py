"""A decision's usage check reads the charges of its own line, not the whole month's, even early in a
month, when PostgreSQL's statistics still know no charges of it (SPEC: limits are per line and per
Passport ID; the cost of checking them must not grow with everyone else's purchases)."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from matomete_core.service.billing import _usage_by_passport

pytestmark = pytest.mark.integration

MONTH = "2026-08"


def _scans_of_charges(plan: dict) -> list[dict]:
    found = [plan] if plan.get("Relation Name") == "charges" else []
    for child in plan.get("Plans", []):
        found += _scans_of_charges(child)
    return found


def test_a_line_usage_check_reads_only_that_line_charges_while_the_month_statistics_are_stale(pg_deps):
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

    compiled = _usage_by_passport().compile(dialect=engine.dialect)
    params = compiled.construct_params({"month": MONTH, "customer_id": "L000000000007"})
    with engine.connect() as conn:
        cursor = conn.connection.driver_connection.cursor()
        cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + compiled.string, params)
        plan = cursor.fetchone()[0][0]["Plan"]
    scans = _scans_of_charges(plan)
    assert scans, plan
    read = sum(s.get("Actual Rows", 0) + s.get("Rows Removed by Filter", 0) + s.get("Rows Removed by Index Recheck", 0)
               for s in scans)
    assert read <= 10, f"the check read {read} charges for a line that has 10 this month: {scans}"
