"""SPEC.md "Limits": usage of month M is what close would bill for M, checked per ID then per line."""

from __future__ import annotations

from sqlalchemy import update

from matomete_core.adapters.tables import lines, passport_ids
from matomete_core.service.views import passport_details
from tests.unit.conftest import jst

AT = jst("2026-08-10 12:00")


def set_limits(deps, *, line: int | None = None, **ids: int | None) -> None:
    with deps.engine.begin() as conn:
        if line is not None:
            conn.execute(update(lines).where(lines.c.customer_id == "CAF0000012573").values(line_limit=line))
        for pid, limit in ids.items():
            conn.execute(update(passport_ids).where(passport_ids.c.passport_id == pid).values(limit=limit))


def test_a_purchase_over_the_ids_own_limit_is_refused_passport_limit_exceeded(provider):
    # user02 has its own limit of 1,000 yen
    assert provider.buy("user02", "coin", AT, quantity=10)["status"] == "accepted"
    assert provider.buy("user02", "coin", AT, quantity=1)["reason"] == "PASSPORT_LIMIT_EXCEEDED"


def test_a_purchase_up_to_the_limit_exactly_is_accepted(provider):
    assert provider.buy("user02", "coin", AT, quantity=10)["status"] == "accepted"


def test_a_purchase_over_the_line_limit_is_refused_line_limit_exceeded(deps, provider):
    set_limits(deps, line=1000)
    provider.buy("user01", "coin", AT, quantity=5)
    assert provider.buy("user03", "coin", AT, quantity=6)["reason"] == "LINE_LIMIT_EXCEEDED"


def test_the_ids_limit_is_checked_before_the_lines(deps, provider):
    set_limits(deps, line=500)
    assert provider.buy("user02", "coin", AT, quantity=11)["reason"] == "PASSPORT_LIMIT_EXCEEDED"


def test_without_an_own_limit_only_the_line_limit_applies(deps, provider):
    set_limits(deps, line=50000)
    assert provider.buy("user01", "coin", AT, quantity=99)["status"] == "accepted"


def test_renewals_count_toward_usage_from_the_1st(deps, provider):
    set_limits(deps, line=1000)
    provider.buy("user01", "pack", jst("2026-07-20 12:00"))  # 525 yen, renews every month
    # in August the renewal is already usage: 525 + 500 > 1,000
    assert provider.buy("user03", "coin", jst("2026-08-01 00:05"), quantity=5)["reason"] == "LINE_LIMIT_EXCEEDED"
    assert provider.buy("user03", "coin", jst("2026-08-01 00:05"), quantity=4)["status"] == "accepted"


def test_a_1st_day_cancellation_removes_that_months_fee_from_usage(deps, provider):
    set_limits(deps, line=1000)
    provider.buy("user01", "pack", jst("2026-07-20 12:00"), order_id="pk", provider_id="PA")
    provider.cancel("pk", jst("2026-08-01 00:10"), provider_id="PA")
    assert provider.buy("user03", "coin", jst("2026-08-01 10:00"), quantity=10)["status"] == "accepted"


def test_a_same_month_repurchase_adds_nothing_to_usage(deps, provider):
    set_limits(deps, line=600)
    provider.buy("user01", "pack", AT, order_id="r1", provider_id="PA")
    provider.cancel("r1", jst("2026-08-11 12:00"), provider_id="PA")
    # 525 is already billed for August; buying again adds nothing and fits under 600
    assert provider.buy("user01", "pack", jst("2026-08-12 12:00"))["status"] == "accepted"
    assert passport_details(deps.engine, "user01", now=jst("2026-08-12 13:00"))["usage"] == 525


def test_a_voided_per_use_purchase_frees_its_usage(deps, provider):
    provider.buy("user02", "coin", AT, quantity=10, order_id="v1")
    provider.cancel("v1", jst("2026-08-10 12:30"))
    assert provider.buy("user02", "coin", AT, quantity=10)["status"] == "accepted"


def test_lowering_a_limit_cancels_nothing_but_blocks_new_purchases(deps, provider):
    provider.buy("user01", "anime1", AT)
    set_limits(deps, user01=100)
    assert passport_details(deps.engine, "user01", now=AT)["usage"] == 300
    assert provider.buy("user01", "coin", AT)["reason"] == "PASSPORT_LIMIT_EXCEEDED"


def test_usage_is_per_billing_month(deps, provider):
    provider.buy("user02", "coin", jst("2026-07-31 23:00"), quantity=10)
    assert provider.buy("user02", "coin", jst("2026-08-01 00:00"), quantity=10)["status"] == "accepted"
