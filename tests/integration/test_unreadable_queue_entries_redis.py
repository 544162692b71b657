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
from workers.consumer import Consumer, _past_unreadable_entries, set_aside_held
from workers.transport import HELD, Transport

pytestmark = pytest.mark.integration

UNDECODABLE_BODY = {"properties": {"delivery_tag": "t-1", "body_encoding": "base64"}, "body": "%% not base64"}


class _Backend:
    def store_result(self, *_args: object) -> None:
        raise AssertionError("an entry with no task id has no result to store")


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
    loop = _past_unreadable_entries(_reading(redis_url, entry), _consumer(monkeypatch, pg_deps.engine, redis_url))
    with pytest.raises(ConnectionError, match="no kombu message|no delivery tag"):
        loop()
    [kept] = list_quarantined(pg_deps.engine)
    assert kept["reason"] == "INVALID_MESSAGE" and kept["task"] == "unknown"
    assert kept["message"] == kept_as
    assert r.llen("unreadable") == 0 and r.llen(HELD) == 0 and r.hlen("unacked") == 0  # discarded, once kept


def test_an_entry_that_cannot_be_set_aside_yet_stays_where_the_take_put_it(redis_url, pg_deps, monkeypatch):
    r = redis.Redis.from_url(redis_url)
    consumer = _consumer(monkeypatch, pg_deps.engine, redis_url)
    r.lpush("unreadable", json.dumps(UNDECODABLE_BODY))
    loop = _past_unreadable_entries(_reading(redis_url, b"\xff no tag"), consumer)
    with monkeypatch.context() as away:
        away.setattr(consumer_module, "quarantine_message", _database_down)
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
