"""Test doubles that ship with matomete: a publisher that records, a signer, a fixed clock."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from matomete_core.security import sign

__all__ = ["FakePublisher", "signed", "over_the_wire", "jst"]


@dataclass
class FakePublisher:
    """Records what the relay publishes: (queue, decoded body, event_id)."""

    published: list[tuple[str, dict, str]] = field(default_factory=list)

    def publish(self, queue: str, body: str, event_id: str) -> None:
        self.published.append((queue, json.loads(body), event_id))

    def bodies(self, queue: str) -> list[dict]:
        return [b for q, b, _ in self.published if q == queue]


def signed(message: dict[str, Any], secret: str) -> dict[str, Any]:
    return {**message, "signature": sign(message, secret)}


def over_the_wire(value: Any) -> Any:
    """What a broker delivers: the value through JSON and back."""
    return json.loads(json.dumps(value, ensure_ascii=False))


def jst(text: str) -> datetime:
    """``jst("2026-11-03 10:15")`` → an aware datetime at +09:00."""
    return datetime.fromisoformat(text.replace(" ", "T") + "+09:00")
