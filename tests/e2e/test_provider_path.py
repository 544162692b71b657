"""Provider systems buy and cancel through a real worker; billing and the CLI see the result.

All tests share one deployment (the session fixture ``system``): each uses its own Passport ID,
order IDs and message IDs, so they can run in any order. Nothing here imports matomete.
"""

from __future__ import annotations

import json
import math
import uuid
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

PROVIDER_EVENTS = "provider-events"
BILLING = "billing-records"
LINE = "CAF0000012573"
BILLING_ACCOUNT = "06-1234-5678"
DECISION_KEYS = ("message_id", "status", "reason", "application_number", "billing_month", "replayed")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def purchase_message(system, *, provider_id: str, passport_id: str, content_id: str,
                     minutes_ago: float = 1.0, secret: str | None = None, **fields: Any) -> dict[str, Any]:
    """A signed `matomete.purchase` body with fresh message and order IDs; `fields` override or add."""
    body = {"message_id": unique("e2e-buy"), "occurred_at": system.occurred_at(minutes_ago),
            "provider_id": provider_id, "order_id": unique(f"{provider_id}-ord"),
            "passport_id": passport_id, "content_id": content_id, "quantity": 1}
    body.update(fields)
    return system.sign(body, secret)


def cancel_message(system, *, provider_id: str, order_id: str, minutes_ago: float = 0.5) -> dict[str, Any]:
    return system.sign({"message_id": unique("e2e-cancel"), "occurred_at": system.occurred_at(minutes_ago),
                        "provider_id": provider_id, "order_id": order_id})


def buy(system, message: dict[str, Any]) -> dict[str, Any]:
    return system.send("matomete.purchase", PROVIDER_EVENTS, message)


def cancel(system, message: dict[str, Any]) -> dict[str, Any]:
    return system.send("matomete.cancel", PROVIDER_EVENTS, message)


def assert_accepted(decision: dict[str, Any], message: dict[str, Any]) -> str:
    assert decision["status"] == "accepted", decision
    assert decision["message_id"] == message["message_id"]
    assert decision["reason"] is None
    assert decision["replayed"] is False
    assert decision["application_number"], decision
    return decision["application_number"]


def assert_decided(decision: dict[str, Any], message: Any, status: str, reason: str | None) -> None:
    assert (decision["status"], decision["reason"]) == (status, reason), decision
    if reason != "INVALID_MESSAGE":  # a malformed message may have no usable message_id to echo
        assert decision["message_id"] == message["message_id"], decision


def charges_for(system, application_number: str, kind: str = "charge") -> list[dict[str, Any]]:
    return system.outbox.matching(
        BILLING, lambda b: b.get("type") == kind and b.get("application_number") == application_number)


def quarantined(system) -> list[dict[str, Any]]:
    return system.cli_json("quarantine", "list")["messages"]


# ---- acceptance and its records ----------------------------------------------------------------

def test_an_accepted_purchase_is_told_to_the_provider_and_charged_to_the_line(system):
    message = purchase_message(system, provider_id="PA", passport_id="user01", content_id="pack",
                               unit_price=525)
    decision = buy(system, message)

    number = assert_accepted(decision, message)
    assert decision["billing_month"] == system.month_of(message["occurred_at"])

    [told] = system.outbox.wait_for(
        "provider-results.PA", lambda b: b.get("type") == "decision" and b.get("message_id") == message["message_id"])
    assert told["event_id"]
    assert {k: told[k] for k in DECISION_KEYS} == {k: decision[k] for k in DECISION_KEYS}

    [charge] = system.outbox.wait_for(
        BILLING, lambda b: b.get("type") == "charge" and b.get("application_number") == number)
    assert charge["event_id"]
    assert {k: charge[k] for k in ("customer_id", "billing_account", "passport_id", "provider_id",
                                   "content_id", "month", "quantity", "amount", "late")} == {
        "customer_id": LINE, "billing_account": BILLING_ACCOUNT, "passport_id": "user01",
        "provider_id": "PA", "content_id": "pack", "month": decision["billing_month"],
        "quantity": 1, "amount": 525, "late": False}


def test_the_same_message_again_replays_the_first_decision_and_charges_nothing_more(system):
    message = purchase_message(system, provider_id="PB", passport_id="user03", content_id="anime1")
    first = buy(system, message)
    number = assert_accepted(first, message)
    system.outbox.wait_for(BILLING, lambda b: b.get("type") == "charge" and b.get("application_number") == number)

    again = buy(system, message)

    assert again == {**first, "replayed": True}
    system.outbox.settle(BILLING, seconds=5)
    assert len(charges_for(system, number)) == 1, charges_for(system, number)


def test_a_reused_message_id_with_other_content_is_quarantined_with_its_signature_hidden(system):
    original = purchase_message(system, provider_id="PB", passport_id="user04", content_id="anime2")
    assert_accepted(buy(system, original), original)
    conflicting = system.sign({**original, "order_id": unique("PB-ord")})

    decision = buy(system, conflicting)

    assert_decided(decision, conflicting, "quarantined", "MESSAGE_ID_CONFLICT")
    listing = system.cli("quarantine", "list", "--json").stdout
    assert conflicting["signature"] not in listing and "s3cret" not in listing
    [kept] = [q for q in json.loads(listing)["messages"]
              if q["reason"] == "MESSAGE_ID_CONFLICT" and isinstance(q["message"], dict)
              and q["message"].get("message_id") == original["message_id"]]
    assert kept["id"] is not None and kept["task"] == "matomete.purchase"
    assert kept["message"] == {**conflicting, "signature": "***"}


# ---- messages that cannot be decided -----------------------------------------------------------

def test_a_message_signed_with_the_wrong_secret_is_quarantined_bad_signature(system):
    message = purchase_message(system, provider_id="PA", passport_id="user05", content_id="pack",
                               secret="not-the-secret")
    decision = buy(system, message)

    assert_decided(decision, message, "quarantined", "BAD_SIGNATURE")
    [kept] = [q for q in quarantined(system)
              if isinstance(q["message"], dict) and q["message"].get("message_id") == message["message_id"]]
    assert kept["reason"] == "BAD_SIGNATURE" and kept["message"]["signature"] == "***"


def test_a_message_from_an_unknown_provider_is_quarantined_unknown_provider(system):
    message = purchase_message(system, provider_id="PZ", passport_id="user05", content_id="pack",
                               secret="whatever")
    assert_decided(buy(system, message), message, "quarantined", "UNKNOWN_PROVIDER")


@pytest.mark.parametrize("malformation", [
    pytest.param({"quantity": "1"}, id="quantity-as-a-string"),
    pytest.param({"unit_price": "525"}, id="price-as-a-string"),
    pytest.param({"occurred_at": "2020-01-01T10:00:00"}, id="naive-time"),
    pytest.param({"coupon": "FREE"}, id="unknown-field"),
    pytest.param({"message_id": "has spaces"}, id="bad-message-id"),
])
def test_a_malformed_purchase_is_quarantined_invalid_message(system, malformation):
    message = purchase_message(system, provider_id="PA", passport_id="user05", content_id="pack",
                               **malformation)  # signed as sent: only its shape is wrong
    assert_decided(buy(system, message), message, "quarantined", "INVALID_MESSAGE")


def test_a_purchase_dated_an_hour_ahead_is_quarantined_invalid_message(system):
    message = purchase_message(system, provider_id="PA", passport_id="user05", content_id="pack",
                               minutes_ago=-60)
    assert_decided(buy(system, message), message, "quarantined", "INVALID_MESSAGE")


def test_an_argument_that_is_not_an_object_is_quarantined_invalid_message(system):
    decision = buy(system, "buy me a pack")
    assert_decided(decision, None, "quarantined", "INVALID_MESSAGE")


# ---- purchases refused, each for its own reason ------------------------------------------------

@pytest.mark.parametrize("provider_id, passport_id, content_id, fields, reason", [
    pytest.param("PA", "user05", "anime1", {}, "UNKNOWN_CONTENT", id="another-providers-content"),
    pytest.param("PA", "user05", "nosuch", {}, "UNKNOWN_CONTENT", id="no-such-content"),
    pytest.param("PA", "user05", "pack", {"unit_price": 500}, "PRICE_MISMATCH", id="wrong-price"),
    pytest.param("PA", "user05", "pack", {"quantity": 2}, "INVALID_QUANTITY", id="two-of-a-monthly"),
    pytest.param("PB", "user05", "coin", {"quantity": 100}, "INVALID_QUANTITY", id="a-hundred-per-use"),
    pytest.param("PA", "ghost99", "pack", {}, "UNKNOWN_PASSPORT_ID", id="unknown-id"),
    pytest.param("PA", "prem01", "pack", {}, "LINE_NOT_ELIGIBLE", id="hikari-premium-line"),
    pytest.param("PA", "newbie01", "pack", {}, "PASSPORT_ID_NOT_READY", id="id-still-registering"),
])
def test_a_purchase_is_rejected(system, provider_id, passport_id, content_id, fields, reason):
    message = purchase_message(system, provider_id=provider_id, passport_id=passport_id,
                               content_id=content_id, **fields)
    decision = buy(system, message)
    assert_decided(decision, message, "rejected", reason)
    assert decision["replayed"] is False
    [told] = system.outbox.wait_for(
        f"provider-results.{provider_id}",
        lambda b: b.get("type") == "decision" and b.get("message_id") == message["message_id"])
    assert (told["status"], told["reason"]) == ("rejected", reason)


def test_a_second_subscription_to_the_same_monthly_content_is_rejected_already_subscribed(system):
    first = purchase_message(system, provider_id="PB", passport_id="user06", content_id="anime1")
    assert_accepted(buy(system, first), first)

    second = purchase_message(system, provider_id="PB", passport_id="user06", content_id="anime1")
    assert_decided(buy(system, second), second, "rejected", "ALREADY_SUBSCRIBED")


def test_a_purchase_over_the_ids_own_limit_is_rejected_passport_limit_exceeded(system):
    # user02 may spend 1,000 yen a month; 11 coins are 1,100 yen
    message = purchase_message(system, provider_id="PB", passport_id="user02", content_id="coin",
                               quantity=11, unit_price=100)
    assert_decided(buy(system, message), message, "rejected", "PASSPORT_LIMIT_EXCEEDED")


# ---- cancels -----------------------------------------------------------------------------------

def test_a_monthly_subscription_is_cancelled_once_and_a_second_cancel_is_rejected(system):
    bought = purchase_message(system, provider_id="PB", passport_id="user07", content_id="anime2",
                              minutes_ago=2)
    number = assert_accepted(buy(system, bought), bought)

    first = cancel_message(system, provider_id="PB", order_id=bought["order_id"], minutes_ago=1)
    decision = cancel(system, first)
    assert_accepted(decision, first)
    assert decision["application_number"] == number

    second = cancel_message(system, provider_id="PB", order_id=bought["order_id"], minutes_ago=0.5)
    assert_decided(cancel(system, second), second, "rejected", "ALREADY_CANCELLED")


def test_a_cancelled_per_use_purchase_is_voided_on_billing_records(system):
    bought = purchase_message(system, provider_id="PB", passport_id="user08", content_id="coin",
                              quantity=3, minutes_ago=2)
    number = assert_accepted(buy(system, bought), bought)
    system.outbox.wait_for(BILLING, lambda b: b.get("type") == "charge" and b.get("application_number") == number)

    message = cancel_message(system, provider_id="PB", order_id=bought["order_id"], minutes_ago=1)
    decision = cancel(system, message)
    assert_accepted(decision, message)
    assert decision["application_number"] == number

    [void] = system.outbox.wait_for(
        BILLING, lambda b: b.get("type") == "charge_voided" and b.get("application_number") == number)
    # a void repeats the charge it voids (CONTRACT.md: the charge record, typed charge_voided)
    assert {k: void[k] for k in ("customer_id", "passport_id", "provider_id", "content_id", "quantity",
                                 "amount")} == {
        "customer_id": LINE, "passport_id": "user08", "provider_id": "PB", "content_id": "coin",
        "quantity": 3, "amount": 300}


def test_a_cancel_that_arrives_before_its_purchase_is_held_then_decided_when_the_purchase_lands(system):
    bought = purchase_message(system, provider_id="PA", passport_id="user09", content_id="pack",
                              minutes_ago=2)
    early = cancel_message(system, provider_id="PA", order_id=bought["order_id"], minutes_ago=1)

    held = cancel(system, early)
    assert_decided(held, early, "held", None)

    number = assert_accepted(buy(system, bought), bought)

    [final] = system.outbox.wait_for(
        "provider-results.PA",
        lambda b: b.get("type") == "decision" and b.get("message_id") == early["message_id"]
        and b.get("status") != "held")
    assert (final["status"], final["reason"], final["application_number"]) == ("accepted", None, number)


# ---- what the customer and the operator see ----------------------------------------------------

@pytest.fixture(scope="module")
def user10_bought(system) -> dict[str, Any]:
    """user10 subscribes to A社's pack and buys two of B社's coins: 725 yen this month."""
    pack = purchase_message(system, provider_id="PA", passport_id="user10", content_id="pack")
    coins = purchase_message(system, provider_id="PB", passport_id="user10", content_id="coin", quantity=2)
    return {"pack": (pack, assert_accepted(buy(system, pack), pack)),
            "coins": (coins, assert_accepted(buy(system, coins), coins))}


def test_the_statement_lists_the_accepted_charges_of_the_month(system, user10_bought):
    pack, pack_number = user10_bought["pack"]
    coins, coins_number = user10_bought["coins"]
    month = system.month_of(pack["occurred_at"])

    mine = system.cli_json("statement", LINE, month, "--passport-id", "user10")

    assert {k: mine[k] for k in ("customer_id", "month", "passport_id", "page", "pages", "total_count",
                                 "total_amount")} == {
        "customer_id": LINE, "month": month, "passport_id": "user10", "page": 1, "pages": 1,
        "total_count": 2, "total_amount": 725}
    numbers = [row["application_number"] for row in mine["rows"]]
    assert numbers == sorted(numbers, key=lambda n: (len(n), n)) and set(numbers) == {pack_number, coins_number}
    rows = {row["application_number"]: row for row in mine["rows"]}
    assert {k: rows[pack_number][k] for k in ("passport_id", "provider_name", "content_name", "unit_price",
                                              "quantity", "amount", "price_type", "start_date", "end_date")} == {
        "passport_id": "user10", "provider_name": "A社", "content_name": "パックサービス", "unit_price": 525,
        "quantity": 1, "amount": 525, "price_type": "monthly_flat",
        "start_date": system.date_of(pack["occurred_at"]), "end_date": None}
    assert {k: rows[coins_number][k] for k in ("passport_id", "provider_name", "content_name", "unit_price",
                                               "quantity", "amount", "price_type", "start_date")} == {
        "passport_id": "user10", "provider_name": "B社", "content_name": "コイン", "unit_price": 100,
        "quantity": 2, "amount": 200, "price_type": "per_use",
        "start_date": system.date_of(coins["occurred_at"])}

    # the whole line, 10 rows a page: every page together holds user10's rows
    whole = system.cli_json("statement", LINE, month)
    assert whole["passport_id"] is None and whole["total_amount"] >= 725
    assert whole["pages"] == max(1, math.ceil(whole["total_count"] / 10))
    pages = [whole["rows"]] + [system.cli_json("statement", LINE, month, "--page", str(n))["rows"]
                               for n in range(2, whole["pages"] + 1)]
    assert all(len(rows) <= 10 for rows in pages)
    everything = [row for rows in pages for row in rows]
    assert len(everything) == whole["total_count"]
    assert {pack_number, coins_number} <= {row["application_number"] for row in everything}


def test_the_inquiry_list_names_the_providers_the_line_bought_from_with_their_contact(system, user10_bought):
    listing = system.cli_json("inquiries", LINE)

    assert listing["customer_id"] == LINE
    assert {p["provider_id"]: p for p in listing["providers"]} == {
        "PA": {"provider_id": "PA", "name": "A社", "url": "https://a.example/help",
               "phone": "0120-000-000", "hours": "9:00-17:00"},
        "PB": {"provider_id": "PB", "name": "B社", "url": "https://b.example/support",
               "phone": "0120-111-111", "hours": "10:00-18:00"},
    }
