"""Issue 6, logs: the worker writes one JSON object a line; a line about a message carries its
message_id, application number and customer ID once known, and never a secret."""

from __future__ import annotations

import io
import json
import logging
from types import SimpleNamespace

import pytest

from matomete_core import logcontext
from tests.unit.conftest import jst
from workers import logging as json_logs, tasks

AT = jst("2026-08-10 12:00")


class FakeTask:
    def __init__(self, name: str):
        self.name = name
        self.request = SimpleNamespace(retries=0)


@pytest.fixture
def lines(monkeypatch, deps):
    """Every line logged while the test runs, formatted as the worker formats them, parsed."""
    monkeypatch.setattr(tasks, "deps", lambda: deps)
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(json_logs.JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    parsed: list[dict] = []

    def read() -> list[dict]:
        text = out.getvalue()
        parsed[:] = [json.loads(line) for line in text.splitlines()]
        return parsed
    read.text = lambda: out.getvalue()
    yield read
    root.removeHandler(handler)
    root.setLevel(level)


def test_the_decided_line_carries_message_id_application_number_and_customer_id_never_the_signature(
        provider, lines):
    # given
    message = provider.message("PA", AT, order_id="o-1", passport_id="user01", content_id="pack")
    # when: the task runs as a worker runs it, its message bound for the whole task
    json_logs.task_started(task_id="t-1", args=[message])
    try:
        decision = tasks.decide(FakeTask("matomete.purchase"), (message,), {})
        logging.getLogger("celery.app.trace").info("Task succeeded: %r", {"args": repr([message])})
    finally:
        json_logs.task_finished(task_id="t-1")
    # then
    [decided] = [line for line in lines() if line["message"] == "decided"]
    assert decided["message_id"] == message["message_id"]
    assert decided["application_number"] == decision["application_number"] is not None
    assert decided["customer_id"] == "CAF0000012573"
    assert (decided["status"], decided["level"], decided["logger"]) == ("accepted", "INFO", "matomete_core.service.bus")
    after = lines()[-1]
    assert (after["message_id"], after["customer_id"]) == (message["message_id"], "CAF0000012573")
    assert message["signature"] not in lines.text()


def test_a_quarantined_self_service_command_is_logged_without_its_access_key(provider, lines):
    command = {"message_id": "web-1", "occurred_at": AT.isoformat(), "customer_id": "CAF0000012573",
               "access_key": "Sup3r-Secret-Key", "restricted": "yes", "passport_id": None}
    tasks.decide(FakeTask("matomete.set_restriction"), (command,), {})
    about = [line for line in lines() if line.get("message_id") == "web-1"]
    assert {line["message"] for line in about} >= {"message quarantined", "decided"}
    assert all(line["customer_id"] == "CAF0000012573" for line in about)
    assert "Sup3r-Secret-Key" not in lines.text()


def test_no_secret_survives_the_formatter_in_extras_messages_or_tracebacks(lines):
    log = logging.getLogger("matomete.test")
    log.info("got %s", {"signature": "a" * 64, "access_key": "K3y"},
             extra={"body": {"nested": [{"signing_secret": "s3cret"}]}, "access_key": "K3y"})
    try:
        raise ValueError("bad access_key=K3y and \"previous_signing_secret\": \"old-s3cret\"")
    except ValueError:
        log.exception("failed")
    text = lines.text()
    for secret in ("a" * 64, "K3y", "s3cret", "old-s3cret"):
        assert secret not in text, secret
    first, second = lines()
    assert first["access_key"] == "***" and first["body"] == {"nested": [{"signing_secret": "***"}]}
    assert "ValueError" in second["exception"]


def test_celerys_received_line_names_the_message_it_received(lines):
    logging.getLogger("celery.worker.strategy").info("Task %(name)s[%(id)s] received", {"name": "t", "id": "1"},
                                                     extra={"data": {"args": "[{'message_id': 'pa-9', "
                                                                             "'signature': '***'}]"}})
    [line] = lines()
    assert line["message_id"] == "pa-9" and line["message"] == "Task t[1] received"


def test_the_context_ends_with_the_task():
    json_logs.task_started(task_id="t-2", args=[{"message_id": "m-2", "customer_id": "CAF0000000002"}])
    assert logcontext.current() == {"message_id": "m-2", "customer_id": "CAF0000000002"}
    json_logs.task_finished(task_id="t-2")
    assert logcontext.current() == {}


def test_only_well_formed_identifiers_are_taken_from_a_message():
    assert logcontext.about({"message_id": "x" * 500, "customer_id": "CAF1", "provider_id": "PA",
                             "access_key": "k"}) == {"provider_id": "PA"}
    assert logcontext.about(["not", "a", "message"]) == {}


@pytest.mark.parametrize(("fmt", "expected"), [("json", json_logs.JsonFormatter), ("text", logging.Formatter)])
def test_celerys_handlers_get_the_json_formatter_unless_text_is_asked_for(monkeypatch, fmt, expected):
    monkeypatch.setenv("MATOMETE_LOG_FORMAT", fmt)
    logger = logging.Logger("celery-like")
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    json_logs.use_json(logger=logger)
    assert type(handler.formatter) is expected
