"""Running it: a real `matomete worker` (prefork, two pool processes) serves its metrics over HTTP,
writes JSON log lines about each message, and an operator replays a quarantined message.

The tests have a line of their own (loaded with ``matomete lines load``), so they disturb no other
test of the shared deployment. Nothing here imports matomete.
"""

from __future__ import annotations

import json
import urllib.request
import uuid
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.services import wait_until

pytestmark = pytest.mark.e2e

PROVIDER_EVENTS = "provider-events"
OPS_LINE, OPS_PASSPORT = "CAF0000066601", "ops01"
Samples = dict[tuple[str, frozenset], float]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


@pytest.fixture(scope="module")
def own_line(system) -> None:
    system.load_line(OPS_LINE, access_key="e2e-key-66601", billing_account="06-6660-6601",
                     passport_ids=[OPS_PASSPORT])


def scrape(system) -> Samples:
    url = f"http://127.0.0.1:{system.env['MATOMETE_METRICS_PORT']}/metrics"

    def get() -> str | None:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 — a local URL
                return response.read().decode("utf-8")
        except OSError:
            return None
    text = wait_until(get, timeout=20, interval=0.5, message=f"the worker's metrics on {url}")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def purchase(system, content_id: str = "coin", provider_id: str = "PB", passport_id: str = OPS_PASSPORT,
             secret: str | None = None) -> dict[str, Any]:
    return system.sign({"message_id": unique("e2e-ops"), "occurred_at": system.occurred_at(0.5),
                        "provider_id": provider_id, "order_id": unique(f"{provider_id}-ord"),
                        "passport_id": passport_id, "content_id": content_id, "quantity": 1}, secret)


def test_the_worker_serves_the_decisions_of_all_its_pool_processes_and_the_database_and_broker_gauges(system):
    # given
    labels = {"task": "matomete.purchase", "status": "rejected", "reason": "UNKNOWN_PASSPORT_ID"}
    before = scrape(system)
    # when: more decisions than pool processes, so more than one process decides
    for _ in range(6):
        decision = system.send("matomete.purchase", PROVIDER_EVENTS, purchase(system, passport_id="nobody99"))
        assert decision["reason"] == "UNKNOWN_PASSPORT_ID", decision
    # then
    after = scrape(system)
    assert value(after, "matomete_decisions_total", **labels) == value(before, "matomete_decisions_total", **labels) + 6
    count = "matomete_decision_duration_seconds_count"
    assert value(after, count, task="matomete.purchase") >= value(before, count, task="matomete.purchase") + 6
    assert value(after, "matomete_database_up") == 1
    for reason in ("INVALID_MESSAGE", "UNKNOWN_PROVIDER", "BAD_SIGNATURE", "MESSAGE_ID_CONFLICT"):
        assert ("matomete_quarantine_messages", frozenset({("reason", reason)})) in after
    for kind in ("event", "batch"):
        assert ("matomete_outbox_unpublished_rows", frozenset({("kind", kind)})) in after
        assert ("matomete_outbox_oldest_unpublished_age_seconds", frozenset({("kind", kind)})) in after
    assert ("matomete_month_close_pending_seconds", frozenset()) in after
    # and the broker gauges: every decision above was taken and acknowledged
    assert value(after, "matomete_broker_up") == 1
    assert after[("matomete_queue_messages", frozenset({("queue", PROVIDER_EVENTS)}))] == 0
    assert ("matomete_queue_unacked_messages", frozenset()) in after


def test_a_quarantined_message_shows_in_the_gauge_until_an_operator_replays_it_corrected(system, own_line):
    # given: a purchase signed with a secret the provider no longer uses
    gauge = ("matomete_quarantine_messages", frozenset({("reason", "BAD_SIGNATURE")}))
    before = scrape(system).get(gauge, 0.0)
    message = purchase(system)
    forged = {**message, "signature": system.sign(message, "an-old-secret")["signature"]}
    assert system.send("matomete.purchase", PROVIDER_EVENTS, forged)["reason"] == "BAD_SIGNATURE"
    assert scrape(system)[gauge] == before + 1
    [entry] = [q for q in system.cli_json("quarantine", "list")["messages"]
               if isinstance(q["message"], dict) and q["message"].get("message_id") == message["message_id"]]
    # when: the provider signs it again, and the operator replays it
    as_stored = system.cli("quarantine", "replay", str(entry["id"]), check=False)
    fixed = system.workdir / f"fixed-{entry['id']}.json"
    fixed.write_text(json.dumps(message), encoding="utf-8")
    decision = system.cli_json("quarantine", "replay", str(entry["id"]), "--message", str(fixed))
    # then
    assert as_stored.returncode == 1 and "--message" in as_stored.stderr
    assert (decision["status"], decision["message_id"]) == ("accepted", message["message_id"])
    assert scrape(system)[gauge] == before
    system.outbox.wait_for("provider-results.PB", lambda b: b.get("type") == "decision"
                           and b.get("message_id") == message["message_id"] and b.get("status") == "accepted")


def test_the_worker_logs_one_json_object_a_line_with_the_messages_identifiers_and_no_secret(system, own_line):
    # when
    message = purchase(system)
    decision = system.send("matomete.purchase", PROVIDER_EVENTS, message)
    assert decision["status"] == "accepted", decision

    # then
    def decided_line() -> dict[str, Any] | None:
        for raw in system.logs["worker"].read_text(encoding="utf-8", errors="replace").splitlines():
            if raw.startswith("{") and message["message_id"] in raw:
                line = json.loads(raw)
                if line.get("message") == "decided":
                    return line
        return None
    line = wait_until(decided_line, timeout=10, message="the worker's `decided` line")
    assert line["customer_id"] == OPS_LINE
    assert line["application_number"] == decision["application_number"]
    assert line["task"] == "matomete.purchase" and line["task_id"]
    def lines_about() -> list[dict[str, Any]]:
        return [json.loads(raw) for raw in system.logs["worker"].read_text(encoding="utf-8").splitlines()
                if raw.startswith("{") and message["message_id"] in raw]
    expected = {"celery.worker.strategy", "matomete_core.service.bus", "celery.app.trace"}
    # Celery writes its "succeeded" line after it has stored the result the sender just read
    about = wait_until(lambda: (found := lines_about()) and {e["logger"] for e in found} >= expected and found,
                       timeout=10, message="the received, decided and succeeded lines")
    assert all(entry["message_id"] == message["message_id"] for entry in about)
    for name, path in system.logs.items():
        assert message["signature"] not in path.read_text(encoding="utf-8", errors="replace"), name
