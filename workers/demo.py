"""``matomete demo``: the guide's story on the embedded default — SQLite and an in-process broker.

A real Celery worker runs in this process on kombu's in-memory transport; messages are signed
and sent by name, exactly as a provider would send them.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

CATALOG = {"providers": [
    {"provider_id": "PA", "name": "A社", "signing_secret": "demo-secret-A",
     "contact": {"url": "https://a.example/help", "phone": "0120-000-000", "hours": "9:00-17:00"},
     "contents": [{"content_id": "pack", "name": "パックサービス", "price_type": "monthly_flat",
                   "unit_price": 525, "term_months": None}]},
    {"provider_id": "PB", "name": "B社", "signing_secret": "demo-secret-B",
     "contact": {"url": "https://b.example/support", "phone": "0120-111-111", "hours": "10:00-18:00"},
     "contents": [{"content_id": "anime1", "name": "名作アニメ1", "price_type": "monthly_flat", "unit_price": 300},
                  {"content_id": "anime2", "name": "名作アニメ2", "price_type": "monthly_flat", "unit_price": 300},
                  {"content_id": "coin", "name": "コイン", "price_type": "per_use", "unit_price": 100}]},
]}
LINES = {"lines": [
    {"customer_id": "CAF0000012573", "access_service": "hikari_next", "access_key": "demo-key",
     "billing_account": "06-1234-5678", "omatome_representative": None, "line_limit": 10000,
     "restricted": False, "passport_ids": [
         {"passport_id": "user01", "status": "registered", "limit": None, "restricted": False,
          "registered_at": "2019-04-01T10:00:00+09:00"},
         {"passport_id": "user02", "status": "registered", "limit": 500, "restricted": False,
          "registered_at": "2019-04-01T10:00:00+09:00"}]},
    {"customer_id": "CAF0000054321", "access_service": "hikari_light", "access_key": "other-key",
     "billing_account": "03-5555-0000", "omatome_representative": None, "line_limit": 10000,
     "restricted": False, "passport_ids": [
         {"passport_id": "sato01", "status": "registered", "limit": None, "restricted": False,
          "registered_at": "2020-02-02T10:00:00+09:00"}]},
]}
SECRETS = {"PA": "demo-secret-A", "PB": "demo-secret-B"}


def _configure(workdir: Path) -> None:
    os.environ.update({
        "MATOMETE_DATABASE_URL": f"sqlite:///{workdir / 'demo.db'}",
        "MATOMETE_BROKER_URL": "memory://",
        "MATOMETE_RESULT_BACKEND": "cache+memory://",
        "MATOMETE_KEY_FILE": str(workdir / "demo.key"),
        "MATOMETE_EXPORT_DIR": str(workdir / "exports"),
    })
    os.environ.pop("MATOMETE_SECRET_KEY", None)


def run(*, as_json: bool, console: Console) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="matomete-demo-") as tmp:
        workdir = Path(tmp)
        _configure(workdir)
        return _story(workdir, as_json=as_json, console=console)


def _months(now: datetime) -> tuple[str, str]:
    """The story runs in the last two months that have ended, so the last one can be closed."""
    from matomete_core.calendar import add_months, billing_month

    month = add_months(billing_month(now), -1)
    return add_months(month, -1), month


def _story(workdir: Path, *, as_json: bool, console: Console) -> dict[str, Any]:
    from celery.contrib.testing.worker import start_worker

    from matomete_core.adapters.migrate import upgrade
    from matomete_core.adapters.relay import relay
    from matomete_core.calendar import add_months
    from matomete_core.security import sign
    from matomete_core.service.close import close_month
    from matomete_core.service.deps import bootstrap
    from matomete_core.service.invoices import stored_invoices
    from matomete_core.service.loading import load_catalog, load_lines
    from matomete_core.adapters.relay import KombuPublisher
    from matomete_core.testing import jst
    from workers.app import HOUSEKEEPING_QUEUE, INBOUND_QUEUES, ROUTES, app

    deps = bootstrap()
    upgrade(deps.settings.database_url)
    (workdir / "catalog.json").write_text(json.dumps(CATALOG, ensure_ascii=False))
    (workdir / "lines.json").write_text(json.dumps(LINES, ensure_ascii=False))
    load_catalog(deps.engine, deps.secrets, workdir / "catalog.json")
    load_lines(deps.engine, deps.settings, workdir / "lines.json")

    before, month = _months(datetime.now(timezone.utc))
    story: list[tuple[str, str, dict]] = []

    def at(m: str, day: int, hhmm: str) -> str:
        return jst(f"{m}-{day:02d} {hhmm}").isoformat()

    def provider(caption: str, task: str, when: str, **fields: Any) -> None:
        msg = {"message_id": f"demo-{len(story) + 1}", "occurred_at": when, **fields}
        msg["signature"] = sign(msg, SECRETS[msg["provider_id"]])
        story.append((caption, task, msg))

    def customer(caption: str, task: str, when: str, **fields: Any) -> None:
        story.append((caption, task, {"message_id": f"self-{len(story) + 1}", "occurred_at": when,
                                      "customer_id": "CAF0000012573", "access_key": "demo-key", **fields}))

    provider(f"{before}: user02 subscribes to B社 名作アニメ1", "matomete.purchase", at(before, 10, "20:00"),
             provider_id="PB", order_id="B-0", passport_id="user02", content_id="anime1")
    provider(f"{month}-01 00:30: B社 cancels it — the 1st-day rule", "matomete.cancel", at(month, 1, "00:30"),
             provider_id="PB", order_id="B-0")
    provider("user01 buys A社 パックサービス", "matomete.purchase", at(month, 3, "10:00"), provider_id="PA",
             order_id="A-1", passport_id="user01", content_id="pack", unit_price=525)
    provider("user01 buys B社 名作アニメ1", "matomete.purchase", at(month, 3, "10:05"), provider_id="PB",
             order_id="B-1", passport_id="user01", content_id="anime1")
    provider("user01 buys B社 名作アニメ2", "matomete.purchase", at(month, 3, "10:06"), provider_id="PB",
             order_id="B-2", passport_id="user01", content_id="anime2")
    provider("user02 (own limit 500 yen) buys 6 コイン", "matomete.purchase", at(month, 4, "12:00"),
             provider_id="PB", order_id="B-3", passport_id="user02", content_id="coin", quantity=6)
    customer("the customer restricts user02", "matomete.set_restriction", at(month, 5, "09:00"),
             passport_id="user02", restricted=True)
    provider("user02 buys 1 コイン while restricted", "matomete.purchase", at(month, 5, "09:10"),
             provider_id="PB", order_id="B-4", passport_id="user02", content_id="coin")
    customer("the customer lifts the restriction", "matomete.set_restriction", at(month, 5, "21:00"),
             passport_id="user02", restricted=False)
    provider("sato01 (another line) buys 名作アニメ1", "matomete.purchase", at(month, 6, "08:00"),
             provider_id="PB", order_id="B-5", passport_id="sato01", content_id="anime1")
    story.append(("the order system: sato01's line is cancelled", "matomete.line_change",
                  {"message_id": "ord-1", "occurred_at": at(month, 20, "00:00"), "customer_id": "CAF0000054321",
                   "change": "line_cancellation", "customer_id_changed": False}))
    provider("sato01 buys again after the line change", "matomete.purchase", at(month, 21, "08:00"),
             provider_id="PB", order_id="B-6", passport_id="sato01", content_id="anime2")
    story.append(("the first purchase of " + month + ", delivered twice", "matomete.purchase", story[2][2]))

    decisions = []
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10,
                      queues=[*INBOUND_QUEUES, HOUSEKEEPING_QUEUE]):
        for caption, task, msg in story:
            decision = app.send_task(task, args=[msg], queue=ROUTES[task]).get(timeout=30)
            decisions.append({"story": caption, **decision})
    closes = [close_month(deps.engine, m, now=datetime.now(timezone.utc), export_dir=deps.settings.export_dir)
              for m in (before, month)]
    relay(deps.engine, KombuPublisher(deps.settings.broker_url), now=datetime.now(timezone.utc))
    invoices = list(stored_invoices(deps.engine, month))
    ended = [b for b in _drain(deps.settings.broker_url, "provider-results.PB") if b["type"] == "subscription_ended"]
    doc = {"month": month, "decisions": decisions, "closes": closes, "invoices": invoices,
           "subscriptions_ended": ended, "next_month": add_months(month, 1)}
    if as_json:
        console.print_json(json.dumps(doc, ensure_ascii=False))
        return doc
    _print(console, doc)
    return doc


def _drain(broker_url: str, queue: str) -> list[dict]:
    """What a provider would read from its results queue (the in-memory broker here)."""
    from kombu import Connection

    bodies = []
    with Connection(broker_url) as conn:
        q = conn.SimpleQueue(queue)
        while q.qsize():
            message = q.get(block=False)
            bodies.append(json.loads(message.body))
            message.ack()
        q.close()
    return bodies


def _print(console: Console, doc: dict[str, Any]) -> None:
    table = Table(title="Decisions")
    for col in ("story", "status", "reason", "申込受付番号", "month", "replayed"):
        table.add_column(col, overflow="fold")
    for d in doc["decisions"]:
        table.add_row(d["story"], d["status"], d["reason"] or "", d["application_number"] or "",
                      d["billing_month"] or "", "yes" if d["replayed"] else "")
    console.print(table)
    for e in doc["subscriptions_ended"]:
        console.print(f"provider told: subscription {e['application_number']} (order {e['order_id']}) "
                      f"ended {e['ended_at']} — {e['cause']}")
    for c in doc["closes"]:
        console.print(f"closed {c['month']}: {c['charges']} charges, {c['invoices']} invoices, {c['total']:,} yen")
    for inv in doc["invoices"]:
        rows = Table(title=f"{inv['title']} {inv['billing_account']} {inv['month']}: {inv['total']:,} yen")
        for col in ("provider", "content", "qty", "amount"):
            rows.add_column(col)
        for i in inv["items"]:
            rows.add_row(i["provider_name"], i["content_name"], str(i["quantity"]), f"{i['amount']:,}")
        console.print(rows)
