"""The self-service page and the order system through a real worker: limits, a wrong access key,
and a line cancellation that ends subscriptions and tells their provider.

Each test has a line of its own, loaded here with ``matomete lines load`` as an operator would, so
it disturbs no other test of the shared deployment. Nothing here imports matomete.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

CUSTOMER_COMMANDS = "customer-commands"
LINE_CHANGES = "line-changes"
PROVIDER_EVENTS = "provider-events"

LIMITS_LINE, TERMINATED_LINE, LOCKED_LINE = "CAF0000055501", "CAF0000055502", "CAF0000055503"
KEYS = {LIMITS_LINE: "e2e-key-55501", TERMINATED_LINE: "e2e-key-55502", LOCKED_LINE: "e2e-key-55503"}
PASSPORT = {LIMITS_LINE: "chg01", TERMINATED_LINE: "chg02", LOCKED_LINE: "chg03"}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


@pytest.fixture(scope="module")
def own_lines(system) -> None:
    doc = {"lines": [
        {"customer_id": cid, "access_service": "hikari_next", "access_key": KEYS[cid],
         "billing_account": f"06-5550-{cid[-4:]}", "omatome_representative": None, "line_limit": 10000,
         "restricted": False,
         "passport_ids": [{"passport_id": PASSPORT[cid], "status": "registered", "limit": None,
                           "restricted": False, "registered_at": "2019-04-01T10:00:00+09:00"}]}
        for cid in KEYS]}
    path = system.workdir / "customer-and-line-changes.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    system.cli("lines", "load", str(path))


def command(system, task: str, customer_id: str, access_key: str | None = None, **fields: Any) -> dict[str, Any]:
    message = {"message_id": unique("e2e-web"), "occurred_at": system.occurred_at(0.5), "customer_id": customer_id,
               "access_key": KEYS[customer_id] if access_key is None else access_key, **fields}
    decision = system.send(task, CUSTOMER_COMMANDS, message)
    assert decision["message_id"] == message["message_id"] or decision["status"] == "quarantined", decision
    return decision


def buy(system, passport_id: str, content_id: str, provider_id: str, minutes_ago: float = 1.0,
        **fields: Any) -> dict[str, Any]:
    message = system.sign({"message_id": unique("e2e-buy"), "occurred_at": system.occurred_at(minutes_ago),
                           "provider_id": provider_id, "order_id": unique(f"{provider_id}-ord"),
                           "passport_id": passport_id, "content_id": content_id, "quantity": 1, **fields})
    return {**system.send("matomete.purchase", PROVIDER_EVENTS, message), "order_id": message["order_id"]}


def test_the_customer_sets_limits_through_the_worker_and_they_apply(system, own_lines):
    decision = command(system, "matomete.set_limits", LIMITS_LINE, line_limit=20000,
                       passport_limits={PASSPORT[LIMITS_LINE]: 300})
    assert (decision["status"], decision["reason"], decision["replayed"]) == ("accepted", None, False)

    shown = system.cli_json("passport", "show", PASSPORT[LIMITS_LINE])
    assert (shown["limit"], shown["line_limit"], shown["line_status"]) == (300, 20000, "利用中")
    line = system.cli_json("line", "show", LIMITS_LINE)
    assert (line["status"], line["line_limit"], line["passport_ids"][0]["limit"]) == ("利用中", 20000, 300)

    over = buy(system, PASSPORT[LIMITS_LINE], "coin", "PB", quantity=4)
    assert (over["status"], over["reason"]) == ("rejected", "PASSPORT_LIMIT_EXCEEDED")
    refused = command(system, "matomete.set_limits", LIMITS_LINE, line_limit=60000)
    assert (refused["status"], refused["reason"]) == ("rejected", "LINE_LIMIT_ABOVE_MAXIMUM")


def test_a_line_cancellation_ends_its_subscriptions_and_tells_the_provider(system, own_lines):
    bought = buy(system, PASSPORT[TERMINATED_LINE], "pack", "PA", minutes_ago=2)
    assert bought["status"] == "accepted", bought
    change = {"message_id": unique("e2e-ord"), "occurred_at": system.occurred_at(1),
              "customer_id": TERMINATED_LINE, "change": "line_cancellation", "customer_id_changed": False}

    decision = system.send("matomete.line_change", LINE_CHANGES, change)

    assert (decision["status"], decision["reason"]) == ("accepted", None)
    [ended] = system.outbox.wait_for(
        "provider-results.PA", lambda b: b.get("type") == "subscription_ended"
        and b.get("application_number") == bought["application_number"])
    assert (ended["order_id"], ended["cause"]) == (bought["order_id"], "line_change")
    assert datetime.fromisoformat(ended["ended_at"]) == datetime.fromisoformat(change["occurred_at"])
    assert ended["event_id"]
    later = buy(system, PASSPORT[TERMINATED_LINE], "coin", "PB", minutes_ago=0.5)
    assert (later["status"], later["reason"]) == ("rejected", "LINE_TERMINATED")
    assert system.cli_json("passport", "show", PASSPORT[TERMINATED_LINE])["status"] == "deleted"
    again = system.send("matomete.line_change", LINE_CHANGES, change)
    assert again == {**decision, "replayed": True}


def test_a_wrong_access_key_is_rejected_and_never_shows_anywhere(system, own_lines):
    wrong = "e2e-WRONG-" + uuid.uuid4().hex[:8]
    decision = command(system, "matomete.set_restriction", LOCKED_LINE, access_key=wrong,
                       passport_id=None, restricted=True)
    assert (decision["status"], decision["reason"]) == ("rejected", "BAD_ACCESS_KEY")
    malformed = command(system, "matomete.set_restriction", LOCKED_LINE, access_key=wrong,
                        passport_id=None, restricted="yes")
    assert (malformed["status"], malformed["reason"]) == ("quarantined", "INVALID_MESSAGE")

    assert system.cli_json("line", "show", LOCKED_LINE)["restricted"] is False
    listing = system.cli("quarantine", "list", "--json").stdout
    assert wrong not in listing and KEYS[LOCKED_LINE] not in listing
    for name, path in system.logs.items():
        text = path.read_text(encoding="utf-8", errors="replace")
        assert wrong not in text and KEYS[LOCKED_LINE] not in text, f"an access key is in the {name} log"
