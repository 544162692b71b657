"""Issue 6, `matomete quarantine replay ID`: a quarantined message is decided again through the bus
(validation, signature, inbox) — as stored when nothing was redacted from it, else from a corrected
message — and the entry is marked replayed with its decision."""

from __future__ import annotations

import json
from datetime import datetime
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from matomete_core.cli import cli as main
from matomete_core.errors import NotFound, NotReplayable
from matomete_core.service import bus
from matomete_core.service.quarantine import list_quarantined
from matomete_core.service.replay import replay
from matomete_core.testing import signed
from tests.unit.conftest import SECRETS, jst
from workers import tasks

AT = jst("2026-08-10 12:00")
LATER = jst("2026-08-10 13:00")


def only_entry(deps) -> dict:
    (entry,) = list_quarantined(deps.engine)
    return entry


def rename(message_id: str = "ord-1") -> dict:
    return {"message_id": message_id, "occurred_at": AT.isoformat(), "customer_id": "CAF0000012573",
            "change": "rename"}


@pytest.fixture
def failed_after_every_attempt(deps, monkeypatch):
    """A message quarantined PROCESSING_FAILED by the task layer, as a bug would leave it."""
    def quarantine(task: str, message: dict) -> dict:
        with monkeypatch.context() as patched:
            patched.setattr(tasks, "deps", lambda: deps)
            patched.setattr(bus, "handle", lambda *_a, **_k: (_ for _ in ()).throw(RuntimeError("a bug")))
            task_ = SimpleNamespace(name=task, request=SimpleNamespace(retries=tasks.MAX_ATTEMPTS - 1))
            return tasks.decide(task_, (message,), {})
    return quarantine


def test_a_message_that_failed_before_a_bug_fix_is_replayed_as_stored_and_marked_replayed(
        deps, failed_after_every_attempt):
    # given
    assert failed_after_every_attempt("matomete.line_change", rename())["reason"] == "PROCESSING_FAILED"
    entry = only_entry(deps)
    # when: the bug is fixed
    decision = replay(deps, entry["id"], now=LATER)
    # then
    assert (decision["message_id"], decision["status"], decision["replayed"]) == ("ord-1", "accepted", False)
    assert list_quarantined(deps.engine) == []
    (kept,) = list_quarantined(deps.engine, replayed=True)
    assert kept["replay_decision"] == decision and datetime.fromisoformat(kept["replayed_at"]) == LATER


def test_a_provider_message_is_kept_without_its_signature_so_replay_needs_the_corrected_message(deps, provider):
    # given: a purchase signed with the old secret
    message = provider.message("PA", AT, order_id="o-1", passport_id="user01", content_id="pack")
    forged = signed({k: v for k, v in message.items() if k != "signature"}, "an-old-secret")
    assert provider.send("matomete.purchase", forged, now=AT)["reason"] == "BAD_SIGNATURE"
    entry = only_entry(deps)
    # when / then: as stored, it cannot be
    with pytest.raises(NotReplayable, match="signature.*--message"):
        replay(deps, entry["id"], now=LATER)
    # when: the provider signs it again with its current secret
    decision = replay(deps, entry["id"], now=LATER, message=message)
    # then
    assert (decision["status"], decision["message_id"]) == ("accepted", message["message_id"])
    assert decision["application_number"]
    assert list_quarantined(deps.engine) == []


def test_replaying_a_message_decided_since_returns_its_first_decision(deps, provider):
    message = provider.message("PA", AT, order_id="o-1", passport_id="user01", content_id="pack")
    provider.send("matomete.purchase", {**message, "signature": "0" * 64}, now=AT)
    first = provider.send("matomete.purchase", message, now=AT)  # the provider sent it again, right
    decision = replay(deps, only_entry(deps)["id"], now=LATER, message=message)
    assert decision == {**first, "replayed": True}


def test_a_replay_quarantined_again_leaves_the_entry_waiting(deps, provider):
    provider.send("matomete.line_change", {**rename(), "change": "teleport"}, now=AT)
    entry = only_entry(deps)
    decision = replay(deps, entry["id"], now=LATER)
    assert (decision["status"], decision["reason"]) == ("quarantined", "INVALID_MESSAGE")
    assert [e["id"] for e in list_quarantined(deps.engine)] == [entry["id"]]


def test_a_self_service_command_needs_its_access_key_again(deps, provider):
    command = {"message_id": "web-1", "occurred_at": AT.isoformat(), "customer_id": "CAF0000012573",
               "access_key": "ABCD1234", "passport_id": None, "restricted": "yes"}
    provider.send("matomete.set_restriction", command, now=AT)
    with pytest.raises(NotReplayable, match="access_key"):
        replay(deps, only_entry(deps)["id"], now=LATER)
    decision = replay(deps, only_entry(deps)["id"], now=LATER, message={**command, "restricted": True})
    assert decision["status"] == "accepted"


def test_an_unknown_entry_is_not_found(deps):
    with pytest.raises(NotFound):
        replay(deps, 999, now=LATER)


# ---- the command ------------------------------------------------------------------------------

@pytest.fixture
def run(deps, tmp_path):
    env = {"MATOMETE_DATABASE_URL": deps.settings.database_url, "MATOMETE_KEY_FILE": deps.settings.key_file,
           "MATOMETE_SECRET_KEY": None}
    return lambda *args: CliRunner().invoke(main, list(args), env=env)


def test_the_command_replays_a_corrected_message_and_prints_the_decision(deps, provider, run, tmp_path):
    message = provider.message("PB", AT, order_id="o-2", passport_id="user03", content_id="anime1")
    provider.send("matomete.purchase", {**message, "signature": "f" * 64}, now=AT)
    entry = only_entry(deps)
    (tmp_path / "fixed.json").write_text(json.dumps(message), encoding="utf-8")

    result = run("quarantine", "replay", str(entry["id"]), "--message", str(tmp_path / "fixed.json"), "--json")

    assert result.exit_code == 0, result.output
    decision = json.loads(result.stdout)
    assert (decision["status"], decision["message_id"]) == ("accepted", message["message_id"])
    listed = run("quarantine", "list", "--replayed", "--json")
    assert json.loads(listed.stdout)["messages"][0]["replay_decision"] == decision
    assert json.loads(run("quarantine", "list", "--json").stdout) == {"messages": []}


def test_the_command_refuses_a_redacted_message_in_one_line(deps, provider, run):
    message = provider.message("PA", AT, order_id="o-3", passport_id="user01", content_id="pack")
    provider.send("matomete.purchase", signed(message, "wrong-secret"), now=AT)
    result = run("quarantine", "replay", str(only_entry(deps)["id"]))
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1 and "--message" in result.stderr
    assert SECRETS["PA"] not in result.output


def test_the_command_exits_1_when_the_replay_is_quarantined_again(deps, provider, run):
    provider.send("matomete.line_change", {**rename(), "change": "teleport"}, now=AT)
    result = run("quarantine", "replay", str(only_entry(deps)["id"]))
    assert result.exit_code == 1
    assert "quarantined" in result.stdout and "still quarantined (INVALID_MESSAGE)" in result.stderr
