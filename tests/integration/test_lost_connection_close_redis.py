"""A worker whose Redis connection is lost reconnects even when kombu fails to close the dead
connection (workers/consumer.py). Celery's consumer collects the lost connection, then closes it.
If Redis went away while the channel was closing, the first close fails part-way. The second
close then restores the unacknowledged messages through the transport that collect released, and
kombu raises AttributeError. Celery's consumer treated that as unrecoverable: the worker stayed
alive and stopped deciding (CI, tests/faults/test_broker_restart.py).

A task that finishes after that has its ack run from the event loop on the closed channel, and
kombu raises the same AttributeError there: the worker stopped deciding again (CI). The worker's
consumer leaves such a message unacknowledged in Redis, for the visibility sweep."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
import redis
from celery.worker.consumer import Consumer as CeleryConsumer
from kombu import Connection
from kombu.message import Message

from workers.app import app
from workers.consumer import Consumer
from workers.requests import RAISE_INTO_CONSUMER

pytestmark = pytest.mark.integration


def _lost_mid_close(url: str) -> Connection:
    """A connection holding one unacknowledged message whose channel fails to close, as it does
    while Redis is away, both times collect tries (the connection's default channel, then every
    channel of the transport's connection)."""
    conn = Connection(url)
    queue = conn.SimpleQueue("lost-mid-close")
    queue.put({"n": 1})
    queue.get(timeout=5)  # delivered, not acknowledged
    channel, real_close, closes = conn.default_channel, conn.default_channel.close, []

    def close() -> None:
        closes.append(1)
        if len(closes) <= 2:
            raise redis.exceptions.ConnectionError("Connection closed by server.")
        real_close()

    channel.close = close
    return conn


def _taken_then_lost(url: str) -> Message:
    """A message taken and not acknowledged, whose connection was then collected while Redis was
    away: the channel's restore of its unacknowledged messages failed, and collect released the
    transport."""
    conn = Connection(url)
    queue = conn.SimpleQueue("taken-then-lost")
    queue.put({"n": 1})
    message = queue.get(timeout=5)
    qos = conn.default_channel.qos
    qos._on_collect.cancel()  # kombu's own restore at exit, which would fail the same way

    def away() -> None:
        raise redis.exceptions.ConnectionError("Connection closed by server.")

    qos.restore_unacked_once = away
    conn.collect()
    return message


class _Hub:
    """The event loop, as far as an ack goes: callbacks run later, in its own turn."""

    def __init__(self) -> None:
        self.ready: list[Callable[[], Any]] = []

    def call_soon(self, callback: Callable[[], Any]) -> Callable[[], Any]:
        self.ready.append(callback)
        return callback

    def turn(self) -> None:
        for callback in self.ready:
            callback()


def _consumer(cls: type, conn: Connection):  # noqa: ANN202 — only what the handler reads before the close
    consumer = object.__new__(cls)
    consumer.app, consumer.connection = app, conn
    return consumer


def test_celerys_consumer_gives_up_when_kombu_cannot_close_the_lost_connection(redis_url):
    with pytest.raises(AttributeError, match="hostname"):
        CeleryConsumer.on_connection_error_after_connected(_consumer(CeleryConsumer, _lost_mid_close(redis_url)),
                                                           ConnectionError("lost"))


def test_the_worker_consumer_carries_on_to_reconnect_when_kombu_cannot_close_it(redis_url, caplog):
    assert app.conf.worker_consumer == "workers.consumer:Consumer"
    consumer = _consumer(Consumer, _lost_mid_close(redis_url))
    with caplog.at_level(logging.WARNING, logger="workers.consumer"):
        consumer.on_connection_error_after_connected(ConnectionError("lost"))
    assert consumer.connection is None  # released: the consumer's restart connects anew
    assert "reconnecting anyway" in caplog.text
    # the message it could not restore is still held in Redis, for the visibility sweep
    assert redis.Redis.from_url(redis_url).hlen("unacked") == 1


def _acked_in_the_loop(cls: type, message: Message) -> _Hub:
    hub = _Hub()
    consumer = object.__new__(cls)
    consumer.hub = hub
    consumer.call_soon_ack(message.ack_log_error, logging.getLogger("test"), RAISE_INTO_CONSUMER)
    return hub


def test_celerys_consumer_gives_up_on_an_ack_of_a_message_whose_connection_was_lost(redis_url):
    hub = _acked_in_the_loop(CeleryConsumer, _taken_then_lost(redis_url))
    with pytest.raises(AttributeError, match="hostname"):
        hub.turn()


def test_the_worker_consumer_leaves_a_message_whose_connection_was_lost_for_the_visibility_sweep(redis_url, caplog):
    message = _taken_then_lost(redis_url)
    hub = _acked_in_the_loop(Consumer, message)
    with caplog.at_level(logging.WARNING, logger="workers.consumer"):
        hub.turn()
    assert "stays unacknowledged" in caplog.text
    assert redis.Redis.from_url(redis_url).hlen("unacked") == 1  # still held, to be handed out again


def test_the_worker_consumer_acks_a_message_on_its_open_connection(redis_url):
    conn = Connection(redis_url)
    queue = conn.SimpleQueue("open")
    queue.put({"n": 1})
    hub = _acked_in_the_loop(Consumer, queue.get(timeout=5))
    hub.turn()
    assert redis.Redis.from_url(redis_url).hlen("unacked") == 0


def test_an_ack_failing_on_an_open_channel_still_raises_into_the_consumer(redis_url, monkeypatch):
    conn = Connection(redis_url)
    queue = conn.SimpleQueue("open")
    queue.put({"n": 1})
    message = queue.get(timeout=5)

    def basic_ack(*_: Any, **__: Any) -> None:
        raise AttributeError("a bug")

    monkeypatch.setattr(message.channel, "basic_ack", basic_ack)
    hub = _acked_in_the_loop(Consumer, message)
    with pytest.raises(AttributeError, match="a bug"):
        hub.turn()
