"""A worker whose Redis connection is lost reconnects even when kombu fails to close the dead
connection (workers/consumer.py). Celery's consumer collects the lost connection, then closes it.
If Redis went away while the channel was closing, the first close fails part-way. The second
close then restores the unacknowledged messages through the transport that collect released, and
kombu raises AttributeError. Celery's consumer treated that as unrecoverable: the worker stayed
alive and stopped deciding (CI, tests/faults/test_broker_restart.py)."""

from __future__ import annotations

import logging

import pytest
import redis
from celery.worker.consumer import Consumer as CeleryConsumer
from kombu import Connection

from workers.app import app
from workers.consumer import Consumer

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
