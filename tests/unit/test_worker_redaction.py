"""SPEC.md "Security", at the Celery edge: what the worker logs, sends as task events and answers to
``inspect`` shows an inbound message with its access key or signature replaced by ``***``; the task
itself still gets the message as sent."""

from __future__ import annotations

import json

import pytest
from kombu.message import Message
from kombu.utils.imports import symbol_by_name

import workers.tasks  # noqa: F401 — registers the inbound tasks
from workers.app import app

KEY = "Secr3t-Key-qq7"
MESSAGES = {
    "matomete.set_limits": {"message_id": "web-1", "occurred_at": "2026-08-10T12:00:00+09:00",
                            "customer_id": "CAF0000012573", "access_key": KEY, "line_limit": 1},
    "matomete.purchase": {"message_id": "pa-1", "occurred_at": "2026-08-10T12:00:00+09:00", "provider_id": "PA",
                          "order_id": "o-1", "passport_id": "user01", "content_id": "pack", "signature": KEY},
}


def received(task_name: str, *args) -> object:  # noqa: ANN002
    """The request a worker builds for a task message sent by a plain Celery client."""
    headers, properties, body, _ = app.amqp.as_task_v2("task-1", task_name, args=list(args), kwargs={})
    message = Message(body=json.dumps(body), content_type="application/json", content_encoding="utf-8",
                      headers=headers, properties=properties, delivery_info={"routing_key": "q"})
    request_class = symbol_by_name(app.tasks[task_name].Request)
    return request_class(message, app=app, task=app.tasks[task_name])


@pytest.mark.parametrize("task_name", ["matomete.purchase", "matomete.cancel", "matomete.line_change",
                                       "matomete.set_restriction", "matomete.set_limits",
                                       "matomete.register_passport_id", "matomete.update_registration"])
def test_every_inbound_task_hides_secrets_from_celerys_logs_and_events(task_name):
    request = received(task_name, MESSAGES["matomete.set_limits"], {"nested": {"signature": KEY}})
    shown = [request.argsrepr, request.kwargsrepr, request.request_dict["argsrepr"], repr(request),
             json.dumps(request.info(), default=str), json.dumps(request.info(safe=False), default=str)]
    assert all(KEY not in text for text in shown), shown
    assert "***" in request.argsrepr


def test_the_task_still_gets_the_message_as_sent():
    request = received("matomete.purchase", MESSAGES["matomete.purchase"])
    assert request.request_dict["args"] == [MESSAGES["matomete.purchase"]]
