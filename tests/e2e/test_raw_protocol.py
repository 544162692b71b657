"""docs/sending-from-other-languages.md, checked: its worked example is consistent (signature, body,
ids), a message built the way it describes and pushed with a plain Redis LPUSH is decided by a real
worker, whose decision appears under ``celery-task-meta-<id>`` and on ``provider-results.<id>``;
and examples/provider_client.py sends, awaits and reads back the same way.

The tests have a line of their own, so they disturb no other test. Nothing here imports matomete.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support.services import wait_until

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs/sending-from-other-languages.md"
EXAMPLE = ROOT / "examples/provider_client.py"
EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
RAW_LINE, RAW_PASSPORT, KIT_PASSPORT = "CAF0000066602", "raw01", "kit01"


def example(name: str) -> str:
    """The block of the page that follows ``<!-- example:NAME -->``: a fenced block's text, or an
    inline code span's."""
    text = DOC.read_text(encoding="utf-8")
    match = re.search(rf"<!-- example:{name} -->\n(?:```\w*\n(.*?)```|`([^`]+)`)", text, flags=re.DOTALL)
    assert match, f"no example:{name} in {DOC.name}"
    return match.group(1) or match.group(2)


def canonical(message: dict[str, Any]) -> bytes:
    body = {k: v for k, v in message.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def signature(message: dict[str, Any], secret: str) -> str:
    return hmac.new(secret.encode("utf-8"), canonical(message), hashlib.sha256).hexdigest()


def envelope_for(message: dict[str, Any], task: str, task_id: str) -> dict[str, Any]:
    """The page's envelope with another message and task id — built as the page says."""
    env = copy.deepcopy(json.loads(example("envelope")))
    body = json.dumps([[message], {}, EMBED], ensure_ascii=False, separators=(",", ":"))
    env["body"] = base64.b64encode(body.encode("utf-8")).decode("ascii")
    env["headers"].update(task=task, id=task_id, root_id=task_id, argsrepr=f"[signed message {message['message_id']}]")
    env["properties"].update(correlation_id=task_id, delivery_tag=str(uuid.uuid4()))
    return env


@pytest.fixture(scope="module")
def own_line(system) -> None:
    system.load_line(RAW_LINE, access_key="e2e-key-66602", billing_account="06-6660-6602",
                     passport_ids=[RAW_PASSPORT, KIT_PASSPORT])


@pytest.fixture
def broker(system) -> redis.Redis:
    client = redis.Redis.from_url(system.env["MATOMETE_BROKER_URL"])
    yield client
    client.close()


def test_the_pages_worked_example_is_consistent():
    message = json.loads(example("message"))
    sig = example("signature").strip()
    env = json.loads(example("envelope"))
    result = json.loads(example("result"))

    assert sig == signature(message, "s3cret-A")  # the CONTRACT.md example message and secret
    assert json.loads(base64.b64decode(env["body"])) == [[{**message, "signature": sig}], {}, EMBED]
    task_id = env["headers"]["id"]
    assert env["headers"]["task"] == "matomete.purchase" and env["headers"]["root_id"] == task_id
    assert env["properties"]["correlation_id"] == task_id == result["task_id"]
    assert env["properties"]["delivery_info"]["routing_key"] == "provider-events"
    assert env["properties"]["body_encoding"] == "base64" and env["content-type"] == "application/json"
    assert sig not in env["headers"]["argsrepr"]
    assert f"GET celery-task-meta-{task_id}" in DOC.read_text(encoding="utf-8")
    assert result["result"]["message_id"] == message["message_id"]


def test_a_message_pushed_with_lpush_is_decided_and_its_decision_is_where_the_page_says(system, own_line, broker):
    # given: a purchase, signed, in the page's envelope
    message = {"message_id": f"raw-{uuid.uuid4().hex[:16]}", "occurred_at": system.occurred_at(0.5),
               "provider_id": "PB", "order_id": f"PB-raw-{uuid.uuid4().hex[:12]}", "passport_id": RAW_PASSPORT,
               "content_id": "coin", "quantity": 2, "unit_price": 100}
    message["signature"] = signature(message, "s3cret-B")
    task_id = str(uuid.uuid4())
    # when
    broker.lpush("provider-events", json.dumps(envelope_for(message, "matomete.purchase", task_id), ensure_ascii=False))
    # then: the decision, under celery-task-meta-<id> in the result backend
    backend = redis.Redis.from_url(system.env["MATOMETE_RESULT_BACKEND"])
    stored = wait_until(lambda: backend.get(f"celery-task-meta-{task_id}"), timeout=30, interval=0.2,
                        message="the decision under celery-task-meta-<id>")
    backend.close()
    doc = json.loads(stored)
    assert doc["status"] == "SUCCESS" and doc["task_id"] == task_id
    decision = doc["result"]
    assert (decision["message_id"], decision["status"], decision["reason"]) == (message["message_id"], "accepted", None)
    # and on provider-results.PB, looked at without taking (LRANGE), as an envelope with a base64 body
    def told() -> dict[str, Any] | None:
        for raw in broker.lrange("provider-results.PB", 0, -1):
            body = json.loads(base64.b64decode(json.loads(raw)["body"]))
            if body.get("message_id") == message["message_id"]:
                return body
        return None
    event = wait_until(told, timeout=30, interval=0.25, message="the decision on provider-results.PB")
    assert event["type"] == "decision" and event["event_id"]
    assert {k: event[k] for k in decision} == decision


def test_the_example_client_sends_awaits_the_decision_and_reads_each_result_once(system, own_line):
    env = {**system.env, "PROVIDER_SIGNING_SECRET": "s3cret-A"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(EXAMPLE), *args], env=env, capture_output=True, text=True,
                              timeout=120)
    order, message_id = f"PA-kit-{uuid.uuid4().hex[:12]}", f"kit-{uuid.uuid4().hex[:16]}"
    same = ("purchase", "--provider", "PA", "--order", order, "--passport", KIT_PASSPORT, "--content", "pack",
            "--unit-price", "525", "--message-id", message_id, "--occurred-at", system.occurred_at(0.5))
    bought = run(*same)
    assert bought.returncode == 0, bought.stderr
    decision = json.loads(bought.stdout)
    assert (decision["message_id"], decision["status"]) == (message_id, "accepted")
    again = run(*same)  # a re-send: the very same message
    assert json.loads(again.stdout) == {**decision, "replayed": True}

    def read_back() -> list[dict[str, Any]] | None:
        done = run("results", "--provider", "PA", "--seconds", "2")
        assert done.returncode == 0, done.stderr
        bodies = [json.loads(line) for line in done.stdout.splitlines()]
        assert len({b["event_id"] for b in bodies}) == len(bodies)  # each event once
        mine = [b for b in bodies if b.get("message_id") == message_id]
        return mine or None
    [told] = wait_until(read_back, timeout=60, interval=0.5, message="the example client to read the decision")
    assert told["type"] == "decision" and told["application_number"] == decision["application_number"]
