"""Views (SPEC.md "Views", CONTRACT.md JSON outputs): ご利用明細, Passport ID details, お問合せ先一覧."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from matomete_core.errors import NotFound
from matomete_core.service.views import inquiries, passport_details, statement
from tests.unit.conftest import jst

LINE = "CAF0000012573"
STATEMENT_KEYS = {"customer_id", "month", "passport_id", "page", "pages", "total_count", "total_amount", "rows"}
ROW_KEYS = {"application_number", "passport_id", "provider_name", "content_name", "unit_price", "quantity",
            "amount", "price_type", "start_date", "end_date"}
PASSPORT_KEYS = {"passport_id", "customer_id", "status", "restricted", "limit", "line_limit", "month", "usage",
                 "registered_at", "line_status"}  # line_status: beyond CONTRACT.md, SPEC.md "Views"
PROVIDER_KEYS = {"provider_id", "name", "url", "phone", "hours"}


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def accepted(decision: dict) -> str:
    assert decision["status"] == "accepted", decision
    return decision["application_number"]


# ---- ご利用明細 -----------------------------------------------------------------------------------

def test_a_statement_has_exactly_the_contract_keys(deps, provider):
    # given a subscription and a per-use purchase of 3 coins in August
    sub = accepted(provider.buy("user01", "anime1", jst("2026-08-10 12:00")))
    coins = accepted(provider.buy("user02", "coin", jst("2026-08-11 12:00"), quantity=3))
    # when
    doc = statement(deps.engine, LINE, "2026-08")
    # then
    assert set(doc) == STATEMENT_KEYS
    assert {k: doc[k] for k in STATEMENT_KEYS - {"rows"}} == {
        "customer_id": LINE, "month": "2026-08", "passport_id": None, "page": 1, "pages": 1,
        "total_count": 2, "total_amount": 600}
    assert doc["rows"] == [
        {"application_number": sub, "passport_id": "user01", "provider_name": "B社", "content_name": "名作アニメ1",
         "unit_price": 300, "quantity": 1, "amount": 300, "price_type": "monthly_flat",
         "start_date": "2026-08-10", "end_date": None},
        {"application_number": coins, "passport_id": "user02", "provider_name": "B社", "content_name": "コイン",
         "unit_price": 100, "quantity": 3, "amount": 300, "price_type": "per_use",
         "start_date": "2026-08-11", "end_date": None},
    ]
    assert json.loads(json.dumps(doc, ensure_ascii=False)) == doc  # a JSON document as it is


def test_a_statement_shows_10_rows_a_page_sorted_by_application_number(deps, provider):
    # given 13 charges in August: 12 coins for user01, then a subscription for user02
    numbers = [accepted(provider.buy("user01", "coin", jst(f"2026-08-{day:02d} 12:00"))) for day in range(1, 13)]
    numbers.append(accepted(provider.buy("user02", "anime2", jst("2026-08-20 12:00"))))
    # when
    first = statement(deps.engine, LINE, "2026-08")
    second = statement(deps.engine, LINE, "2026-08", page=2)
    beyond = statement(deps.engine, LINE, "2026-08", page=3)
    # then
    assert (first["page"], first["pages"], first["total_count"], first["total_amount"]) == (1, 2, 13, 1500)
    assert (second["page"], second["pages"], second["total_count"], second["total_amount"]) == (2, 2, 13, 1500)
    assert len(first["rows"]) == 10 and len(second["rows"]) == 3
    shown = [r["application_number"] for r in first["rows"] + second["rows"]]
    assert shown == sorted(numbers, key=int)
    assert all(set(r) == ROW_KEYS for r in first["rows"] + second["rows"])
    assert beyond["rows"] == [] and beyond["total_count"] == 13


def test_exactly_10_rows_make_one_page(deps, provider):
    for day in range(1, 11):
        accepted(provider.buy("user01", "coin", jst(f"2026-08-{day:02d} 12:00")))
    doc = statement(deps.engine, LINE, "2026-08")
    assert (doc["pages"], len(doc["rows"])) == (1, 10)


def test_an_empty_statement_has_one_page_and_no_rows(deps):
    doc = statement(deps.engine, LINE, "2026-08")
    assert (doc["pages"], doc["total_count"], doc["total_amount"], doc["rows"]) == (1, 0, 0, [])


def test_the_passport_id_filter_shows_only_that_id(deps, provider):
    # given purchases by user01 and user02
    accepted(provider.buy("user01", "anime1", jst("2026-08-10 12:00")))
    mine = accepted(provider.buy("user02", "coin", jst("2026-08-11 12:00"), quantity=2))
    accepted(provider.buy("user01", "coin", jst("2026-08-12 12:00")))
    # when
    doc = statement(deps.engine, LINE, "2026-08", passport_id="user02")
    # then
    assert doc["passport_id"] == "user02"
    assert [(r["application_number"], r["passport_id"]) for r in doc["rows"]] == [(mine, "user02")]
    assert (doc["total_count"], doc["total_amount"], doc["pages"]) == (1, 200, 1)
    assert statement(deps.engine, LINE, "2026-08", passport_id="user03")["rows"] == []


def test_start_and_end_dates_are_jst_calendar_dates(deps, provider):
    # given a purchase at 2026-08-31T20:00Z, which is 2026-09-01 05:00 in Tokyo
    number = accepted(provider.buy("user01", "anime1", utc("2026-08-31T20:00:00"), order_id="late-aug"))
    # then it is September's, starting 2026-09-01, and active
    assert [r["application_number"] for r in statement(deps.engine, LINE, "2026-08")["rows"]] == []
    (row,) = statement(deps.engine, LINE, "2026-09")["rows"]
    assert (row["application_number"], row["start_date"], row["end_date"]) == (number, "2026-09-01", None)
    # when it is cancelled at 2026-10-31T16:00Z, which is 2026-11-01 01:00 in Tokyo
    assert provider.cancel("late-aug", utc("2026-10-31T16:00:00"))["status"] == "accepted"
    # then its end date is 2026-11-01, and (the 1st-day rule) November does not bill it
    (row,) = statement(deps.engine, LINE, "2026-10")["rows"]
    assert (row["start_date"], row["end_date"]) == ("2026-09-01", "2026-11-01")
    assert statement(deps.engine, LINE, "2026-11")["rows"] == []


def test_the_end_date_is_null_while_active_and_set_once_cancelled(deps, provider):
    accepted(provider.buy("user01", "pack", jst("2026-08-10 12:00"), order_id="pk"))
    assert statement(deps.engine, LINE, "2026-08")["rows"][0]["end_date"] is None
    provider.cancel("pk", jst("2026-08-25 23:30"), provider_id="PA")
    assert statement(deps.engine, LINE, "2026-08")["rows"][0]["end_date"] == "2026-08-25"


def test_an_open_month_includes_the_renewals_of_earlier_subscriptions(deps, provider):
    # given a subscription from August and a per-use purchase in August
    sub = accepted(provider.buy("user01", "anime1", jst("2026-08-10 12:00")))
    accepted(provider.buy("user01", "coin", jst("2026-08-11 12:00")))
    # when October (open, nothing charged in it yet) is shown
    doc = statement(deps.engine, LINE, "2026-10")
    # then it carries the renewal, with its original start date, and not the coin
    assert [(r["application_number"], r["amount"], r["start_date"], r["end_date"]) for r in doc["rows"]] == [
        (sub, 300, "2026-08-10", None)]
    assert (doc["total_count"], doc["total_amount"]) == (1, 300)
    assert statement(deps.engine, LINE, "2026-07")["rows"] == []


def test_a_renewal_of_another_line_is_not_shown(deps, provider):
    accepted(provider.buy("user01", "anime1", jst("2026-08-10 12:00")))
    assert statement(deps.engine, "CAF0000099999", "2026-10")["rows"] == []


def test_a_statement_of_an_unknown_customer_is_not_found(deps):
    with pytest.raises(NotFound):
        statement(deps.engine, "CAF0000000404", "2026-08")


# ---- Passport ID details --------------------------------------------------------------------------

def test_passport_details_have_exactly_the_contract_keys(deps):
    doc = passport_details(deps.engine, "user02", now=jst("2026-08-20 12:00"))
    assert set(doc) == PASSPORT_KEYS
    assert {k: v for k, v in doc.items() if k != "registered_at"} == {
        "passport_id": "user02", "customer_id": LINE, "status": "registered", "restricted": False,
        "limit": 1000, "line_limit": 10000, "month": "2026-08", "usage": 0, "line_status": "利用中"}
    assert datetime.fromisoformat(doc["registered_at"]) == jst("2019-04-01 10:00")
    assert json.loads(json.dumps(doc)) == doc


def test_passport_details_show_status_restriction_and_own_limit(deps):
    now = jst("2026-08-20 12:00")
    blocked = passport_details(deps.engine, "blocked1", now=now)
    newbie = passport_details(deps.engine, "newbie01", now=now)
    restricted_line = passport_details(deps.engine, "lineblk1", now=now)
    assert (blocked["status"], blocked["restricted"], blocked["limit"]) == ("registered", True, None)
    assert (newbie["status"], newbie["restricted"]) == ("registering", False)
    assert (restricted_line["customer_id"], restricted_line["line_limit"]) == ("CAF0000000002", 1000)


def test_usage_is_that_of_the_month_of_the_now_passed(deps, provider):
    # given user01: a subscription (300) and two coins (200) in August; user02 a coin
    accepted(provider.buy("user01", "anime1", jst("2026-08-10 12:00")))
    accepted(provider.buy("user01", "coin", jst("2026-08-12 12:00"), quantity=2))
    accepted(provider.buy("user02", "coin", jst("2026-08-12 13:00")))

    def seen(now: datetime) -> tuple[str, int]:
        doc = passport_details(deps.engine, "user01", now=now)
        return doc["month"], doc["usage"]

    # then August counts all three of user01's, later months the renewal only
    assert seen(jst("2026-08-20 12:00")) == ("2026-08", 500)
    assert seen(utc("2026-08-31T16:00:00")) == ("2026-09", 300)  # 2026-09-01 01:00 JST
    assert seen(jst("2026-10-05 12:00")) == ("2026-10", 300)
    assert seen(jst("2026-07-31 23:59")) == ("2026-07", 0)


def test_usage_drops_the_month_a_1st_day_cancel_does_not_bill(deps, provider):
    accepted(provider.buy("user01", "anime1", jst("2026-08-10 12:00"), order_id="a1"))
    provider.cancel("a1", jst("2026-09-01 00:30"))
    assert passport_details(deps.engine, "user01", now=jst("2026-09-10 12:00"))["usage"] == 0
    assert passport_details(deps.engine, "user01", now=jst("2026-08-31 12:00"))["usage"] == 300


def test_passport_details_of_an_unknown_id_are_not_found(deps):
    with pytest.raises(NotFound):
        passport_details(deps.engine, "nobody01", now=jst("2026-08-20 12:00"))


# ---- お問合せ先一覧 -------------------------------------------------------------------------------

def test_inquiries_list_only_the_providers_the_line_bought_from(deps, provider):
    # given a purchase from B社, and a refused one (restricted ID) from A社
    accepted(provider.buy("user01", "anime1", jst("2026-08-10 12:00")))
    assert provider.buy("blocked1", "pack", jst("2026-08-10 13:00"))["reason"] == "RESTRICTED"
    # when
    doc = inquiries(deps.engine, LINE)
    # then
    assert doc == {"customer_id": LINE, "providers": [
        {"provider_id": "PB", "name": "B社", "url": "https://b.example/support", "phone": "0120-111-111",
         "hours": "10:00-18:00"}]}


def test_inquiries_keep_a_provider_once_its_subscription_is_cancelled(deps, provider):
    accepted(provider.buy("user01", "anime1", jst("2026-08-10 12:00"), order_id="x1"))
    accepted(provider.buy("user02", "anime2", jst("2026-08-10 12:00")))
    accepted(provider.buy("user03", "pack", jst("2026-08-11 12:00"), order_id="x2"))
    provider.cancel("x1", jst("2026-08-12 12:00"))
    doc = inquiries(deps.engine, LINE)
    assert [p["provider_id"] for p in doc["providers"]] == ["PA", "PB"]
    assert all(set(p) == PROVIDER_KEYS for p in doc["providers"])
    assert doc["providers"][0] == {"provider_id": "PA", "name": "A社", "url": "https://a.example/help",
                                   "phone": "0120-000-000", "hours": "9:00-17:00"}


def test_a_line_that_bought_nothing_has_no_inquiries(deps, provider):
    accepted(provider.buy("user01", "anime1", jst("2026-08-10 12:00")))
    assert inquiries(deps.engine, "CAF0000000002") == {"customer_id": "CAF0000000002", "providers": []}


def test_inquiries_of_an_unknown_customer_are_not_found(deps):
    with pytest.raises(NotFound):
        inquiries(deps.engine, "CAF0000000404")
