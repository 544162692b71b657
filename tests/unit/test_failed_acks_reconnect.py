"""An ack the broker does not take must reach the worker's consumer as a lost connection, so the
consumer reconnects on a fresh channel with full prefetch credit (workers/requests.py).

Celery's own request logs a failed ack and carries on. kombu's Redis channel keeps the message's
prefetch credit when its ack fails, and does not read the connection of a consumer without credit:
a consumer that had not yet noticed Redis going away, all of whose tasks then finished during the
outage, had no credit left and never read the broker again — alive, its queue full, nothing
decided. The fault suite drives a real worker through Redis restarts (tests/faults)."""

from __future__ import annotations

import json

import pytest
import redis
from celery.worker.request import Request
from kombu import Connection, Message
from kombu.asynchronous import Hub
from vine import promise

from workers import tasks  # noqa: F401 — registers the tasks
from workers.app import app
from workers.requests import RedactedRequest

BODY = json.dumps([[{"message_id": "m-1"}], {}, {"callbacks": None}]).encode()
HEADERS = {"lang": "py", "task": "matomete.purchase", "id": "t-1", "root_id": "t-1", "parent_id": None,
           "group": None, "retries": 0, "eta": None, "expires": None}


class RedisGone:
    """A channel whose broker has gone away."""

    no_ack_consumers = None

    def basic_ack(self, delivery_tag, multiple=False):  # noqa: ANN001, ANN201
        raise redis.exceptions.ConnectionError("Connection closed by server.")

    def basic_reject(self, delivery_tag, requeue=False):  # noqa: ANN001, ANN201
        raise redis.exceptions.ConnectionError("Connection closed by server.")


def request_on(hub: Hub, request_cls: type[Request]) -> Request:
    """A request wired as Celery's consumer wires it: ack and reject run soon, on the event loop."""
    message = Message(body=BODY, channel=RedisGone(), delivery_tag="tag-1", content_type="application/json",
                      content_encoding="utf-8", headers=dict(HEADERS), delivery_info={"routing_key": "provider-events"})

    def call_soon(callback, *args):  # noqa: ANN001, ANN002, ANN202
        hub.call_soon(callback, *args)

    return request_cls(message, app=app, task=app.tasks["matomete.purchase"],
                       on_ack=promise(call_soon, (message.ack_log_error,)),
                       on_reject=promise(call_soon, (message.reject_log_error,)),
                       connection_errors=broker_connection_errors())


def run_soon_callbacks(hub: Hub) -> None:
    loop = hub.create_loop()
    try:
        next(loop)
    finally:
        hub.close()


def broker_connection_errors() -> tuple[type[BaseException], ...]:
    with Connection("redis://127.0.0.1:1/0") as conn:
        return tuple(conn.connection_errors)


@pytest.mark.parametrize("settle", ["acknowledge", "reject"])
def test_a_failed_ack_or_requeue_reaches_the_consumer_as_a_lost_connection(settle):
    hub = Hub()
    request = request_on(hub, RedactedRequest)
    getattr(request, settle)()
    assert request.acknowledged  # settled once: never acked twice
    with pytest.raises(broker_connection_errors()):
        run_soon_callbacks(hub)


def test_celerys_own_request_would_swallow_it():
    # the behaviour the override exists for: if this starts failing, Celery changed and the
    # override may no longer be needed
    hub = Hub()
    request = request_on(hub, Request)
    request.acknowledge()
    run_soon_callbacks(hub)
