"""SPEC.md "Restrictions", "Limits", "Registration since December 2024" and "Security": the
customer's self-service commands, authenticated by customer ID and access key."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select

from matomete_core.adapters.tables import lines, passport_ids
from matomete_core.service import customer as customer_service
from matomete_core.service.views import passport_details
from tests.unit.conftest import jst
from tests.unit.senders import LINE, Customer, OrderSystem

AT = jst("2026-08-10 12:00")
WRONG = "NOT-the-key"


@pytest.fixture
def customer(deps) -> Customer:
    return Customer(deps)


def outcome(decision: dict) -> tuple[str, str | None]:
    return decision["status"], decision["reason"]


def key_state(deps, customer_id: str = LINE) -> tuple[int, datetime | None]:
    with deps.engine.connect() as conn:
        row = conn.execute(select(lines.c.failed_key_attempts, lines.c.locked_until).where(
            lines.c.customer_id == customer_id)).one()
    return row.failed_key_attempts, row.locked_until


def limits(deps) -> tuple[int, dict[str, int | None]]:
    with deps.engine.connect() as conn:
        line_limit = conn.execute(select(lines.c.line_limit).where(lines.c.customer_id == LINE)).scalar_one()
        own = dict(conn.execute(select(passport_ids.c.passport_id, passport_ids.c.limit).where(
            passport_ids.c.customer_id == LINE)).all())
    return line_limit, own


# ---- restrictions ------------------------------------------------------------------------------

def test_a_customer_restricts_one_passport_id_and_it_can_no_longer_buy(customer, provider):
    assert outcome(customer.restrict("user01", AT)) == ("accepted", None)
    assert provider.buy("user01", "coin", AT)["reason"] == "RESTRICTED"
    assert provider.buy("user03", "coin", AT)["status"] == "accepted"


def test_lifting_the_restriction_of_an_id_lets_it_buy_again(customer, provider):
    assert outcome(customer.lift("blocked1", AT)) == ("accepted", None)
    assert provider.buy("blocked1", "coin", AT)["status"] == "accepted"


def test_restricting_the_whole_line_stops_every_id_and_lifting_it_lets_them_buy(customer, provider):
    customer.restrict(None, AT)
    assert provider.buy("user01", "coin", AT)["reason"] == "RESTRICTED"
    customer.lift(None, jst("2026-08-10 12:10"))
    assert provider.buy("user01", "coin", jst("2026-08-10 12:20"))["status"] == "accepted"


def test_a_restricted_ids_subscriptions_keep_billing(deps, customer, provider):
    provider.buy("user01", "pack", jst("2026-07-20 12:00"))
    customer.restrict("user01", AT)
    assert passport_details(deps.engine, "user01", now=jst("2026-09-10 12:00"))["usage"] == 525


def test_restricting_an_id_of_another_line_is_rejected_unknown_passport_id(deps, customer):
    assert outcome(customer.restrict("lineblk1", AT)) == ("rejected", "UNKNOWN_PASSPORT_ID")
    assert passport_details(deps.engine, "lineblk1", now=AT)["restricted"] is False


def test_restricting_an_unknown_id_is_rejected_unknown_passport_id(customer):
    assert outcome(customer.restrict("nobody99", AT)) == ("rejected", "UNKNOWN_PASSPORT_ID")


# ---- limits ------------------------------------------------------------------------------------

def test_an_ids_own_limit_set_by_the_customer_applies_to_its_purchases(customer, provider):
    assert outcome(customer.set_limits(AT, passport_limits={"user01": 300})) == ("accepted", None)
    assert provider.buy("user01", "coin", AT, quantity=4)["reason"] == "PASSPORT_LIMIT_EXCEEDED"
    assert provider.buy("user01", "coin", AT, quantity=3)["status"] == "accepted"


def test_an_ids_own_limit_is_removed_with_null(deps, customer, provider):
    assert outcome(customer.set_limits(AT, passport_limits={"user02": None})) == ("accepted", None)
    assert limits(deps)[1]["user02"] is None
    assert provider.buy("user02", "coin", AT, quantity=11)["status"] == "accepted"


def test_the_line_limit_may_be_raised_up_to_the_maximum_and_no_further(deps, customer):
    assert outcome(customer.set_limits(AT, line_limit=50_000)) == ("accepted", None)
    assert outcome(customer.set_limits(AT, line_limit=50_001)) == ("rejected", "LINE_LIMIT_ABOVE_MAXIMUM")
    assert limits(deps)[0] == 50_000


def test_the_maximum_is_the_deployments(deps, customer):
    deps.settings = replace(deps.settings, max_line_limit=20_000)
    assert outcome(customer.set_limits(AT, line_limit=20_001)) == ("rejected", "LINE_LIMIT_ABOVE_MAXIMUM")
    assert outcome(customer.set_limits(AT, line_limit=20_000)) == ("accepted", None)


def test_raising_an_ids_limit_so_the_ids_sum_above_the_line_limit_is_refused(deps, customer):
    # the line allows 10,000; user02 has 1,000 of its own
    assert outcome(customer.set_limits(AT, passport_limits={"user01": 9_001})) == (
        "rejected", "LIMIT_SUM_EXCEEDS_LINE_LIMIT")
    assert limits(deps)[1]["user01"] is None
    assert outcome(customer.set_limits(AT, passport_limits={"user01": 9_000})) == ("accepted", None)


def test_lowering_the_line_limit_below_the_ids_sum_is_refused(deps, customer):
    assert outcome(customer.set_limits(AT, line_limit=999)) == ("rejected", "LIMIT_SUM_EXCEEDS_LINE_LIMIT")
    assert limits(deps)[0] == 10_000
    assert outcome(customer.set_limits(AT, line_limit=1_000)) == ("accepted", None)


def test_the_sum_rule_judges_the_limits_as_they_will_be_after_the_change(deps, customer):
    # lowering user02 makes room for a lower line limit, in one command
    assert outcome(customer.set_limits(AT, line_limit=500, passport_limits={"user02": 200, "user01": 300})) == (
        "accepted", None)
    assert limits(deps)[0] == 500 and limits(deps)[1]["user02"] == 200


@pytest.mark.parametrize("command, reason", [
    ({"line_limit": 20_000, "passport_limits": {"user01": 5_000, "lineblk1": 100}}, "UNKNOWN_PASSPORT_ID"),
    ({"line_limit": 60_000, "passport_limits": {"user01": 5_000}}, "LINE_LIMIT_ABOVE_MAXIMUM"),
    ({"line_limit": 20_000, "passport_limits": {"user01": 15_000, "user03": 5_000}}, "LIMIT_SUM_EXCEEDS_LINE_LIMIT"),
], ids=["an-id-of-another-line", "a-line-limit-above-the-maximum", "a-sum-above-the-new-line-limit"])
def test_set_limits_is_applied_whole_or_not_at_all(deps, customer, command, reason):
    before = limits(deps)
    assert outcome(customer.set_limits(AT, **command)) == ("rejected", reason)
    assert limits(deps) == before


def test_lowering_a_limit_cancels_nothing(deps, customer, provider):
    provider.buy("user01", "anime1", AT)
    assert outcome(customer.set_limits(AT, passport_limits={"user01": 0})) == ("accepted", None)
    assert passport_details(deps.engine, "user01", now=AT)["usage"] == 300


# ---- the access key ----------------------------------------------------------------------------

def test_an_unknown_customer_is_rejected_unknown_customer(deps):
    stranger = Customer(deps, customer_id="CAF0000000404")
    assert outcome(stranger.restrict(None, AT)) == ("rejected", "UNKNOWN_CUSTOMER")
    assert outcome(stranger.set_limits(AT, line_limit=1)) == ("rejected", "UNKNOWN_CUSTOMER")


def test_a_wrong_key_is_rejected_bad_access_key_and_the_failure_is_kept(deps, customer):
    assert outcome(customer.restrict("user01", AT, access_key=WRONG)) == ("rejected", "BAD_ACCESS_KEY")
    assert key_state(deps) == (1, None)
    assert passport_details(deps.engine, "user01", now=AT)["restricted"] is False


def test_five_wrong_keys_lock_the_customer_id_for_30_minutes(deps, customer):
    # given four wrong keys
    for n in range(4):
        assert customer.set_limits(AT, line_limit=1, access_key=WRONG)["reason"] == "BAD_ACCESS_KEY"
    # when the fifth comes at 12:04
    fifth = jst("2026-08-10 12:04")
    assert customer.set_limits(fifth, line_limit=1, access_key=WRONG)["reason"] == "BAD_ACCESS_KEY"
    # then the customer ID is locked until 12:34, even for the right key
    assert key_state(deps)[1] == fifth + timedelta(minutes=30)
    assert customer.lift(None, jst("2026-08-10 12:33"), now=jst("2026-08-10 12:33:59"))["reason"] == "LOCKED_OUT"
    assert outcome(customer.lift(None, jst("2026-08-10 12:34"))) == ("accepted", None)
    assert key_state(deps) == (0, None)


def test_the_lock_out_runs_on_processing_time_not_on_the_messages_time(customer):
    # five wrong keys dated 12:00 but processed at 13:00: locked until 13:30, not 12:30
    for n in range(5):
        customer.restrict(None, AT, access_key=WRONG, now=jst("2026-08-10 13:00"))
    assert customer.restrict(None, jst("2026-08-10 12:40"), now=jst("2026-08-10 13:10"))["reason"] == "LOCKED_OUT"


def test_while_locked_out_the_key_is_not_even_checked_and_nothing_counts(deps, customer, monkeypatch):
    for n in range(5):
        customer.restrict(None, AT, access_key=WRONG)
    asked = []
    monkeypatch.setattr(customer_service, "access_key_matches", lambda *a: asked.append(a) or False)
    assert customer.restrict(None, jst("2026-08-10 12:10"), access_key=WRONG)["reason"] == "LOCKED_OUT"
    assert asked == [] and key_state(deps) == (0, AT + timedelta(minutes=30))


def test_a_right_key_resets_the_count_of_wrong_keys(deps, customer):
    for n in range(4):
        customer.restrict(None, AT, access_key=WRONG)
    assert outcome(customer.lift(None, AT)) == ("accepted", None)
    assert key_state(deps) == (0, None)
    for n in range(4):
        customer.restrict(None, AT, access_key=WRONG)
    assert outcome(customer.lift(None, AT)) == ("accepted", None)


def test_a_redelivered_wrong_key_counts_once(deps, customer):
    message = customer.message(AT, access_key=WRONG, passport_id=None, restricted=True)
    decisions = [customer.send("matomete.set_restriction", message, now=AT) for _ in range(6)]
    assert [d["reason"] for d in decisions] == ["BAD_ACCESS_KEY"] * 6
    assert [d["replayed"] for d in decisions] == [False] + [True] * 5
    assert key_state(deps) == (1, None)


def test_a_redelivery_with_another_key_replays_the_first_decision_and_changes_nothing(deps, customer):
    message = customer.message(AT, passport_id="user01", restricted=True)
    first = customer.send("matomete.set_restriction", message, now=AT)
    customer.lift("user01", jst("2026-08-10 12:01"))
    again = customer.send("matomete.set_restriction", {**message, "access_key": WRONG}, now=jst("2026-08-10 12:02"))
    assert again == {**first, "replayed": True}
    assert key_state(deps) == (0, None)
    assert passport_details(deps.engine, "user01", now=AT)["restricted"] is False


def test_the_same_message_id_with_other_content_is_quarantined_message_id_conflict(customer):
    message = customer.message(AT, passport_id="user01", restricted=True)
    customer.send("matomete.set_restriction", message, now=AT)
    decision = customer.send("matomete.set_restriction", {**message, "passport_id": "user03"}, now=AT)
    assert outcome(decision) == ("quarantined", "MESSAGE_ID_CONFLICT")


def test_wrong_keys_for_one_line_do_not_lock_another(deps):
    other = Customer(deps, customer_id="CAF0000000002", access_key="KEY2KEY2")
    for n in range(5):
        Customer(deps).restrict(None, AT, access_key=WRONG)
    assert outcome(other.lift(None, AT)) == ("accepted", None)


def test_a_terminated_line_refuses_the_customers_commands_line_terminated(deps, customer):
    OrderSystem(deps).change("line_cancellation", AT)
    later = jst("2026-08-10 12:30")
    assert outcome(customer.restrict("user01", later)) == ("rejected", "LINE_TERMINATED")
    assert outcome(customer.restrict(None, later)) == ("rejected", "LINE_TERMINATED")
    assert outcome(customer.set_limits(later, line_limit=5_000)) == ("rejected", "LINE_TERMINATED")


def test_a_terminated_line_still_checks_the_key_first(deps, customer):
    OrderSystem(deps).change("line_cancellation", AT)
    assert customer.restrict(None, jst("2026-08-10 12:30"), access_key=WRONG)["reason"] == "BAD_ACCESS_KEY"


# ---- registration (closed since December 2024) -------------------------------------------------

def test_registering_a_passport_id_is_refused_registration_closed(customer):
    decision = customer.command("matomete.register_passport_id", AT, passport_id="newid01")
    assert outcome(decision) == ("rejected", "REGISTRATION_CLOSED")


def test_changing_registration_details_is_refused_read_only(customer):
    decision = customer.command("matomete.update_registration", AT, passport_id="user01")
    assert outcome(decision) == ("rejected", "READ_ONLY")


@pytest.mark.parametrize("task", ["matomete.register_passport_id", "matomete.update_registration"])
def test_registration_commands_are_authenticated_first(deps, customer, task):
    assert customer.command(task, AT, passport_id="user01", access_key=WRONG)["reason"] == "BAD_ACCESS_KEY"
    assert key_state(deps)[0] == 1
    assert Customer(deps, "CAF0000000404").command(task, AT, passport_id="user01")["reason"] == "UNKNOWN_CUSTOMER"


@pytest.mark.parametrize("task, reason", [("matomete.register_passport_id", "REGISTRATION_CLOSED"),
                                          ("matomete.update_registration", "READ_ONLY")])
def test_registration_is_refused_even_when_dated_before_the_cutoff(customer, task, reason):
    before = jst("2024-11-30 23:59")
    assert customer.command(task, before, passport_id="user01", now=AT)["reason"] == reason
