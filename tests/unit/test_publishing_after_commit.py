"""A decision's outbound messages are published right after its commit, from what it wrote —
and never when its transaction did not commit (service.outbox.track, adapters.relay.publish_written)."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from matomete_core.adapters.relay import publish_written, relay
from matomete_core.adapters.tables import outbox
from matomete_core.service import bus
from matomete_core.service import outbox as outbox_svc
from matomete_core.testing import over_the_wire, signed
from tests.unit.conftest import SECRETS, jst

AT = jst("2026-08-10 12:00")


def _purchase(order_id: str = "o1", message_id: str = "m1") -> dict:
    return signed({"message_id": message_id, "occurred_at": AT.isoformat(), "provider_id": "PB",
                   "order_id": order_id, "passport_id": "user02", "content_id": "coin", "quantity": 1},
                  SECRETS["PB"])


def _decide(deps, body: dict) -> tuple[dict, list]:  # noqa: ANN001
    committed: list = []
    decision = bus.handle(deps, "matomete.purchase", [over_the_wire(body)], {}, now=AT, on_commit=committed.extend)
    return decision, committed


def _unpublished(deps) -> list[str]:  # noqa: ANN001
    with deps.engine.connect() as conn:
        return list(conn.execute(select(outbox.c.event_id).where(outbox.c.published_at.is_(None))).scalars())


def test_an_accepted_purchase_hands_over_exactly_the_rows_it_committed(deps):
    decision, committed = _decide(deps, _purchase())
    assert decision["status"] == "accepted"
    assert sorted(r.event_id for r in committed) == sorted(_unpublished(deps))
    assert [r.queue for r in committed] == ["billing-records", "provider-results.PB"]

    publish_written(deps.engine, deps.publisher, committed, now=AT)
    assert [e for _, _, e in deps.publisher.published] == [r.event_id for r in committed]
    assert _unpublished(deps) == []
    assert relay(deps.engine, deps.publisher, now=AT) == 0  # nothing left for the relay


def test_a_transaction_that_fails_after_writing_hands_over_nothing(deps, monkeypatch):
    emitting = outbox_svc.emitting

    def lost(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 — the rows are written, then the connection goes
        emitting(*args, **kwargs)
        raise OperationalError("INSERT INTO outbox", {}, Exception("server closed the connection"))

    monkeypatch.setattr(outbox_svc, "emitting", lost)
    committed: list = []
    with pytest.raises(OperationalError):
        bus.handle(deps, "matomete.purchase", [over_the_wire(_purchase())], {}, now=AT, on_commit=committed.extend)
    assert committed == []
    assert _unpublished(deps) == []  # rolled back: there is nothing to publish, now or later


def test_a_replay_and_a_conflict_hand_over_nothing(deps):
    _decide(deps, _purchase())
    replay, committed = _decide(deps, _purchase())
    assert replay["replayed"] is True and committed == []
    conflict, committed = _decide(deps, _purchase(order_id="o2"))
    assert conflict["reason"] == "MESSAGE_ID_CONFLICT" and committed == []


def test_a_publish_that_fails_half_way_leaves_the_rest_to_the_relay(deps):
    _, committed = _decide(deps, _purchase())

    class Broken:
        def publish(self, queue: str, body: str, event_id: str) -> None:
            raise ConnectionError("broker down")

    with pytest.raises(ConnectionError):
        publish_written(deps.engine, Broken(), committed, now=AT)
    assert sorted(_unpublished(deps)) == sorted(r.event_id for r in committed)
    assert relay(deps.engine, deps.publisher, now=AT) == 2
