"""The outbox relay on the real Redis: outbox rows written by real decisions are published to the
durable queues ``provider-results.<provider_id>`` and ``billing-records``, at least once — a relay
killed between publishing and marking publishes again with the same ``event_id``: consumers may see
a duplicate, never a gap. (The outbox itself is an embedded SQLite file: no PostgreSQL needed.)"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from kombu import Connection
from sqlalchemy import select

from matomete_core.adapters import relay as relay_module
from matomete_core.adapters.migrate import upgrade
from matomete_core.adapters.relay import KombuPublisher, relay
from matomete_core.adapters.tables import outbox
from matomete_core.config import Settings
from matomete_core.service.deps import Deps, bootstrap
from matomete_core.service.loading import load_catalog, load_lines
from tests.unit.conftest import CATALOG, LINES, Provider, jst

pytestmark = pytest.mark.integration

RESULTS_PB = "provider-results.PB"
RESULTS_PA = "provider-results.PA"
BILLING = "billing-records"
QUEUES = (RESULTS_PA, RESULTS_PB, BILLING)
RELAY_AT = jst("2026-08-10 12:05")


@pytest.fixture
def deps(redis_url: str, tmp_path: Path) -> Iterator[Deps]:
    """The unit tier's set-up on a SQLite file, with the real kombu publisher on a claimed Redis DB."""
    db = tmp_path / "relay.db"
    upgrade(f"sqlite:///{db}")
    settings = Settings(database_url=f"sqlite:///{db}", key_file=str(tmp_path / "relay.key"), broker_url=redis_url)
    publisher = KombuPublisher(redis_url)
    d = bootstrap(settings, publisher=publisher)
    (tmp_path / "catalog.json").write_text(json.dumps(CATALOG, ensure_ascii=False))
    (tmp_path / "lines.json").write_text(json.dumps(LINES, ensure_ascii=False))
    load_catalog(d.engine, d.secrets, tmp_path / "catalog.json")
    load_lines(d.engine, settings, tmp_path / "lines.json")
    yield d
    publisher.close()
    d.engine.dispose()


@pytest.fixture
def provider(deps: Deps) -> Provider:
    return Provider(deps)


def drain(url: str, queue: str) -> list[tuple[dict, dict]]:
    """Every message waiting on ``queue``: (body, properties + headers), each acked."""
    got = []
    with Connection(url) as conn:
        q = conn.SimpleQueue(queue)
        try:
            while True:
                try:  # published synchronously: once one is here, the rest already are
                    message = q.get_nowait() if got else q.get(block=True, timeout=2)
                except q.Empty:
                    break
                body = message.body.decode("utf-8") if isinstance(message.body, bytes) else message.body
                got.append((json.loads(body), {**message.properties, "headers": message.headers,
                                               "content_type": message.content_type}))
                message.ack()
        finally:
            q.close()
    return got


def outbox_rows(deps: Deps) -> list[dict]:
    with deps.engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(outbox).order_by(outbox.c.id)).mappings().all()]


def decide_some(provider: Provider) -> list[dict]:
    """Real decisions: two accepted B社 purchases, one accepted A社 purchase, one refusal."""
    return [
        provider.buy("user01", "anime1", jst("2026-08-10 12:00"), order_id="b-1"),
        provider.buy("user02", "coin", jst("2026-08-10 12:01"), order_id="b-2", quantity=2),
        provider.buy("user03", "pack", jst("2026-08-10 12:02"), order_id="a-1"),
        provider.buy("blocked1", "anime2", jst("2026-08-10 12:03"), order_id="b-3"),
    ]


class CrashingPublisher:
    """Publishes for real, then dies on the ``crash_on``-th call — after that message went out."""

    def __init__(self, inner: KombuPublisher, crash_on: int):
        self.inner, self.crash_on, self.calls = inner, crash_on, 0

    def publish(self, queue: str, body: str, event_id: str) -> None:
        self.calls += 1
        self.inner.publish(queue, body, event_id)
        if self.calls == self.crash_on:
            raise KeyboardInterrupt("relay killed after publishing")


# ---- publishing --------------------------------------------------------------------------------

def test_the_relay_publishes_decisions_and_charges_to_their_queues(deps, provider, redis_url):
    # given real decisions, whose events wait in the outbox
    decisions = decide_some(provider)
    assert [d["status"] for d in decisions] == ["accepted", "accepted", "accepted", "rejected"]
    rows = outbox_rows(deps)
    assert rows and all(r["published_at"] is None for r in rows)
    # when the relay runs
    published = relay(deps.engine, deps.publisher, now=RELAY_AT)
    # then every row went out once, to its queue, as JSON with a type and the row's event_id
    assert published == len(rows)
    seen = {queue: drain(redis_url, queue) for queue in QUEUES}
    assert sum(len(v) for v in seen.values()) == len(rows)
    assert Counter(q for q, msgs in seen.items() for _ in msgs) == Counter(r["queue"] for r in rows)
    by_event = {r["event_id"]: r for r in rows}
    for queue, messages in seen.items():
        for body, props in messages:
            assert {"type", "event_id"} <= set(body)
            assert by_event[body["event_id"]]["queue"] == queue
            assert body == json.loads(by_event[body["event_id"]]["body"])
            assert props["headers"]["event_id"] == body["event_id"]
            assert props["content_type"] == "application/json"
            assert props.get("delivery_mode") == 2  # persistent
    # the provider's results: one decision per message of that provider, in order
    results_pb = [b for b, _ in seen[RESULTS_PB]]
    assert [(b["type"], b["message_id"], b["status"], b["reason"]) for b in results_pb] == [
        ("decision", decisions[0]["message_id"], "accepted", None),
        ("decision", decisions[1]["message_id"], "accepted", None),
        ("decision", decisions[3]["message_id"], "rejected", "RESTRICTED")]
    assert [(b["type"], b["application_number"]) for b, _ in seen[RESULTS_PA]] == [
        ("decision", decisions[2]["application_number"])]
    # billing: one charge per accepted purchase
    charges = [b for b, _ in seen[BILLING]]
    assert {b["type"] for b in charges} == {"charge"}
    assert sorted((b["application_number"], b["amount"]) for b in charges) == sorted([
        (decisions[0]["application_number"], 300), (decisions[1]["application_number"], 200),
        (decisions[2]["application_number"], 525)])
    # and every row is marked published
    assert all(r["published_at"] == RELAY_AT for r in outbox_rows(deps))


def test_a_second_relay_publishes_nothing(deps, provider, redis_url):
    # given everything relayed and consumed
    decide_some(provider)
    first = relay(deps.engine, deps.publisher, now=RELAY_AT)
    assert first > 0
    for queue in QUEUES:
        drain(redis_url, queue)
    # when the relay runs again
    again = relay(deps.engine, deps.publisher, now=jst("2026-08-10 12:06"))
    # then nothing is published and the marks stay as they were
    assert again == 0
    assert {queue: drain(redis_url, queue) for queue in QUEUES} == {queue: [] for queue in QUEUES}
    assert all(r["published_at"] == RELAY_AT for r in outbox_rows(deps))


def test_events_decided_after_a_relay_are_published_by_the_next(deps, provider, redis_url):
    provider.buy("user01", "anime1", jst("2026-08-10 12:00"), order_id="b-1")
    relay(deps.engine, deps.publisher, now=RELAY_AT)
    before = {r["event_id"] for r in outbox_rows(deps)}
    # when a cancel is decided and the relay runs again
    assert provider.cancel("b-1", jst("2026-08-20 12:00"))["status"] == "accepted"
    new = [r for r in outbox_rows(deps) if r["event_id"] not in before]
    assert relay(deps.engine, deps.publisher, now=jst("2026-08-20 12:01")) == len(new) > 0
    # then the consumer gets the first events once, then the new ones once
    events = [b["event_id"] for q in QUEUES for b, _ in drain(redis_url, q)]
    assert Counter(events) == Counter(before | {r["event_id"] for r in new})


def test_beat_leaves_the_rows_of_a_decision_moments_ago_to_the_worker_publishing_them(deps, provider, redis_url):
    # given decisions at 12:00 – 12:03, and beat's relay (which leaves a row RELAY_SETTLED = 5 s to
    # the worker that wrote it) at 12:03:02
    from workers.tasks import RELAY_SETTLED

    decide_some(provider)
    last = jst("2026-08-10 12:03")
    relay(deps.engine, deps.publisher, now=last + timedelta(seconds=2), settled_for=RELAY_SETTLED)
    # then the rows of 12:03 are left, all the others published
    left = [r for r in outbox_rows(deps) if r["published_at"] is None]
    assert left and all(r["created_at"] == last for r in left)
    # and the next run, past the 5 s, publishes them
    assert relay(deps.engine, deps.publisher, now=last + timedelta(seconds=6), settled_for=RELAY_SETTLED) == len(left)
    events = [b["event_id"] for q in QUEUES for b, _ in drain(redis_url, q)]
    assert Counter(events) == Counter(r["event_id"] for r in outbox_rows(deps))  # each once


def test_beats_relay_task_leaves_rows_their_worker_is_publishing(monkeypatch):
    from types import SimpleNamespace

    from workers import tasks

    asked: dict = {}
    monkeypatch.setattr(tasks, "deps", lambda: SimpleNamespace(engine="engine", publisher="publisher"))
    monkeypatch.setattr(tasks, "relay", lambda *a, **kw: asked.update(kw) or 0)
    tasks.relay_outbox.run()
    assert asked["settled_for"] == tasks.RELAY_SETTLED > timedelta(0)


# ---- at least once --------------------------------------------------------------------------------

def test_a_relay_killed_after_publishing_republishes_the_same_event_ids(deps, provider, redis_url):
    # given events in the outbox, and a relay that dies right after publishing the 2nd
    decide_some(provider)
    rows = outbox_rows(deps)
    crashing = CrashingPublisher(deps.publisher, crash_on=2)
    with pytest.raises(KeyboardInterrupt):
        relay(deps.engine, crashing, now=RELAY_AT)
    # then nothing is marked published: the rows wait for the next relay
    assert all(r["published_at"] is None for r in outbox_rows(deps))
    # when the next relay runs
    assert relay(deps.engine, deps.publisher, now=jst("2026-08-10 12:06")) == len(rows)
    # then the consumer sees the first two twice with the same event_id and body, and nothing missing
    seen = [(q, b) for q in QUEUES for b, _ in drain(redis_url, q)]
    counts = Counter(b["event_id"] for _, b in seen)
    assert set(counts) == {r["event_id"] for r in rows}  # no gap
    assert counts == Counter({r["event_id"]: 2 if i < 2 else 1 for i, r in enumerate(rows)})
    for q, b in seen:
        (row,) = [r for r in rows if r["event_id"] == b["event_id"]]
        assert (q, b) == (row["queue"], json.loads(row["body"]))
    assert all(r["published_at"] is not None for r in outbox_rows(deps))


def test_a_relay_killed_before_marking_republishes_everything_with_the_same_event_ids(
        deps, provider, redis_url, monkeypatch):
    # given events in the outbox, and a relay that publishes all of them but dies before marking
    decide_some(provider)
    rows = outbox_rows(deps)

    def killed(*_a, **_kw):  # noqa: ANN002, ANN003, ANN202
        raise KeyboardInterrupt("relay killed before marking")

    monkeypatch.setattr(relay_module, "update", killed)
    with pytest.raises(KeyboardInterrupt):
        relay(deps.engine, deps.publisher, now=RELAY_AT)
    monkeypatch.undo()
    assert all(r["published_at"] is None for r in outbox_rows(deps))
    # when the next relay runs
    assert relay(deps.engine, deps.publisher, now=jst("2026-08-10 12:06")) == len(rows)
    # then every event arrived exactly twice, under the same event_id, the same body each time
    seen = [b for q in QUEUES for b, _ in drain(redis_url, q)]
    assert Counter(b["event_id"] for b in seen) == Counter({r["event_id"]: 2 for r in rows})
    bodies: dict[str, list[dict]] = {}
    for b in seen:
        bodies.setdefault(b["event_id"], []).append(b)
    assert all(first == second for first, second in bodies.values())
    # and a third relay publishes nothing
    assert relay(deps.engine, deps.publisher, now=jst("2026-08-10 12:07")) == 0


def test_a_relay_killed_in_a_later_batch_keeps_the_earlier_batches_marked(deps, provider, redis_url):
    # given more events than a batch, and a relay that dies on the 3rd publish (batches of 2)
    decide_some(provider)
    rows = outbox_rows(deps)
    assert len(rows) >= 4
    with pytest.raises(KeyboardInterrupt):
        relay(deps.engine, CrashingPublisher(deps.publisher, crash_on=3), now=RELAY_AT, batch=2)
    # then the first batch is marked, the rest is not
    marks = [r["published_at"] for r in outbox_rows(deps)]
    assert marks[:2] == [RELAY_AT, RELAY_AT] and all(m is None for m in marks[2:])
    # when the next relay runs
    assert relay(deps.engine, deps.publisher, now=jst("2026-08-10 12:06"), batch=2) == len(rows) - 2
    # then only the 3rd event is seen twice; none is missing
    counts = Counter(b["event_id"] for q in QUEUES for b, _ in drain(redis_url, q))
    assert counts == Counter({r["event_id"]: 2 if i == 2 else 1 for i, r in enumerate(rows)})


def test_a_message_published_in_a_batch_is_the_one_kombu_writes_but_for_its_delivery_tag(redis_url):
    """KombuPublisher.publish_many builds the envelopes itself (kombu_envelope); publish has kombu
    write them. Field by field the same, so that a kombu upgrade that changes its envelope fails here."""
    r = redis.Redis.from_url(redis_url)
    publisher = KombuPublisher(redis_url)
    body = json.dumps({"type": "decision", "event_id": "ev-1", "name": "コイン\u2028「引用」"}, ensure_ascii=False)
    publisher.publish(RESULTS_PA, body, "ev-1")
    publisher.publish_many([(RESULTS_PA, body, "ev-1"), (BILLING, body, "ev-2")])
    publisher.close()
    by_kombu, built_here = (json.loads(r.rpop(RESULTS_PA)) for _ in range(2))
    tags = by_kombu["properties"].pop("delivery_tag"), built_here["properties"].pop("delivery_tag")
    assert built_here == by_kombu
    assert all(isinstance(tag, str) and len(tag) == 36 for tag in tags) and tags[0] != tags[1]
    [(read, meta)] = drain(redis_url, BILLING)  # and a kombu consumer reads it as it reads kombu's own
    assert read == json.loads(body) and meta["headers"] == {"event_id": "ev-2"}
    assert meta["content_type"] == "application/json" and meta["delivery_mode"] == 2


def test_messages_published_in_a_batch_are_read_in_the_order_given_on_each_queue(redis_url):
    publisher = KombuPublisher(redis_url)
    publisher.publish_many([(RESULTS_PA if n % 3 else BILLING, json.dumps({"n": n}), f"ev-{n}") for n in range(10)])
    publisher.close()
    assert [body["n"] for body, _ in drain(redis_url, RESULTS_PA)] == [1, 2, 4, 5, 7, 8]
    assert [meta["headers"]["event_id"] for _, meta in drain(redis_url, BILLING)] == ["ev-0", "ev-3", "ev-6", "ev-9"]
