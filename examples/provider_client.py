#!/usr/bin/env python3
"""A provider's side of matomete in one file: sign, send, await the decision, read the results.

Needs only Celery and kombu (``pip install "celery[redis]"``), never matomete itself; every other
language does the same with the Redis commands of docs/sending-from-other-languages.md.

    export MATOMETE_BROKER_URL=redis://localhost:6379/0     # and MATOMETE_RESULT_BACKEND if separate
    python examples/provider_client.py purchase --provider PA --secret s3cret-A \\
        --order A-778899 --passport user01 --content pack --unit-price 525
    python examples/provider_client.py cancel --provider PA --secret s3cret-A --order A-778899
    python examples/provider_client.py results --provider PA --seconds 10

``purchase`` and ``cancel`` print the decision (one JSON line); ``results`` prints each new
message of ``provider-results.<provider>`` once (one JSON line each) until it has been quiet for
``--seconds``. Sending the same message again is safe — the same ``--message-id`` and the same
fields, ``--occurred-at`` included: matomete decides each message once and answers a repeat with
the first decision, ``"replayed": true`` (the same id with other content is quarantined
``MESSAGE_ID_CONFLICT``).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import socket
import sys
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable

PROVIDER_EVENTS = "provider-events"
JST = timezone(timedelta(hours=9))


def canonical(message: dict[str, Any]) -> bytes:
    """The bytes a provider signs: the message without ``signature``, keys sorted, no spaces,
    non-ASCII as it is (CONTRACT.md)."""
    body = {k: v for k, v in message.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sign(message: dict[str, Any], secret: str) -> dict[str, Any]:
    """A copy of ``message`` with its ``signature``: lowercase hex HMAC-SHA256 keyed with ``secret``."""
    digest = hmac.new(secret.encode("utf-8"), canonical(message), hashlib.sha256).hexdigest()
    return {**message, "signature": digest}


def client(broker_url: str, backend_url: str):  # noqa: ANN201 — a celery.Celery
    """A bare Celery client: no task code, only the broker and the result backend."""
    from celery import Celery

    app = Celery("provider-client", broker=broker_url, backend=backend_url, set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json",
                    broker_connection_retry_on_startup=True)
    return app


def send(app, task: str, message: dict[str, Any], *, timeout: float = 30.0) -> dict[str, Any]:  # noqa: ANN001
    """Send one message as the task ``task`` on ``provider-events`` and wait for its decision.

    ``argsrepr`` replaces what Celery would otherwise copy into the message headers for
    monitoring — the message with its signature."""
    result = app.send_task(task, args=[message], queue=PROVIDER_EVENTS,
                           argsrepr=f"[signed message {message.get('message_id')}]")
    return result.get(timeout=timeout)  # the decision also stays 24 h in the result backend


class Deduplicator:
    """At-least-once delivery: the same ``event_id`` may come twice. A real provider records the
    ids it handled in its own database (a unique key), in the transaction that applies the event;
    this keeps them in memory."""

    def __init__(self, seen: Iterable[str] = ()) -> None:
        self.seen = set(seen)

    def first_time(self, body: dict[str, Any]) -> bool:
        event_id = body.get("event_id")
        if event_id in self.seen:
            return False
        self.seen.add(event_id)
        return True


def consume_results(broker_url: str, provider_id: str, handle: Callable[[dict[str, Any]], None], *,
                    quiet_seconds: float = 10.0, dedupe: Deduplicator | None = None) -> int:
    """Read ``provider-results.<provider_id>`` with kombu, calling ``handle`` once per event_id;
    return after ``quiet_seconds`` without a message. A message is acknowledged after ``handle``
    returns: one that was being handled when the consumer died is delivered again."""
    import kombu

    dedupe = dedupe or Deduplicator()
    queue = kombu.Queue(f"provider-results.{provider_id}", kombu.Exchange(""),
                        routing_key=f"provider-results.{provider_id}", durable=True)
    handled = 0

    def on_message(body: Any, message: kombu.Message) -> None:
        nonlocal handled
        if isinstance(body, (bytes, str)):
            body = json.loads(body)
        if dedupe.first_time(body):
            handle(body)
            handled += 1
        message.ack()

    with kombu.Connection(broker_url) as conn:
        with conn.Consumer(queue, callbacks=[on_message], accept=["json"]):
            while True:
                try:
                    conn.drain_events(timeout=quiet_seconds)
                except socket.timeout:
                    return handled


def _now() -> str:
    return datetime.now(JST).isoformat(timespec="seconds")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("purchase", "cancel"):
        p = sub.add_parser(name)
        p.add_argument("--provider", required=True)
        p.add_argument("--secret", default=os.environ.get("PROVIDER_SIGNING_SECRET"),
                       help="the signing secret (or PROVIDER_SIGNING_SECRET)")
        p.add_argument("--order", required=True)
        p.add_argument("--message-id", default=None, help="default: a new one")
        p.add_argument("--occurred-at", default=None, help="RFC 3339 with offset; default: now, JST")
        p.add_argument("--timeout", type=float, default=30.0)
        if name == "purchase":
            p.add_argument("--passport", required=True)
            p.add_argument("--content", required=True)
            p.add_argument("--quantity", type=int, default=1)
            p.add_argument("--unit-price", type=int, default=None)
    r = sub.add_parser("results")
    r.add_argument("--provider", required=True)
    r.add_argument("--seconds", type=float, default=10.0, help="stop after this long without a message")
    args = parser.parse_args(argv)

    broker = os.environ.get("MATOMETE_BROKER_URL", "redis://localhost:6379/0")
    if args.command == "results":
        consume_results(broker, args.provider, lambda body: print(json.dumps(body, ensure_ascii=False), flush=True),
                        quiet_seconds=args.seconds)
        return 0
    if not args.secret:
        parser.error("--secret (or PROVIDER_SIGNING_SECRET) is required to sign")
    message: dict[str, Any] = {"message_id": args.message_id or f"{args.provider}-{uuid.uuid4().hex[:20]}",
                               "occurred_at": args.occurred_at or _now(), "provider_id": args.provider,
                               "order_id": args.order}
    if args.command == "purchase":
        message.update(passport_id=args.passport, content_id=args.content, quantity=args.quantity)
        if args.unit_price is not None:
            message["unit_price"] = args.unit_price
    app = client(broker, os.environ.get("MATOMETE_RESULT_BACKEND") or broker)
    try:
        decision = send(app, f"matomete.{args.command}", sign(message, args.secret), timeout=args.timeout)
    finally:
        app.close()
    print(json.dumps(decision, ensure_ascii=False))
    return 0 if decision.get("status") in ("accepted", "held") else 1


if __name__ == "__main__":
    sys.exit(main())
