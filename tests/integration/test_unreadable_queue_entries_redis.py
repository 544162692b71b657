"""A Redis list entry that is no kombu message made kombu raise as it read the queue, and the
worker stopped ("Unrecoverable error"). The worker's consumer sets it aside (INVALID_MESSAGE) and
turns the error into a connection error, so that it reconnects (workers/consumer.py); an error
from anywhere else in its event loop is left as it was. End to end: tests/faults/
test_poison_and_forgery.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import redis
from kombu import Connection

from matomete_core.service.quarantine import list_quarantined
from workers import consumer as consumer_module
from workers.consumer import Consumer, _past_unreadable_entries

pytestmark = pytest.mark.integration


class _Backend:
    def store_result(self, *_args: object) -> None:
        raise AssertionError("an entry with no task id has no result to store")


def _consumer(monkeypatch, engine) -> Consumer:  # noqa: ANN001
    monkeypatch.setattr(consumer_module, "_engine", lambda: engine)
    c = Consumer.__new__(Consumer)
    c.app = SimpleNamespace(backend=_Backend())
    return c


def _reading(redis_url: str, entry: bytes):  # noqa: ANN202
    """kombu consuming a queue that holds ``entry``: what Celery's event loop does, one read."""
    redis.Redis.from_url(redis_url).lpush("unreadable", entry)
    conn = Connection(redis_url)
    conn.default_channel.basic_consume("unreadable", no_ack=False, callback=lambda m: None, consumer_tag="t")
    return lambda: conn.drain_events(timeout=5)


@pytest.mark.parametrize("entry, kombu_raises, kept_as", [
    (b"this is not json", ValueError, "this is not json"),  # kept as text
    (b"{}", KeyError, {}),                                    # kept as the JSON it is
])
def test_an_entry_kombu_cannot_read_is_set_aside_and_the_consumer_reconnects(redis_url, pg_deps, monkeypatch,
                                                                             entry, kombu_raises, kept_as):
    read = _reading(redis_url, entry)
    with pytest.raises(kombu_raises):
        read()  # kombu itself, as Celery's loop met it
    loop = _past_unreadable_entries(_reading(redis_url, entry), _consumer(monkeypatch, pg_deps.engine))
    with pytest.raises(ConnectionError, match="no kombu message"):
        loop()
    [kept] = list_quarantined(pg_deps.engine)
    assert kept["reason"] == "INVALID_MESSAGE" and kept["task"] == "unknown"
    assert kept["message"] == kept_as


def test_an_error_from_elsewhere_in_the_loop_is_left_as_it_was(monkeypatch, pg_deps):
    def loop() -> None:
        raise ValueError("a bug of the loop's own")

    with pytest.raises(ValueError, match="the loop's own"):
        _past_unreadable_entries(loop, _consumer(monkeypatch, pg_deps.engine))()
    assert list_quarantined(pg_deps.engine) == []



def test_an_error_raised_while_celery_handles_a_message_kombu_read_is_left_as_it_was(redis_url, pg_deps,
                                                                                   monkeypatch):
    from celery.utils.text import truncate  # Celery's code, failing on what it is given: a message

    conn = Connection(redis_url)
    conn.SimpleQueue("readable").put({"n": 1})
    conn.default_channel.basic_consume("readable", no_ack=False, callback=truncate, consumer_tag="t")
    with pytest.raises(TypeError):
        _past_unreadable_entries(lambda: conn.drain_events(timeout=5), _consumer(monkeypatch, pg_deps.engine))()
    assert list_quarantined(pg_deps.engine) == []
