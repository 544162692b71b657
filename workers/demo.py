"""``matomete demo``: the guide's story on the embedded default — SQLite and an in-process broker.

A real Celery worker runs in this process on kombu's in-memory transport; messages are signed
and sent by name, exactly as a provider would send them.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timedelta, timezone
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


def _story(workdir: Path, *, as_json: bool, console: Console) -> dict[str, Any]:
    from celery.contrib.testing.worker import start_worker

    from matomete_core.adapters.migrate import upgrade
    from matomete_core.security import sign
    from matomete_core.service.deps import bootstrap
    from matomete_core.service.loading import load_catalog, load_lines
    from matomete_core.service.views import statement
    from workers.app import HOUSEKEEPING_QUEUE, INBOUND_QUEUES, app

    deps = bootstrap()
    upgrade(deps.settings.database_url)
    (workdir / "catalog.json").write_text(json.dumps(CATALOG, ensure_ascii=False))
    (workdir / "lines.json").write_text(json.dumps(LINES, ensure_ascii=False))
    load_catalog(deps.engine, deps.secrets, workdir / "catalog.json")
    load_lines(deps.engine, deps.settings, workdir / "lines.json")

    now = datetime.now(timezone.utc) - timedelta(minutes=1)
    at = now.isoformat(timespec="seconds")
    story: list[tuple[str, str, dict]] = []

    def provider(task: str, n: int, caption: str, **fields: Any) -> None:
        msg = {"message_id": f"demo-{n}", "occurred_at": at, **fields}
        msg["signature"] = sign(msg, SECRETS[msg["provider_id"]])
        story.append((caption, task, msg))

    provider("matomete.purchase", 1, "user01 buys A社 パックサービス", provider_id="PA", order_id="A-1",
             passport_id="user01", content_id="pack", unit_price=525)
    provider("matomete.purchase", 2, "user01 buys B社 名作アニメ1", provider_id="PB", order_id="B-1",
             passport_id="user01", content_id="anime1")
    provider("matomete.purchase", 3, "user01 buys B社 名作アニメ2", provider_id="PB", order_id="B-2",
             passport_id="user01", content_id="anime2")
    provider("matomete.purchase", 4, "user02 (own limit 500 yen) buys 6 コイン", provider_id="PB",
             order_id="B-3", passport_id="user02", content_id="coin", quantity=6)
    provider("matomete.purchase", 5, "user01 buys 名作アニメ1 again", provider_id="PB", order_id="B-4",
             passport_id="user01", content_id="anime1")
    story.append(("the first purchase, delivered twice", "matomete.purchase", story[0][2]))

    decisions = []
    app.conf.task_default_queue = INBOUND_QUEUES[0]
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10,
                      queues=[*INBOUND_QUEUES, HOUSEKEEPING_QUEUE]):
        for caption, task, msg in story:
            queue = app.conf.task_routes[task]["queue"]
            decision = app.send_task(task, args=[msg], queue=queue).get(timeout=30)
            decisions.append({"story": caption, **decision})
    month = decisions[0]["billing_month"]
    bill = statement(deps.engine, "CAF0000012573", month)
    doc = {"decisions": decisions, "statement": bill}
    if as_json:
        console.print_json(json.dumps(doc, ensure_ascii=False))
        return doc
    table = Table(title="Decisions")
    for col in ("story", "status", "reason", "申込受付番号", "month", "replayed"):
        table.add_column(col)
    for d in decisions:
        table.add_row(d["story"], d["status"], d["reason"] or "", d["application_number"] or "",
                      d["billing_month"] or "", "yes" if d["replayed"] else "")
    console.print(table)
    rows = Table(title=f"ご利用明細 CAF0000012573 {month} — フレッツ・まとめて支払い料金 {bill['total_amount']:,} yen")
    for col in ("申込受付番号", "Passport ID", "provider", "content", "amount"):
        rows.add_column(col)
    for r in bill["rows"]:
        rows.add_row(r["application_number"], r["passport_id"], r["provider_name"], r["content_name"],
                     f"{r['amount']:,}")
    console.print(rows)
    return doc
