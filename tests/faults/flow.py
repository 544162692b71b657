"""A flow of provider messages, sent over time to a deployment, and the checks of what became of it.

Nothing here imports matomete.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from celery import Celery

from tests.faults.harness import Deployment, bare_client, occurred_at, passport_id, sign
from tests.support.services import WaitTimeout, wait_until

__all__ = ["Flow"]


@dataclass
class Flow:
    """Provider messages sent over time by a background thread, and the checks of what became of them.

    Every 7th message is a monthly-flat purchase (a distinct Passport ID for each, so none is
    ALREADY_SUBSCRIBED), every 5th a void of an earlier per-use purchase, the rest per-use
    purchases: each purchase should be accepted with exactly one charge, each void accepted with
    its charge voided — whatever fault happens meanwhile."""

    deployment: Deployment
    tag: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    sent_at: dict[str, float] = field(default_factory=dict)
    _thread: threading.Thread | None = None
    _error: BaseException | None = None

    def build(self, count: int, first_passport: int = 0) -> "Flow":
        """``count`` messages; the purchases use Passport IDs from number ``first_passport`` on
        (two flows of one deployment must not share a monthly-flat subscriber)."""
        at = occurred_at(2)
        per_use: list[str] = []
        for i in range(count):
            mid = f"{self.tag}-{i:05d}"
            if i % 5 == 4 and per_use:
                order = per_use.pop(0)
                msg = {"task": "matomete.cancel", "body": sign({
                    "message_id": mid, "occurred_at": at, "provider_id": "PB", "order_id": order})}
            elif i % 7 == 6:
                msg = {"task": "matomete.purchase", "body": sign({
                    "message_id": mid, "occurred_at": at, "provider_id": "PA", "order_id": f"o-{mid}",
                    "passport_id": passport_id(first_passport + i), "content_id": "pack", "quantity": 1})}
            else:
                msg = {"task": "matomete.purchase", "body": sign({
                    "message_id": mid, "occurred_at": at, "provider_id": "PB", "order_id": f"o-{mid}",
                    "passport_id": passport_id(first_passport + i), "content_id": "coin", "quantity": 1})}
                per_use.append(f"o-{mid}")
            self.messages.append(msg)
        return self

    def ids(self) -> list[str]:
        return [m["body"]["message_id"] for m in self.messages]

    def send_all(self, pace: float = 0.0, client: Celery | None = None,
                 on_each: Callable[[int], None] | None = None) -> None:
        for i, m in enumerate(self.messages):
            self.deployment.send(m["task"], "provider-events", m["body"], client=client)
            self.sent_at[m["body"]["message_id"]] = time.monotonic()
            if on_each:
                on_each(i)
            if pace:
                time.sleep(pace)

    def start(self, pace: float = 0.03) -> "Flow":
        """Send in a background thread (with its own Celery client), ``pace`` seconds apart."""
        client = bare_client(self.deployment.broker_url)

        def run() -> None:
            try:
                self.send_all(pace, client)
            except BaseException as exc:  # noqa: BLE001 — reported by join()
                self._error = exc
            finally:
                client.close()
        self._thread = threading.Thread(target=run, name=f"flow-{self.tag}", daemon=True)
        self._thread.start()
        return self

    def join(self, timeout: float = 180) -> None:
        assert self._thread is not None
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the sender thread did not finish"
        if self._error is not None:
            raise self._error

    def sent_ids(self) -> list[str]:
        return list(self.sent_at)

    # ---- what the database says
    def decisions(self) -> dict[str, dict[str, Any]]:
        rows = self.deployment.sql(
            "SELECT message_id, decision FROM inbox WHERE message_id LIKE %s", f"{self.tag}-%")
        return {mid: decision for mid, decision in rows}

    def decided(self, ids: Iterable[str] | None = None) -> int:
        wanted = set(self.ids() if ids is None else ids)
        return sum(1 for mid, d in self.decisions().items()
                   if mid in wanted and d is not None and d.get("status") != "held")

    def wait_decided(self, ids: Iterable[str] | None = None, timeout: float = 120) -> float:
        """Wait until every message of ``ids`` (default: all) has its final decision; return the
        monotonic time at which that was first seen."""
        wanted = set(self.ids() if ids is None else ids)

        def all_decided() -> float | None:
            return time.monotonic() if self.decided(wanted) == len(wanted) else None
        try:
            return wait_until(all_decided, timeout=timeout, interval=0.25,
                              message=f"{len(wanted)} messages of {self.tag} to be decided")
        except WaitTimeout as exc:
            missing = sorted(wanted - {m for m, d in self.decisions().items() if d and d.get("status") != "held"})
            raise AssertionError(f"{exc}; {len(missing)} undecided, e.g. {missing[:5]}\n"
                                 f"{self.deployment.log_tails()}") from None

    def decided_times(self, ids: Iterable[str], timeout: float = 120) -> dict[str, float]:
        """Wait until each of ``ids`` has its final decision; return when each was first seen so."""
        wanted, seen = set(ids), {}

        def all_seen() -> bool:
            now = time.monotonic()
            for mid, dec in self.decisions().items():
                if mid in wanted and mid not in seen and dec is not None and dec.get("status") != "held":
                    seen[mid] = now
            return len(seen) == len(wanted)
        try:
            wait_until(all_seen, timeout=timeout, interval=0.2, message=f"{sorted(wanted)} to be decided")
        except WaitTimeout as exc:
            raise AssertionError(f"{exc}\n{self.deployment.log_tails()}") from None
        return seen

    def figures(self) -> dict[str, Any]:
        """sent, decided, lost, doubled, and what went wrong, from the database."""
        d = self.deployment
        like = f"o-{self.tag}-%"
        decisions = self.decisions()
        sent = len(self.messages)
        final = {mid: dec for mid, dec in decisions.items() if dec is not None and dec.get("status") != "held"}
        inbox_rows = d.sql("SELECT count(*), count(DISTINCT (sender, message_id)) FROM inbox "
                           "WHERE message_id LIKE %s", f"{self.tag}-%")[0]
        purchases_per_order = d.sql(
            "SELECT order_id, count(*) FROM purchases WHERE order_id LIKE %s GROUP BY order_id", like)
        charges_per_order = d.sql(
            "SELECT p.order_id, count(c.id), count(c.voided_at) FROM purchases p "
            "LEFT JOIN charges c ON c.application_number = p.application_number "
            "WHERE p.order_id LIKE %s GROUP BY p.order_id", like)
        doubled = (inbox_rows[0] - inbox_rows[1]
                   + sum(n - 1 for _, n in purchases_per_order if n > 1)
                   + sum(n - 1 for _, n, _v in charges_per_order if n > 1))
        purchases = [m for m in self.messages if m["task"] == "matomete.purchase"]
        voids = {m["body"]["order_id"] for m in self.messages if m["task"] == "matomete.cancel"}
        charged = {order: (n, v) for order, n, v in charges_per_order}
        not_as_expected = sorted(
            [mid for mid, dec in final.items() if dec.get("status") != "accepted"]
            + [m["body"]["order_id"] for m in purchases
               if charged.get(m["body"]["order_id"]) != (1, 1 if m["body"]["order_id"] in voids else 0)])
        quarantined = d.sql("SELECT reason, count(*) FROM quarantine GROUP BY reason")
        return {"sent": sent, "decided": len(final), "lost": sent - len(final), "doubled": doubled,
                "not_as_expected": len(not_as_expected), "not_as_expected_examples": not_as_expected[:5],
                "quarantined": dict(quarantined)}

    def outbound_gaps(self, seen: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
        """Compare the outbox rows of this flow with what consumers received: every event at
        least once (no gap), duplicates only with the same event_id and body."""
        rows = self.deployment.sql("SELECT event_id, queue, body FROM outbox")  # one deployment per test
        by_event = {e: (q, json.loads(b)) for e, q, b in rows}
        received: dict[str, list[dict[str, Any]]] = {}
        for bodies in seen.values():
            for body in bodies:
                received.setdefault(body["event_id"], []).append(body)
        gaps = [e for e in by_event if e not in received]
        mismatched = [e for e, bodies in received.items()
                      if e in by_event and any(b != by_event[e][1] for b in bodies)]
        dup = sum(len(v) - 1 for v in received.values())
        return {"events": len(by_event), "received": sum(len(v) for v in received.values()),
                "gaps": len(gaps), "duplicates": dup, "mismatched": len(mismatched)}
