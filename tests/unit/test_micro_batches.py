"""Micro-batches (service.batch) decide exactly as one message at a time does: the same decisions,
the same charges, inbox and outbound messages — for any mix of messages, cut into batches of any size."""

from __future__ import annotations

import random
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import select

from matomete_core.adapters.tables import charges, held_cancels, inbox, outbox, purchases
from matomete_core.service import batch, bus
from matomete_core.service.close import close_month
from matomete_core.testing import over_the_wire, signed
from tests.unit.conftest import SECRETS, jst

PASSPORTS = ["user01", "user02", "user03", "blocked1", "newbie01", "lineblk1", "prem01", "nobody"]
CONTENTS = [("PB", "coin"), ("PB", "coin"), ("PB", "coin"), ("PB", "anime1"), ("PB", "anime2"), ("PA", "pack"),
            ("PA", "trial"), ("PA", "nothing")]
JULY, AUGUST = "2026-07-20 10:00", "2026-08-10 12:00"


def messages(seed: int, n: int = 70) -> list[tuple[str, list, dict]]:
    """A random day of traffic: purchases (some over a limit, some for closed months, some for
    unknown IDs or contents), cancels (some before their purchase), redeliveries, conflicts, forgeries."""
    rnd = random.Random(seed)
    out: list[tuple[str, list, dict]] = []
    orders: list[tuple[str, str]] = []
    for i in range(n):
        provider_id, content_id = rnd.choice(CONTENTS)
        at = jst(rnd.choice([JULY, AUGUST, AUGUST, AUGUST]))
        roll = rnd.random()
        if roll < 0.12 and out:  # a redelivery
            out.append(rnd.choice(out))
            continue
        if roll < 0.22 and orders:  # a cancel, of a known or a future order
            pid, order_id = rnd.choice(orders) if rnd.random() < 0.7 else (provider_id, f"o{seed}-{i + 3}")
            body = {"message_id": f"c{seed}-{i}", "occurred_at": jst(AUGUST).isoformat(), "provider_id": pid,
                    "order_id": order_id}
            out.append(("matomete.cancel", [signed(body, SECRETS[pid])], {}))
            continue
        order_id = f"o{seed}-{i}" if rnd.random() > 0.05 or not orders else rnd.choice(orders)[1]
        body: dict[str, Any] = {"message_id": f"m{seed}-{i}", "occurred_at": at.isoformat(), "provider_id": provider_id,
                                "order_id": order_id, "passport_id": rnd.choice(PASSPORTS), "content_id": content_id,
                                "quantity": rnd.choice([1, 1, 2, 5, 9])}
        if content_id != "coin":
            body["quantity"] = 1
        orders.append((provider_id, order_id))
        message = signed(body, SECRETS[provider_id])
        if roll > 0.97:
            message = {**message, "signature": "0" * 64}  # forged
        elif roll > 0.94 and out:  # an earlier message's id with other content
            earlier = rnd.choice(out)[1][0]
            message = signed({**{k: v for k, v in body.items() if k != "message_id"},
                              "message_id": earlier["message_id"], "provider_id": earlier["provider_id"]},
                             SECRETS[earlier["provider_id"]])
        out.append(("matomete.purchase", [message], {}))
    return [(t, over_the_wire(a), k) for t, a, k in out]


def state(deps) -> dict[str, Any]:  # noqa: ANN001
    """What the messages left behind, without generated ids."""
    with deps.engine.connect() as conn:
        c, p = charges.c, purchases.c
        return {
            "charges": sorted(tuple(r) for r in conn.execute(
                select(p.order_id, c.service_month, c.billing_month, c.amount, c.late, c.voided_at.is_not(None))
                .select_from(charges).join(purchases, p.application_number == c.application_number))),
            "purchases": sorted(tuple(r) for r in conn.execute(
                select(p.provider_id, p.order_id, p.start_month, p.last_month, p.cancelled_at.is_not(None)))),
            "inbox": sorted((r.sender, r.message_id, _decided(r.decision)) for r in conn.execute(select(inbox))),
            "held": sorted(conn.execute(select(held_cancels.c.message_id)).scalars()),
            "outbox": sorted((q, _without_ids(b)) for q, b in conn.execute(select(outbox.c.queue, outbox.c.body))),
        }


def _decided(decision: dict | None) -> tuple | None:
    return None if decision is None else (decision["status"], decision.get("reason"), decision.get("billing_month"))


def _without_ids(body: str) -> str:
    import json

    doc = json.loads(body)
    doc.pop("event_id", None)
    doc.pop("application_number", None)
    return json.dumps(doc, sort_keys=True)


def one_by_one(deps, msgs, now: datetime) -> list[dict]:  # noqa: ANN001
    return [bus.handle(deps, t, a, k, now=now) for t, a, k in msgs]


def in_batches(deps, msgs, now: datetime, size: int) -> list[dict]:  # noqa: ANN001
    out: list[dict] = []
    for i in range(0, len(msgs), size):
        out += batch.decide_batch(deps, msgs[i:i + size], now=now)
    return out


def comparable(decisions: list[dict]) -> list[tuple]:
    return [(d["message_id"], d["status"], d["reason"], d["billing_month"], d["replayed"],
             d["application_number"] is not None) for d in decisions]


@pytest.fixture
def twin(deps, tmp_path):  # noqa: ANN001, ANN201
    """A second database like ``deps``'s, and July closed in both (so some purchases are late)."""
    import shutil
    from dataclasses import replace

    from matomete_core.adapters.database import make_engine

    close_month(deps.engine, "2026-07", now=jst("2026-08-01 03:00"), export_dir=tmp_path / "x1")
    deps.engine.dispose()
    copy = tmp_path / "twin.db"
    shutil.copy(deps.settings.database_url.removeprefix("sqlite:///"), copy)
    other = replace(deps, engine=make_engine(f"sqlite:///{copy}"))
    yield other
    other.engine.dispose()


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("size", [1, 4, 25, 500])
def test_micro_batches_decide_exactly_as_one_message_at_a_time(deps, twin, seed, size, caplog):
    msgs = messages(seed)
    now = jst("2026-08-10 12:30")
    expected = one_by_one(deps, msgs, now)
    got = in_batches(twin, msgs, now, size)
    assert comparable(got) == comparable(expected)
    assert state(twin) == state(deps)
    assert "batch run failed" not in caplog.text  # decided by the batch, not by its fallback


def test_the_traffic_takes_every_path(deps, twin):
    """The comparison above means something only if its traffic meets every outcome."""
    now = jst("2026-08-10 12:30")
    outcomes = set()
    for seed in range(6):
        for d in one_by_one(deps if seed % 2 else twin, messages(seed), now):
            outcomes.add((d["status"], d["reason"], d["replayed"], d["billing_month"] == "2026-08"))
    assert {("accepted", None, False, True), ("accepted", None, True, True), ("held", None, False, False),
            ("quarantined", "BAD_SIGNATURE", False, False), ("quarantined", "MESSAGE_ID_CONFLICT", False, False),
            ("rejected", "ALREADY_SUBSCRIBED", False, False), ("rejected", "DUPLICATE_ORDER", False, False),
            ("rejected", "LINE_LIMIT_EXCEEDED", False, False), ("rejected", "PASSPORT_LIMIT_EXCEEDED", False, False),
            ("rejected", "RESTRICTED", False, False), ("rejected", "UNKNOWN_ORDER", False, False),
            ("rejected", "UNKNOWN_PASSPORT_ID", False, False), ("rejected", "UNKNOWN_CONTENT", False, False),
            ("rejected", "PASSPORT_ID_NOT_READY", False, False), ("rejected", "LINE_NOT_ELIGIBLE", False, False),
            } <= outcomes


def test_a_batch_keeps_within_the_limits_what_it_accepts_together(deps):
    """user02's own limit is 1,000 yen: ten coins fit, the eleventh is refused — all in one batch."""
    now = jst(AUGUST)
    msgs = [("matomete.purchase", [over_the_wire(signed(
        {"message_id": f"m{i}", "occurred_at": now.isoformat(), "provider_id": "PB", "order_id": f"o{i}",
         "passport_id": "user02", "content_id": "coin", "quantity": 1}, SECRETS["PB"]))], {}) for i in range(11)]
    decisions = batch.decide_batch(deps, msgs, now=now)
    assert [d["status"] for d in decisions] == ["accepted"] * 10 + ["rejected"]
    assert decisions[-1]["reason"] == "PASSPORT_LIMIT_EXCEEDED"


def test_a_batch_redelivered_replays_every_decision(deps):
    now = jst(AUGUST)
    msgs = messages(7, 30)
    first = batch.decide_batch(deps, msgs, now=now)
    before = state(deps)
    again = batch.decide_batch(deps, msgs, now=now)
    assert [(d["message_id"], d["status"], d["reason"]) for d in again] == \
        [(d["message_id"], d["status"], d["reason"]) for d in first]
    assert all(d["replayed"] or d["status"] == "quarantined" for d in again)
    assert state(deps)["charges"] == before["charges"]


def test_a_batch_hands_over_what_it_committed(deps):
    now = jst(AUGUST)
    committed: list = []
    batch.decide_batch(deps, messages(3, 20), now=now, on_commit=committed.extend)
    with deps.engine.connect() as conn:
        stored = dict(conn.execute(select(outbox.c.event_id, outbox.c.body)).all())
    handed = {r.event_id for r in committed}
    assert handed <= set(stored)
    # the rest are quarantines told to their provider: their own transaction, relayed by the worker
    assert all('"status":"quarantined"' in stored[e] for e in set(stored) - handed)
