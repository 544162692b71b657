"""SPEC.md "Deciding a cancel": a provider cancels its own orders; unknown orders are held 24 hours."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from matomete_core.adapters.relay import relay
from matomete_core.service.housekeeping import expire_held
from matomete_core.service.months import mark_closing
from tests.unit.conftest import jst

AT = jst("2026-08-10 12:00")


def test_a_cancel_of_a_monthly_subscription_is_accepted_with_its_application_number(provider):
    number = provider.buy("user01", "anime1", AT, order_id="o1")["application_number"]
    decision = provider.cancel("o1", jst("2026-08-20 12:00"))
    assert (decision["status"], decision["application_number"]) == ("accepted", number)


def test_a_second_cancel_of_the_same_order_is_refused_already_cancelled(provider):
    provider.buy("user01", "anime1", AT, order_id="o1")
    provider.cancel("o1", jst("2026-08-20 12:00"))
    assert provider.cancel("o1", jst("2026-08-21 12:00"))["reason"] == "ALREADY_CANCELLED"


def test_a_cancel_dated_before_its_purchase_is_refused(provider):
    provider.buy("user01", "anime1", AT, order_id="o1")
    assert provider.cancel("o1", jst("2026-08-09 12:00"), now=AT)["reason"] == "CANCEL_BEFORE_PURCHASE"


def test_a_provider_cannot_cancel_another_providers_order(provider):
    provider.buy("user01", "pack", AT, order_id="shared-id", provider_id="PA")
    decision = provider.cancel("shared-id", jst("2026-08-20 12:00"), provider_id="PB")
    assert decision["status"] == "held"  # PB has no such order; PA's stays untouched
    assert provider.buy("user01", "pack", AT, provider_id="PA")["reason"] == "ALREADY_SUBSCRIBED"


def test_a_per_use_purchase_is_voided_while_its_month_is_open(deps, provider):
    provider.buy("user01", "coin", AT, order_id="c1", quantity=2)
    assert provider.cancel("c1", jst("2026-08-10 13:00"))["status"] == "accepted"
    relay(deps.engine, deps.publisher, now=AT)
    kinds = [b["type"] for b in deps.publisher.bodies("billing-records")]
    assert kinds == ["charge", "charge_voided"]


def test_a_per_use_purchase_of_a_closed_month_stands_month_closed(deps, provider):
    provider.buy("user01", "coin", jst("2026-08-31 10:00"), order_id="c1")
    with deps.engine.begin() as conn:
        mark_closing(conn, "2026-08", now=jst("2026-09-01 03:00"))
    assert provider.cancel("c1", jst("2026-08-31 11:00"), now=jst("2026-09-01 04:00"))["reason"] == "MONTH_CLOSED"


def test_a_cancel_before_its_purchase_is_held_then_applied_when_the_purchase_arrives(deps, provider):
    assert provider.cancel("late-o", jst("2026-08-10 12:05"))["status"] == "held"
    purchase = provider.buy("user01", "anime1", AT, order_id="late-o", now=jst("2026-08-10 12:06"))
    assert purchase["status"] == "accepted"
    relay(deps.engine, deps.publisher, now=AT)
    decisions = [(b["status"], b["application_number"]) for b in deps.publisher.bodies("provider-results.PB")]
    assert decisions == [("held", None), ("accepted", purchase["application_number"]),
                         ("accepted", purchase["application_number"])]
    # the subscription is cancelled: a new purchase of the same content is allowed again
    assert provider.buy("user01", "anime1", jst("2026-08-11 12:00"))["status"] == "accepted"


def test_a_redelivered_held_cancel_returns_its_final_decision(deps, provider):
    cancel = provider.message("PB", jst("2026-08-10 12:05"), order_id="late-o")
    provider.send("matomete.cancel", cancel, now=jst("2026-08-10 12:05"))
    provider.buy("user01", "anime1", AT, order_id="late-o", now=jst("2026-08-10 12:06"))
    again = provider.send("matomete.cancel", cancel, now=jst("2026-08-10 12:07"))
    assert (again["status"], again["replayed"]) == ("accepted", True)


def test_a_held_cancel_whose_purchase_is_refused_is_refused_unknown_order(deps, provider):
    provider.cancel("doomed", jst("2026-08-10 12:05"))
    provider.buy("nobody99", "anime1", AT, order_id="doomed", now=jst("2026-08-10 12:06"))
    relay(deps.engine, deps.publisher, now=AT)
    assert [b["reason"] for b in deps.publisher.bodies("provider-results.PB")][-1] == "UNKNOWN_ORDER"


def test_a_cancel_of_an_order_whose_purchase_was_refused_is_refused_unknown_order(provider):
    provider.buy("nobody99", "anime1", AT, order_id="refused")
    assert provider.cancel("refused", jst("2026-08-10 12:05"))["reason"] == "UNKNOWN_ORDER"


def test_a_cancel_held_for_24_hours_is_refused_unknown_order(deps, provider):
    received = jst("2026-08-10 12:05")
    provider.cancel("never", received)
    assert expire_held(deps, now=received + timedelta(hours=23, minutes=59)) == 0
    assert expire_held(deps, now=received + timedelta(hours=24)) == 1
    relay(deps.engine, deps.publisher, now=AT)
    final = deps.publisher.bodies("provider-results.PB")[-1]
    assert (final["status"], final["reason"]) == ("rejected", "UNKNOWN_ORDER")
    from matomete_core.adapters.tables import held_cancels
    with deps.engine.connect() as conn:
        assert conn.execute(select(held_cancels)).first() is None
