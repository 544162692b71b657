"""CONTRACT.md "Every inbound message": redeliveries replay, conflicts and undecidable bodies quarantine."""

from __future__ import annotations

import json

from sqlalchemy import func, select

from matomete_core.adapters.tables import charges, inbox, outbox, quarantine
from matomete_core.service import bus
from matomete_core.service.quarantine import list_quarantined
from matomete_core.testing import signed
from tests.unit.conftest import SECRETS, jst

AT = jst("2026-08-10 12:00")


def count(deps, table) -> int:
    with deps.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def test_a_redelivered_purchase_returns_the_first_decision_replayed_and_charges_once(deps, provider):
    msg = provider.message("PA", AT, order_id="o1", passport_id="user01", content_id="pack")
    first = provider.send("matomete.purchase", msg, now=AT)
    again = provider.send("matomete.purchase", msg, now=jst("2026-08-10 12:01"))
    assert again == {**first, "replayed": True}
    assert count(deps, charges) == 1
    assert count(deps, outbox) == 2  # one decision event, one charge — none for the replay


def test_a_redelivered_rejection_replays_the_rejection_even_when_state_changed(deps, provider):
    msg = provider.message("PB", AT, order_id="o1", passport_id="user02", content_id="coin", quantity=11)
    assert provider.send("matomete.purchase", msg, now=AT)["reason"] == "PASSPORT_LIMIT_EXCEEDED"
    from sqlalchemy import update
    from matomete_core.adapters.tables import passport_ids
    with deps.engine.begin() as conn:
        conn.execute(update(passport_ids).values(limit=None))
    again = provider.send("matomete.purchase", msg, now=AT)
    assert (again["reason"], again["replayed"]) == ("PASSPORT_LIMIT_EXCEEDED", True)


def test_the_same_message_id_with_other_content_is_quarantined_message_id_conflict(deps, provider):
    msg = provider.message("PA", AT, order_id="o1", passport_id="user01", content_id="pack")
    provider.send("matomete.purchase", msg, now=AT)
    other = signed({**{k: v for k, v in msg.items() if k != "signature"}, "order_id": "o2"}, SECRETS["PA"])
    decision = provider.send("matomete.purchase", other, now=AT)
    assert (decision["status"], decision["reason"]) == ("quarantined", "MESSAGE_ID_CONFLICT")
    assert count(deps, charges) == 1


def test_message_ids_are_unique_per_sender_not_globally(provider):
    a = provider.message("PA", AT, order_id="o1", passport_id="user01", content_id="pack")
    b = provider.message("PB", AT, order_id="o1", passport_id="user01", content_id="anime1")
    b = signed({**{k: v for k, v in b.items() if k != "signature"}, "message_id": a["message_id"]}, SECRETS["PB"])
    assert provider.send("matomete.purchase", a, now=AT)["status"] == "accepted"
    assert provider.send("matomete.purchase", b, now=AT)["status"] == "accepted"


def test_a_malformed_message_is_quarantined_invalid_message_with_the_validation_detail(deps, provider):
    msg = provider.message("PA", AT, order_id="o1", passport_id="user01", content_id="pack", quantity="1")
    decision = provider.send("matomete.purchase", msg, now=AT)
    assert (decision["status"], decision["reason"]) == ("quarantined", "INVALID_MESSAGE")
    (entry,) = list_quarantined(deps.engine)
    assert "quantity" in entry["detail"] and entry["message"]["signature"] == "***"


def test_a_naive_occurred_at_is_quarantined(provider):
    msg = provider.message("PA", AT, order_id="o1", passport_id="user01", content_id="pack")
    msg["occurred_at"] = "2026-08-10T12:00:00"
    assert provider.send("matomete.purchase", msg, now=AT)["reason"] == "INVALID_MESSAGE"


def test_an_occurred_at_more_than_5_minutes_ahead_of_the_worker_is_quarantined(provider):
    msg = provider.message("PA", jst("2026-08-10 12:06"), order_id="o1", passport_id="user01", content_id="pack")
    assert provider.send("matomete.purchase", msg, now=AT)["reason"] == "INVALID_MESSAGE"


def test_an_unknown_provider_is_quarantined(deps):
    msg = signed({"message_id": "x1", "occurred_at": AT.isoformat(), "provider_id": "PZ", "order_id": "o",
                  "passport_id": "user01", "content_id": "pack"}, "whatever")
    decision = bus.handle(deps, "matomete.purchase", [msg], {}, now=AT)
    assert decision["reason"] == "UNKNOWN_PROVIDER"


def test_a_message_signed_with_another_providers_secret_is_bad_signature(deps):
    msg = signed({"message_id": "x1", "occurred_at": AT.isoformat(), "provider_id": "PA", "order_id": "o",
                  "passport_id": "user01", "content_id": "pack"}, SECRETS["PB"])
    assert bus.handle(deps, "matomete.purchase", [msg], {}, now=AT)["reason"] == "BAD_SIGNATURE"
    assert count(deps, inbox) == 0  # an unauthenticated message claims nothing


def test_a_tampered_message_is_bad_signature(deps, provider):
    msg = provider.message("PA", AT, order_id="o1", passport_id="user01", content_id="pack")
    msg["passport_id"] = "user03"
    assert provider.send("matomete.purchase", msg, now=AT)["reason"] == "BAD_SIGNATURE"


def test_a_body_that_is_not_an_object_is_quarantined(deps):
    for body in ("a string", 42, None, [1, 2], {"nested": {"too": "odd"}}):
        decision = bus.handle(deps, "matomete.purchase", [body], {}, now=AT)
        assert (decision["status"], decision["reason"]) == ("quarantined", "INVALID_MESSAGE")


def test_extra_positional_or_keyword_arguments_are_quarantined(deps, provider):
    msg = provider.message("PA", AT, order_id="o1", passport_id="user01", content_id="pack")
    assert bus.handle(deps, "matomete.purchase", [msg, msg], {}, now=AT)["reason"] == "INVALID_MESSAGE"
    assert bus.handle(deps, "matomete.purchase", [], {"message": msg}, now=AT)["reason"] == "INVALID_MESSAGE"
    assert count(deps, charges) == 0


def test_quarantine_keeps_no_secret(deps, provider):
    msg = provider.message("PA", AT, order_id="o1", passport_id="user01", content_id="pack", extra="x")
    provider.send("matomete.purchase", msg, now=AT)
    with deps.engine.connect() as conn:
        stored = " ".join(str(v) for row in conn.execute(select(quarantine)) for v in row)
    assert msg["signature"] not in stored and SECRETS["PA"] not in stored


def test_the_same_bad_message_delivered_twice_is_quarantined_once(deps):
    for _ in range(2):
        bus.handle(deps, "matomete.purchase", ["junk"], {}, now=AT)
    assert count(deps, quarantine) == 1


def test_decisions_are_json_as_the_result_backend_stores_them(provider):
    decision = provider.buy("user01", "pack", AT)
    assert json.loads(json.dumps(decision)) == decision


def test_a_conflict_is_told_to_its_provider_but_an_unauthenticated_message_is_not(deps, provider):
    from matomete_core.adapters.relay import relay
    msg = provider.message("PA", AT, order_id="o1", passport_id="user01", content_id="pack")
    provider.send("matomete.purchase", msg, now=AT)
    other = signed({**{k: v for k, v in msg.items() if k != "signature"}, "order_id": "o2"}, SECRETS["PA"])
    provider.send("matomete.purchase", other, now=AT)
    forged = {**other, "order_id": "o3"}  # signature no longer matches
    provider.send("matomete.purchase", forged, now=AT)
    relay(deps.engine, deps.publisher, now=AT)
    reasons = [b["reason"] for b in deps.publisher.bodies("provider-results.PA")]
    assert reasons == [None, "MESSAGE_ID_CONFLICT"]
