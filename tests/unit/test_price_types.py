"""SPEC.md "Two price types": monthly flat and its 1st-day rule, per use — the guide's patterns.

Months are read through the statement, which for an open month shows what close would bill.
"""

from __future__ import annotations

from matomete_core.calendar import billing_month, last_billable_month
from matomete_core.service.views import statement
from tests.unit.conftest import jst

LINE = "CAF0000012573"
MONTHS = ["2026-07", "2026-08", "2026-09", "2026-10", "2026-11"]


def billed(deps, application_number: str) -> list[str]:
    """The months whose bill carries this application number."""
    return [m for m in MONTHS if any(r["application_number"] == application_number
                                     for r in statement(deps.engine, LINE, m)["rows"])]


def amounts(deps, passport_id: str) -> dict[str, int]:
    return {m: statement(deps.engine, LINE, m, passport_id=passport_id)["total_amount"] for m in MONTHS}


def test_pattern_1_buy_in_n_cancel_in_n_plus_2_bills_three_months(deps, provider):
    number = provider.buy("user01", "anime1", jst("2026-07-10 12:00"), order_id="p1")["application_number"]
    assert provider.cancel("p1", jst("2026-09-20 12:00"))["status"] == "accepted"
    assert billed(deps, number) == ["2026-07", "2026-08", "2026-09"]


def test_pattern_2_buy_and_never_cancel_bills_every_month_from_n(deps, provider):
    number = provider.buy("user01", "anime1", jst("2026-08-10 12:00"))["application_number"]
    assert billed(deps, number) == ["2026-08", "2026-09", "2026-10", "2026-11"]


def test_pattern_3_buy_and_cancel_in_the_same_month_bills_that_month(deps, provider):
    number = provider.buy("user01", "anime1", jst("2026-08-03 12:00"), order_id="p3")["application_number"]
    provider.cancel("p3", jst("2026-08-25 12:00"))
    assert billed(deps, number) == ["2026-08"]


def test_pattern_5_a_month_is_billed_once_per_passport_id_and_content(deps, provider):
    provider.buy("user01", "anime1", jst("2026-07-10 12:00"), order_id="p5a")
    provider.cancel("p5a", jst("2026-08-05 12:00"))
    second = provider.buy("user01", "anime1", jst("2026-08-20 12:00"), order_id="p5b")
    assert second["status"] == "accepted"
    provider.cancel("p5b", jst("2026-09-15 12:00"))
    assert amounts(deps, "user01") == {"2026-07": 300, "2026-08": 300, "2026-09": 300, "2026-10": 0, "2026-11": 0}


def test_pattern_6_cancel_on_the_1st_does_not_bill_that_month(deps, provider):
    number = provider.buy("user01", "anime1", jst("2026-08-10 12:00"), order_id="p6")["application_number"]
    provider.cancel("p6", jst("2026-09-01 00:30"))
    assert billed(deps, number) == ["2026-08"]


def test_bought_and_cancelled_on_the_same_1st_bills_that_month(deps, provider):
    number = provider.buy("user01", "anime1", jst("2026-08-01 09:00"), order_id="p7")["application_number"]
    provider.cancel("p7", jst("2026-08-01 18:00"))
    assert billed(deps, number) == ["2026-08"]


def test_a_repurchase_after_a_1st_day_cancellation_bills_the_new_month_once(deps, provider):
    provider.buy("user01", "anime1", jst("2026-08-10 12:00"), order_id="p8a")
    provider.cancel("p8a", jst("2026-09-01 00:10"))
    provider.buy("user01", "anime1", jst("2026-09-01 10:00"), order_id="p8b")
    assert amounts(deps, "user01")["2026-09"] == 300


def test_a_term_ends_the_subscription_after_its_nth_billed_month(deps, provider):
    number = provider.buy("user01", "trial", jst("2026-07-15 12:00"))["application_number"]
    assert billed(deps, number) == ["2026-07", "2026-08", "2026-09"]


def test_per_use_charges_unit_price_times_quantity_each_time(deps, provider):
    provider.buy("user01", "coin", jst("2026-08-10 12:00"), quantity=3)
    provider.buy("user01", "coin", jst("2026-08-11 12:00"), quantity=2)
    assert amounts(deps, "user01") == {"2026-07": 0, "2026-08": 500, "2026-09": 0, "2026-10": 0, "2026-11": 0}


def test_per_use_void_removes_the_charge_while_the_month_is_open(deps, provider):
    provider.buy("user01", "coin", jst("2026-08-10 12:00"), order_id="c1", quantity=3)
    assert provider.cancel("c1", jst("2026-08-10 13:00"))["status"] == "accepted"
    assert amounts(deps, "user01")["2026-08"] == 0
    voided = deps.publisher.bodies("billing-records") if deps.publisher.published else []
    assert voided == []  # nothing is published until the relay runs


def test_a_purchase_at_2026_08_31t20_00z_is_septembers():
    assert billing_month(jst("2026-09-01 05:00")) == "2026-09"
    from datetime import datetime, timezone
    assert billing_month(datetime(2026, 8, 31, 20, 0, tzinfo=timezone.utc)) == "2026-09"


def test_a_cancel_at_2026_09_30t18_00z_is_on_october_1st_so_october_is_not_billed():
    from datetime import datetime, timezone
    bought = datetime(2026, 9, 10, 3, 0, tzinfo=timezone.utc)
    cancelled = datetime(2026, 9, 30, 18, 0, tzinfo=timezone.utc)
    assert last_billable_month(bought, cancelled) == "2026-09"


def test_jst_boundaries_hold_end_to_end(deps, provider):
    from datetime import datetime, timezone
    utc = timezone.utc
    first = provider.buy("user01", "anime2", datetime(2026, 8, 31, 20, 0, tzinfo=utc), order_id="b1")
    assert first["billing_month"] == "2026-09"
    provider.cancel("b1", datetime(2026, 10, 31, 18, 0, tzinfo=utc))  # November 1st, 03:00 JST
    assert billed(deps, first["application_number"]) == ["2026-09", "2026-10"]
