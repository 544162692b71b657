"""examples/provider_client.py signs exactly as matomete verifies, and hands each event over once."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from matomete_core.security import signature_matches

PATH = Path(__file__).resolve().parents[2] / "examples/provider_client.py"
spec = importlib.util.spec_from_file_location("provider_client", PATH)
provider_client = importlib.util.module_from_spec(spec)
spec.loader.exec_module(provider_client)


def test_the_examples_signature_is_one_matomete_accepts_non_ascii_included():
    message = {"message_id": "pa-1", "occurred_at": "2026-11-03T10:15:00+09:00", "provider_id": "PA",
               "order_id": "注文-1", "passport_id": "user01", "content_id": "pack", "quantity": 1}
    signed = provider_client.sign(message, "s3cret-A")
    assert signature_matches(signed, ["s3cret-A"])
    assert not signature_matches(signed, ["another"])


def test_an_event_delivered_twice_is_handled_once():
    dedupe = provider_client.Deduplicator()
    event = {"type": "decision", "event_id": "e-1"}
    assert [dedupe.first_time(event), dedupe.first_time(dict(event)), dedupe.first_time({"event_id": "e-2"})] == [
        True, False, True]
