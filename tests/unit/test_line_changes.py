"""SPEC.md "Line changes": what a termination ends and tells, what a change that continues keeps,
and where billing-number changes send the charges."""

from __future__ import annotations

from datetime import datetime

import pytest
from sqlalchemy import func, select, update

from matomete_core.adapters.relay import relay
from matomete_core.adapters.tables import charges, line_billing, lines, outbox, purchases
from matomete_core.service.months import mark_closing
from matomete_core.service.provider import billing_account_for
from matomete_core.service.views import passport_details, statement
from tests.unit.conftest import jst
from tests.unit.senders import LINE, Customer, OrderSystem

OLD_ACCOUNT, NEW_ACCOUNT = "06-1234-5678", "06-9999-0000"


@pytest.fixture
def orders(deps) -> OrderSystem:
    return OrderSystem(deps)


def accepted(decision: dict) -> str:
    assert decision["status"] == "accepted", decision
    return decision["application_number"]


def subscription(deps, number: str) -> dict:
    with deps.engine.connect() as conn:
        return dict(conn.execute(select(purchases).where(
            purchases.c.application_number == int(number))).mappings().one())


def outbox_rows(deps) -> int:
    with deps.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(outbox)).scalar_one()


def published(deps, queue: str, now: datetime) -> list[dict]:
    relay(deps.engine, deps.publisher, now=now)
    return deps.publisher.bodies(queue)


# ---- terminate ---------------------------------------------------------------------------------

def test_a_termination_mid_month_bills_that_month_and_none_after(deps, provider, orders):
    number = accepted(provider.buy("user01", "pack", jst("2026-07-20 12:00")))
    orders.change("line_cancellation", jst("2026-08-10 12:00"))
    sub = subscription(deps, number)
    assert (sub["cancelled_at"], sub["last_month"], sub["end_cause"]) == (
        jst("2026-08-10 12:00"), "2026-08", "line_change")
    assert statement(deps.engine, LINE, "2026-08")["total_amount"] == 525
    assert statement(deps.engine, LINE, "2026-09")["total_amount"] == 0


def test_a_termination_on_the_1st_does_not_bill_that_month(deps, provider, orders):
    number = accepted(provider.buy("user01", "pack", jst("2026-07-20 12:00")))
    orders.change("line_cancellation", jst("2026-09-01 00:00"))
    assert subscription(deps, number)["last_month"] == "2026-08"
    assert statement(deps.engine, LINE, "2026-08")["total_amount"] == 525
    assert statement(deps.engine, LINE, "2026-09")["total_amount"] == 0


def test_a_subscription_bought_on_the_1st_and_terminated_that_same_1st_bills_that_month(deps, provider, orders):
    number = accepted(provider.buy("user01", "pack", jst("2026-09-01 00:10")))
    orders.change("succession", jst("2026-09-01 18:00"))
    assert subscription(deps, number)["last_month"] == "2026-09"
    assert statement(deps.engine, LINE, "2026-09")["total_amount"] == 525


def test_a_term_subscription_ends_at_the_termination_when_that_comes_first(deps, provider, orders):
    number = accepted(provider.buy("user01", "trial", jst("2026-07-20 12:00")))  # 3 months: Jul..Sep
    orders.change("move_to_east", jst("2026-08-15 12:00"))
    assert subscription(deps, number)["last_month"] == "2026-08"


def test_each_provider_is_told_which_of_its_subscriptions_ended(deps, provider, orders):
    # given subscriptions at both providers, one already cancelled, and a per-use purchase
    pack = accepted(provider.buy("user01", "pack", jst("2026-07-20 12:00"), order_id="A-1"))
    anime1 = accepted(provider.buy("user01", "anime1", jst("2026-07-21 12:00"), order_id="B-1"))
    anime2 = accepted(provider.buy("user02", "anime2", jst("2026-07-22 12:00"), order_id="B-2"))
    accepted(provider.buy("user03", "anime1", jst("2026-07-23 12:00"), order_id="B-3"))
    provider.cancel("B-3", jst("2026-07-30 12:00"))
    accepted(provider.buy("user01", "coin", jst("2026-08-02 12:00"), order_id="B-4"))
    at = jst("2026-08-10 12:00")
    # when the line is cancelled
    orders.change("line_cancellation", at)
    # then each provider hears of its own active subscriptions, and only those
    ended = {q: [b for b in published(deps, q, at) if b["type"] == "subscription_ended"]
             for q in ("provider-results.PA", "provider-results.PB")}
    assert [(b["application_number"], b["order_id"], b["cause"]) for b in ended["provider-results.PA"]] == [
        (pack, "A-1", "line_change")]
    assert [(b["application_number"], b["order_id"], b["cause"]) for b in ended["provider-results.PB"]] == [
        (anime1, "B-1", "line_change"), (anime2, "B-2", "line_change")]
    assert {datetime.fromisoformat(b["ended_at"]) for bodies in ended.values() for b in bodies} == {at}
    assert len({b["event_id"] for bodies in ended.values() for b in bodies}) == 3


def test_per_use_purchases_stand_after_a_termination(deps, provider, orders):
    accepted(provider.buy("user01", "coin", jst("2026-08-02 12:00"), quantity=3))
    orders.change("line_cancellation", jst("2026-08-10 12:00"))
    assert statement(deps.engine, LINE, "2026-08")["total_amount"] == 300
    relay(deps.engine, deps.publisher, now=jst("2026-08-10 12:00"))
    assert [b["type"] for b in deps.publisher.bodies("billing-records")] == ["charge"]


def test_every_id_of_a_terminated_line_is_deleted_and_can_no_longer_buy(deps, provider, orders):
    at = jst("2026-08-10 12:00")
    orders.change("relocation", at, customer_id_changed=True)
    for pid in ("user01", "user02", "blocked1", "newbie01"):
        assert passport_details(deps.engine, pid, now=at)["status"] == "deleted"
        assert provider.buy(pid, "coin", jst("2026-08-10 12:01"))["reason"] == "LINE_TERMINATED"
    # another line is untouched
    assert passport_details(deps.engine, "prem01", now=at)["status"] == "registered"


def test_a_second_termination_is_accepted_and_changes_nothing(deps, provider, orders):
    number = accepted(provider.buy("user01", "pack", jst("2026-07-20 12:00")))
    orders.change("line_cancellation", jst("2026-08-10 12:00"))
    before, rows = subscription(deps, number), outbox_rows(deps)

    again = orders.change("succession", jst("2026-09-01 00:00"))

    assert (again["status"], again["reason"]) == ("accepted", None)
    assert subscription(deps, number) == before
    assert outbox_rows(deps) == rows
    with deps.engine.connect() as conn:
        assert conn.execute(select(lines.c.terminated_at).where(lines.c.customer_id == LINE)).scalar() == \
            jst("2026-08-10 12:00")


def test_a_redelivered_line_change_replays_its_decision_and_tells_no_provider_twice(deps, provider, orders):
    accepted(provider.buy("user01", "pack", jst("2026-07-20 12:00")))
    message = orders.message("line_cancellation", jst("2026-08-10 12:00"))
    first = orders.send(message, now=jst("2026-08-10 12:00"))
    rows = outbox_rows(deps)
    again = orders.send(message, now=jst("2026-08-10 12:05"))
    assert again == {**first, "replayed": True}
    assert outbox_rows(deps) == rows


def test_a_change_of_an_unknown_customer_is_rejected_unknown_customer(orders):
    decision = orders.change("line_cancellation", jst("2026-08-10 12:00"), customer_id="CAF0000000404")
    assert (decision["status"], decision["reason"]) == ("rejected", "UNKNOWN_CUSTOMER")


def test_a_subscription_bought_after_the_effective_time_ends_at_its_purchase(deps, provider, orders):
    # the purchase was decided before the order system's notice arrived
    number = accepted(provider.buy("user01", "pack", jst("2026-08-10 12:00")))
    orders.change("line_cancellation", jst("2026-07-31 18:00"), now=jst("2026-08-10 12:01"))
    sub = subscription(deps, number)
    assert (sub["cancelled_at"], sub["last_month"]) == (jst("2026-08-10 12:00"), "2026-08")


def test_a_late_charge_for_a_month_after_the_termination_is_voided_while_it_is_billed_in_an_open_month(
        deps, provider, orders):
    # given a subscription bought on Sep 30, decided on Nov 2 with Sep and Oct closed: charged late
    # for Sep and Oct, both billed in November
    for month in ("2026-09", "2026-10"):
        with deps.engine.begin() as conn:
            mark_closing(conn, month, now=jst("2026-11-01 03:00"))
    number = accepted(provider.buy("user01", "anime1", jst("2026-09-30 23:00"), now=jst("2026-11-02 10:00")))
    # when the line turns out to have been cancelled on Sep 30 at 23:30
    orders.change("line_cancellation", jst("2026-09-30 23:30"), now=jst("2026-11-02 11:00"))
    # then the October charge is voided and September's stands
    with deps.engine.connect() as conn:
        rows = conn.execute(select(charges.c.service_month, charges.c.voided_at).where(
            charges.c.application_number == int(number)).order_by(charges.c.service_month)).all()
    assert [(m, v is not None) for m, v in rows] == [("2026-09", False), ("2026-10", True)]
    voided = [b for b in published(deps, "billing-records", jst("2026-11-02 11:00")) if b["type"] == "charge_voided"]
    assert [(b["application_number"], b["month"], b["amount"]) for b in voided] == [(number, "2026-11", 300)]


# ---- continue ----------------------------------------------------------------------------------

def test_restrictions_and_limits_carry_over_across_a_relocation(deps, provider, orders):
    customer = Customer(deps)
    at = jst("2026-08-10 12:00")
    assert customer.restrict("user03", at)["status"] == "accepted"
    assert customer.set_limits(at, line_limit=2000, passport_limits={"user01": 500})["status"] == "accepted"

    assert orders.change("relocation", jst("2026-08-11 00:00"))["status"] == "accepted"

    later = jst("2026-08-11 10:00")
    assert provider.buy("user03", "coin", later)["reason"] == "RESTRICTED"
    assert provider.buy("user01", "coin", later, quantity=6)["reason"] == "PASSPORT_LIMIT_EXCEEDED"
    details = passport_details(deps.engine, "user01", now=later)
    assert (details["limit"], details["line_limit"], details["status"]) == (500, 2000, "registered")


def test_a_restricted_line_stays_restricted_across_a_rename(deps, provider, orders):
    assert Customer(deps).restrict(None, jst("2026-08-10 12:00"))["status"] == "accepted"
    orders.change("rename", jst("2026-08-11 00:00"))
    assert provider.buy("user01", "coin", jst("2026-08-11 10:00"))["reason"] == "RESTRICTED"


def test_subscriptions_go_on_billing_across_a_relocation(deps, provider, orders):
    accepted(provider.buy("user01", "pack", jst("2026-07-20 12:00")))
    orders.change("relocation", jst("2026-08-11 00:00"))
    assert statement(deps.engine, LINE, "2026-09")["total_amount"] == 525


def test_an_item_change_to_an_ineligible_access_service_makes_purchases_line_not_eligible(deps, provider, orders):
    orders.change("item_change", jst("2026-08-10 12:00"), new_access_service="hikari_premium")
    assert provider.buy("user01", "coin", jst("2026-08-10 12:30"))["reason"] == "LINE_NOT_ELIGIBLE"


def test_an_item_change_to_hikari_light_keeps_the_line_eligible(deps, provider, orders):
    orders.change("item_change", jst("2026-08-10 12:00"), new_access_service="hikari_light")
    with deps.engine.connect() as conn:
        assert conn.execute(select(lines.c.access_service).where(lines.c.customer_id == LINE)).scalar() == \
            "hikari_light"
    assert provider.buy("user01", "coin", jst("2026-08-10 12:30"))["status"] == "accepted"


def test_a_menu_change_terminates_the_line_whatever_its_new_access_service(deps, provider, orders):
    orders.change("menu_change", jst("2026-08-10 12:00"), new_access_service="hikari_premium")
    assert provider.buy("user01", "coin", jst("2026-08-10 12:30"))["reason"] == "LINE_TERMINATED"


# ---- billing-number changes --------------------------------------------------------------------

@pytest.mark.parametrize("change", ["number_change", "billing_phone_change", "individual_billing",
                                    "wide_area_billing"])
def test_a_billing_number_change_bills_the_new_account_from_its_effective_month(deps, provider, orders, change):
    new = "0098765432" if change == "individual_billing" else NEW_ACCOUNT
    # given a charge in October, on the old account
    accepted(provider.buy("user01", "coin", jst("2026-10-10 12:00")))
    # when the change takes effect on November 1st
    assert orders.change(change, jst("2026-11-01 00:00"), new_billing_account=new)["status"] == "accepted"
    # then a charge in November goes to the new account, one dated in October to the old
    accepted(provider.buy("user01", "coin", jst("2026-11-05 12:00"), quantity=2))
    accepted(provider.buy("user01", "coin", jst("2026-10-31 23:59"), quantity=3, now=jst("2026-11-05 12:01")))
    records = published(deps, "billing-records", jst("2026-11-05 13:00"))
    assert [(r["month"], r["quantity"], r["billing_account"]) for r in records] == [
        ("2026-10", 1, OLD_ACCOUNT), ("2026-11", 2, new), ("2026-10", 3, OLD_ACCOUNT)]
    with deps.engine.connect() as conn:
        assert billing_account_for(conn, LINE, "2026-10") == OLD_ACCOUNT
        assert billing_account_for(conn, LINE, "2026-11") == new
        assert billing_account_for(conn, LINE, "2027-01") == new


def test_a_billing_number_change_mid_month_bills_that_whole_month_to_the_new_account(deps, provider, orders):
    accepted(provider.buy("user01", "coin", jst("2026-11-02 12:00")))
    orders.change("number_change", jst("2026-11-20 00:00"), new_billing_account=NEW_ACCOUNT)
    with deps.engine.connect() as conn:
        assert billing_account_for(conn, LINE, "2026-11") == NEW_ACCOUNT
        assert billing_account_for(conn, LINE, "2026-10") == OLD_ACCOUNT


def test_a_billing_number_change_dated_in_a_closed_month_takes_effect_from_the_first_open_month(
        deps, provider, orders):
    with deps.engine.begin() as conn:
        mark_closing(conn, "2026-10", now=jst("2026-11-01 03:00"))
    orders.change("number_change", jst("2026-10-20 00:00"), new_billing_account=NEW_ACCOUNT,
                  now=jst("2026-11-01 09:00"))
    with deps.engine.connect() as conn:
        assert billing_account_for(conn, LINE, "2026-10") == OLD_ACCOUNT  # already billed there
        assert billing_account_for(conn, LINE, "2026-11") == NEW_ACCOUNT


def test_of_two_changes_effective_in_one_month_the_later_wins_whatever_order_they_arrive_in(deps, orders):
    orders.change("number_change", jst("2026-11-20 00:00"), new_billing_account="06-2000-0000",
                  now=jst("2026-11-20 00:01"))
    orders.change("billing_phone_change", jst("2026-11-05 00:00"), new_billing_account="06-1000-0000",
                  now=jst("2026-11-20 00:02"))
    with deps.engine.connect() as conn:
        assert billing_account_for(conn, LINE, "2026-11") == "06-2000-0000"


def set_representative(deps, representative: str) -> None:
    with deps.engine.begin() as conn:
        conn.execute(update(line_billing).where(line_billing.c.customer_id == LINE).values(
            omatome_representative=representative))


def representative(deps, month: str) -> str | None:
    with deps.engine.connect() as conn:
        return conn.execute(select(line_billing.c.omatome_representative).where(
            line_billing.c.customer_id == LINE, line_billing.c.from_month <= month
        ).order_by(line_billing.c.from_month.desc()).limit(1)).scalar()


@pytest.mark.parametrize("change", ["number_change", "billing_phone_change", "wide_area_billing"])
def test_a_billing_number_change_keeps_the_line_in_its_omatome_group(deps, orders, change):
    set_representative(deps, "03-7777-0000")
    orders.change(change, jst("2026-11-01 00:00"), new_billing_account=NEW_ACCOUNT)
    assert representative(deps, "2026-11") == "03-7777-0000"


def test_a_switch_to_individual_billing_takes_the_line_out_of_its_omatome_group(deps, orders):
    set_representative(deps, "03-7777-0000")
    orders.change("individual_billing", jst("2026-11-01 00:00"), new_billing_account="0098765432")
    assert representative(deps, "2026-11") is None
    assert representative(deps, "2026-10") == "03-7777-0000"
