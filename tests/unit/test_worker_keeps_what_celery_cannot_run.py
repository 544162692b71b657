"""A message `matomete worker` cannot run — a body it cannot decode, a content type it refuses, no
task message, a task nobody registered — is quarantined INVALID_MESSAGE, redacted, its decision
stored as the task's result, and acknowledged; only if the quarantine cannot be written does
Celery's own handling (log, drop) follow (workers.consumer)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from kombu.exceptions import DecodeError

from matomete_core.adapters.database import make_engine
from matomete_core.service.quarantine import list_quarantined
from workers import consumer as consumer_module
from workers.consumer import Consumer, set_aside


class Message:
    def __init__(self, body: bytes, **headers: str):
        self.body, self.headers = body, headers
        self.content_type, self.content_encoding = "application/json", "utf-8"
        self.acked = 0

    def ack_log_error(self, *_args) -> None:  # noqa: ANN002
        self.acked += 1

    def ack(self) -> None:
        self.acked += 1


class Backend:
    def __init__(self):
        self.results: dict[str, tuple[dict, str]] = {}

    def store_result(self, task_id: str, result: dict, state: str) -> None:
        self.results[task_id] = (result, state)


@pytest.fixture
def the_consumer(deps, monkeypatch):  # noqa: ANN001, ANN201
    backend = Backend()
    c = Consumer.__new__(Consumer)  # Celery's consumer without its connection: only its callbacks run here
    c.app, c.connection_errors = SimpleNamespace(backend=backend), ()
    monkeypatch.setattr(consumer_module, "_engine", lambda: deps.engine)
    return c, backend


def test_a_body_that_cannot_be_decoded_is_quarantined_with_its_result_stored_and_acknowledged(the_consumer, deps):
    c, backend = the_consumer
    message = Message(b'[[{"message_id": ', task="matomete.purchase", id="t-1")
    c.on_decode_error(message, DecodeError("truncated"))
    [kept] = list_quarantined(deps.engine)
    assert (kept["task"], kept["reason"], kept["message"]) == (
        "matomete.purchase", "INVALID_MESSAGE", '[[{"message_id": ')
    assert "DecodeError" in kept["detail"]
    assert backend.results["t-1"] == ({"message_id": None, "status": "quarantined", "reason": "INVALID_MESSAGE",
                                       "application_number": None, "billing_month": None, "replayed": False},
                                      "SUCCESS")
    assert message.acked == 1


@pytest.mark.parametrize("callback, args", [
    ("on_unknown_message", (None,)),
    ("on_unknown_task", (None, KeyError("matomete.purhcase"))),
    ("on_invalid_task", (None, ValueError("not a protocol 2 task message"))),
])
def test_every_message_celery_would_drop_is_quarantined_instead(the_consumer, deps, callback, args):
    c, backend = the_consumer
    message = Message(json.dumps([[{"message_id": "m-1"}], {}, {}]).encode(), task="matomete.purhcase", id="t-2")
    getattr(c, callback)(*args[:1], message, *args[1:])
    [kept] = list_quarantined(deps.engine)
    assert kept["reason"] == "INVALID_MESSAGE" and kept["message"] == [[{"message_id": "m-1"}], {}, {}]
    assert backend.results["t-2"][0]["status"] == "quarantined"
    assert message.acked == 1


def test_the_secrets_of_a_kept_body_are_redacted(the_consumer, deps):
    c, _ = the_consumer
    body = {"customer_id": "CAF0000012573", "access_key": "Sup3r-Secret", "signature": "f00d"}
    c.on_invalid_task(None, Message(json.dumps(body).encode(), task="matomete.set_restriction", id="t-3"),
                      ValueError("not a protocol 2 task message: the body is a dict"))
    [kept] = list_quarantined(deps.engine)
    assert kept["message"] == {"customer_id": "CAF0000012573", "access_key": "***", "signature": "***"}


def test_a_body_nested_too_deep_to_parse_is_kept_as_text(the_consumer, deps):
    c, _ = the_consumer
    body = b"[" * 10_000 + b"]" * 10_000
    c.on_decode_error(Message(body, task="matomete.purchase", id="t-4"), DecodeError("too deep"))
    [kept] = list_quarantined(deps.engine)
    assert kept["message"] == body.decode()


def test_when_the_quarantine_cannot_be_written_celery_logs_and_drops_it(the_consumer, tmp_path, monkeypatch,
                                                                       caplog):
    c, backend = the_consumer
    away = make_engine(f"sqlite:///{tmp_path}/no/such/dir/away.db")
    monkeypatch.setattr(consumer_module, "_engine", lambda: away)
    message = Message(b"not json", task="matomete.purchase", id="t-5")
    assert set_aside(backend, away, message, "detail") is False
    c.on_decode_error(message, DecodeError("not json"))  # Celery's own: logged at CRITICAL, acknowledged
    assert backend.results == {} and message.acked == 1
    assert "could not be quarantined" in caplog.text and "Can't decode message body" in caplog.text
