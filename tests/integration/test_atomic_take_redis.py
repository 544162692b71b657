"""The workers take a message off its queue and record it as unacknowledged in one atomic step
(workers/transport.py). kombu's own Redis transport pops it with BRPOP and records it with a second
command: a worker killed, or a Redis shut down, between the two lost the message for good."""

from __future__ import annotations

import json
import select

import pytest
import redis
from celery import Celery
from kombu import Connection

from workers.transport import WAIT_S, Channel, Transport

pytestmark = pytest.mark.integration


@pytest.fixture
def r(redis_url):  # noqa: ANN001, ANN201
    return redis.Redis.from_url(redis_url)


def _sender(redis_url: str) -> Celery:
    """A bare Celery client, as a provider sends."""
    client = Celery("sender", broker=redis_url, set_as_current=False)
    client.conf.update(task_serializer="json")
    return client


def _consuming(redis_url: str, *queues: str) -> tuple[Connection, list]:
    conn, got = Connection(redis_url, transport=Transport), []
    for queue in queues:
        conn.default_channel.basic_consume(queue, no_ack=False, callback=got.append, consumer_tag=queue)
    return conn, got


def test_the_workers_consume_with_the_atomic_take():
    from workers.app import app

    with app.connection_for_read() as conn:
        assert isinstance(conn.default_channel, Channel)


def test_a_message_taken_is_recorded_unacknowledged_in_the_same_step(redis_url, r):
    _sender(redis_url).send_task("matomete.purchase", args=[{"n": 1}], queue="provider-events")
    conn, got = _consuming(redis_url, "provider-events")
    channel = conn.default_channel
    conn.transport.cycle.on_poll_start()  # the take is sent, Redis answers ...
    sock = channel.client.connection._sock
    assert select.select([sock], [], [], 5)[0], "no answer to the take"
    channel.client.connection.disconnect()  # ... and the worker dies before it reads the answer

    assert got == [] and r.llen("provider-events") == 0
    [tag] = r.hkeys("unacked")
    payload, exchange, routing_key = json.loads(r.hget("unacked", tag))
    assert payload["headers"]["task"] == "matomete.purchase" and routing_key == "provider-events"
    assert r.zscore("unacked_index", tag) is not None  # so the visibility sweep finds it

    channel.qos.restore_by_tag(tag)  # what the sweep does once the visibility timeout has passed
    assert r.llen("provider-events") == 1 and r.hlen("unacked") == 0


def test_messages_are_taken_oldest_first_and_stay_recorded_until_acknowledged(redis_url, r):
    sender = _sender(redis_url)
    for n in range(3):
        sender.send_task("matomete.purchase", args=[{"n": n}], queue="provider-events")
    conn, got = _consuming(redis_url, "provider-events")
    for _ in range(3):
        conn.drain_events(timeout=5)

    assert [json.loads(m.body)[0][0]["n"] for m in got] == [0, 1, 2]
    assert r.hlen("unacked") == 3 and r.zcard("unacked_index") == 3
    for m in got:
        m.ack()
    assert r.hlen("unacked") == 0 and r.zcard("unacked_index") == 0


def test_an_idle_channel_waits_without_taking_and_then_takes_from_any_of_its_queues(redis_url, r, monkeypatch):
    sent = []
    send_command = redis.connection.AbstractConnection.send_command

    def spy(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        sent.append(args[0])
        return send_command(self, *args, **kwargs)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_command", spy)
    conn, got = _consuming(redis_url, "provider-events", "line-changes")
    with pytest.raises(TimeoutError):
        conn.drain_events(timeout=4 * WAIT_S)  # nothing to take: it waits, again and again
    polls = [c for c in sent if c in ("EVAL", "BLMOVE")]
    assert polls[:3] == ["EVAL", "BLMOVE", "EVAL"]  # a take, a wait, a take ...
    assert ("EVAL", "EVAL") not in set(zip(polls, polls[1:]))  # ... never a take right after an empty one

    _sender(redis_url).send_task("matomete.line_change", args=[{"n": 1}], queue="line-changes")
    conn.drain_events(timeout=5)  # a message on a queue it was not waiting on

    [message] = got
    assert message.delivery_info["routing_key"] == "line-changes" and r.hlen("unacked") == 1
    assert r.llen("line-changes") == 0 and r.llen("provider-events") == 0


@pytest.mark.parametrize("url, ours", [("redis://localhost:6379/0", True), ("rediss://h:6380/0", True),
                                       ("sentinel://h:26379", False), ("redis+socket:///tmp/redis.sock", False)])
def test_a_redis_url_gets_the_atomic_take_and_any_other_kombu_s_own_transport(url, ours):
    from workers.app import transport_for

    assert (transport_for(url) == "workers.transport:Transport") is ours


def test_an_entry_that_is_no_kombu_message_taken_as_the_channel_closes_stays_held(redis_url, r):
    from workers.transport import HELD

    r.lpush("provider-events", b"not a message")
    conn, got = _consuming(redis_url, "provider-events")
    conn.transport.cycle.on_poll_start()  # the take is in flight ...
    conn.default_channel.close()          # ... as the worker shuts down
    assert got == [] and r.lrange(HELD, 0, -1) == [b"not a message"]
