"""A Redis list entry that is no kombu message is taken like any other (workers.transport) and
raised as ``Unreadable`` before Celery sees it. The worker's consumer sets it aside
(INVALID_MESSAGE), discards it from Redis and reconnects (workers/consumer.py); if it cannot be
set aside yet, it stays where the take put it; an error from anywhere else in its event loop is
left as it was. End to end: tests/faults/test_poison_and_forgery.py."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import redis
from kombu import Connection

from matomete_core.service.quarantine import list_quarantined
from workers import consumer as consumer_module
from workers import entries
from workers.consumer import Consumer, _past_unreadable_entries, set_aside_held
from workers.transport import HELD, Transport

pytestmark = pytest.mark.integration

UNDECODABLE_BODY = {"properties": {"delivery_tag": "t-1", "body_encoding": "base64"}, "body": "%% not base64"}


class _Backend:
    def __init__(self) -> None:
        self.stored: list[tuple] = []

    def store_result(self, *args: object) -> None:
        self.stored.append(args)


def _consumer(monkeypatch, engine, redis_url: str) -> Consumer:  # noqa: ANN001
    monkeypatch.setattr(consumer_module, "_engine", lambda: engine)
    c = Consumer.__new__(Consumer)
    c.app, c.connection = SimpleNamespace(backend=_Backend()), Connection(redis_url, transport=Transport)
    return c


def _reading(redis_url: str, entry: bytes):  # noqa: ANN202
    """The workers' transport consuming a queue that holds ``entry``: what Celery's event loop does,
    one read."""
    redis.Redis.from_url(redis_url).lpush("unreadable", entry)
    conn = Connection(redis_url, transport=Transport)
    conn.default_channel.basic_consume("unreadable", no_ack=False, callback=lambda m: None, consumer_tag="t")
    return lambda: conn.drain_events(timeout=5)


@pytest.mark.parametrize("entry, kept_as", [
    (b"this is not json", "this is not json"),  # kept as text
    (b"{}", {}),                                  # kept as the JSON it is
    (json.dumps(UNDECODABLE_BODY).encode(), UNDECODABLE_BODY),  # a delivery tag, a body kombu cannot decode
])
def test_an_entry_that_is_no_kombu_message_is_set_aside_and_the_consumer_reconnects(redis_url, pg_deps, monkeypatch,
                                                                                  entry, kept_as):
    r = redis.Redis.from_url(redis_url)
    consumer = _consumer(monkeypatch, pg_deps.engine, redis_url)
    loop = _past_unreadable_entries(_reading(redis_url, entry), consumer)
    with pytest.raises(ConnectionError, match="no kombu message|no delivery tag"):
        loop()
    [kept] = list_quarantined(pg_deps.engine)
    assert kept["reason"] == "INVALID_MESSAGE" and kept["task"] == "unknown"
    assert kept["message"] == kept_as
    assert consumer.app.backend.stored == []  # no task id: no result to store
    assert r.llen("unreadable") == 0 and r.llen(HELD) == 0 and r.hlen("unacked") == 0  # discarded, once kept


def test_an_entry_that_cannot_be_set_aside_yet_stays_where_the_take_put_it(redis_url, pg_deps, monkeypatch):
    r = redis.Redis.from_url(redis_url)
    consumer = _consumer(monkeypatch, pg_deps.engine, redis_url)
    r.lpush("unreadable", json.dumps(UNDECODABLE_BODY))
    loop = _past_unreadable_entries(_reading(redis_url, b"\xff no tag"), consumer)
    with monkeypatch.context() as away:
        away.setattr(entries, "quarantine_message", _database_down)
        for _ in range(2):
            with pytest.raises(ConnectionError):
                loop()
        set_aside_held(consumer)  # the sweep, while the database is still away
    assert list_quarantined(pg_deps.engine) == []
    assert r.lrange(HELD, 0, -1) == [b"\xff no tag"]  # the body with no tag: held
    assert r.hkeys("unacked") == [b"t-1"]                # the one with a tag: recorded, for the visibility sweep

    set_aside_held(consumer)  # the database is back

    assert [q["reason"] for q in list_quarantined(pg_deps.engine)] == ["INVALID_MESSAGE"]
    assert r.llen(HELD) == 0


def _database_down(*_args: object, **_kwargs: object) -> None:
    from sqlalchemy.exc import OperationalError

    raise OperationalError("INSERT", {}, Exception("connection refused"))


def test_an_error_from_elsewhere_in_the_loop_is_left_as_it_was(monkeypatch, pg_deps, redis_url):
    def loop() -> None:
        raise ValueError("a bug of the loop's own")

    with pytest.raises(ValueError, match="the loop's own"):
        _past_unreadable_entries(loop, _consumer(monkeypatch, pg_deps.engine, redis_url))()
    assert list_quarantined(pg_deps.engine) == []


def _tagless_task_message(redis_url: str) -> bytes:
    """A purchase carrying secrets, as Celery would send it, less its delivery tag: what a
    hand-written client might send."""
    from celery import Celery

    client = Celery("sender", broker=redis_url, set_as_current=False)
    client.conf.update(task_serializer="json")
    client.send_task("matomete.purchase", args=[{"message_id": "tagless-1", "signature": "ab" * 32,
                                                 "access_key": "Sup3r-Secret"}], queue="tagless")
    envelope = json.loads(redis.Redis.from_url(redis_url).rpop("tagless"))
    del envelope["properties"]["delivery_tag"]
    client.close()
    return json.dumps(envelope).encode()


def test_a_task_message_set_aside_for_want_of_a_delivery_tag_is_kept_without_its_secrets(redis_url, pg_deps,
                                                                                          monkeypatch):
    consumer = _consumer(monkeypatch, pg_deps.engine, redis_url)
    with pytest.raises(ConnectionError):
        _past_unreadable_entries(_reading(redis_url, _tagless_task_message(redis_url)), consumer)()
    [kept] = list_quarantined(pg_deps.engine)
    assert kept["task"] == "matomete.purchase"
    [[body], _kwargs, _embed] = kept["message"]  # the task's own arguments, not the envelope carrying them as text
    assert body["message_id"] == "tagless-1" and body["signature"] == "***" and body["access_key"] == "***"
    assert "Sup3r-Secret" not in json.dumps(kept)
    [(_task_id, decision, _state)] = consumer.app.backend.stored  # the sender's AsyncResult gets the decision
    assert decision["status"] == "quarantined"


@pytest.mark.parametrize("entry", [b"\xff not json", b"{}", "tagless"])
def test_a_held_entry_met_by_both_workers_sweeps_is_quarantined_once(redis_url, pg_deps, monkeypatch, entry):
    """matomete worker's sweep quarantines the entry and is stopped before it removes it; the batch
    worker's sweep meets it too: one quarantine row, and the entry gone."""
    from dataclasses import replace

    from workers.batch import BatchWorker

    r = redis.Redis.from_url(redis_url)
    raw = _tagless_task_message(redis_url) if entry == "tagless" else entry
    r.rpush(HELD, raw)
    consumer = _consumer(monkeypatch, pg_deps.engine, redis_url)
    with monkeypatch.context() as stopped:
        stopped.setattr(redis.Redis, "lrem", lambda *_a: (_ for _ in ()).throw(redis.ConnectionError("killed")))
        set_aside_held(consumer)
    assert len(list_quarantined(pg_deps.engine)) == 1 and r.llen(HELD) == 1

    from celery import Celery

    deps = replace(pg_deps, settings=replace(pg_deps.settings, broker_url=redis_url))
    results = Celery("results", backend=redis_url, set_as_current=False)
    BatchWorker(size=10, deps_=deps, backend=results.backend)._sweep()
    results.close()

    assert len(list_quarantined(pg_deps.engine)) == 1 and r.llen(HELD) == 0
