"""Unit tier: the real handlers on an embedded SQLite file, a recording publisher, a fixed clock."""

from __future__ import annotations

import json
import shutil
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from matomete_core.adapters.migrate import upgrade
from matomete_core.config import Settings
from matomete_core.service import bus
from matomete_core.service.deps import Deps, bootstrap
from matomete_core.service.loading import load_catalog, load_lines
from matomete_core.testing import FakePublisher, jst, over_the_wire, signed

SECRETS = {"PA": "s3cret-A-unit", "PB": "s3cret-B-unit"}
CATALOG = {"providers": [
    {"provider_id": "PA", "name": "A社", "signing_secret": SECRETS["PA"],
     "contact": {"url": "https://a.example/help", "phone": "0120-000-000", "hours": "9:00-17:00"},
     "contents": [{"content_id": "pack", "name": "パックサービス", "price_type": "monthly_flat", "unit_price": 525},
                  {"content_id": "trial", "name": "3か月コース", "price_type": "monthly_flat", "unit_price": 1000,
                   "term_months": 3}]},
    {"provider_id": "PB", "name": "B社", "signing_secret": SECRETS["PB"],
     "contact": {"url": "https://b.example/support", "phone": "0120-111-111", "hours": "10:00-18:00"},
     "contents": [{"content_id": "anime1", "name": "名作アニメ1", "price_type": "monthly_flat", "unit_price": 300},
                  {"content_id": "anime2", "name": "名作アニメ2", "price_type": "monthly_flat", "unit_price": 300},
                  {"content_id": "coin", "name": "コイン", "price_type": "per_use", "unit_price": 100}]},
]}


def _pid(passport_id: str, **kw: Any) -> dict[str, Any]:
    return {"passport_id": passport_id, "status": "registered", "limit": None, "restricted": False,
            "registered_at": "2019-04-01T10:00:00+09:00", **kw}


LINES = {"lines": [
    {"customer_id": "CAF0000012573", "access_service": "hikari_next", "access_key": "ABCD1234",
     "billing_account": "06-1234-5678", "line_limit": 10000,
     "passport_ids": [_pid("user01"), _pid("user02", limit=1000), _pid("user03"),
                      _pid("blocked1", restricted=True), _pid("newbie01", status="registering")]},
    {"customer_id": "CAF0000000002", "access_service": "hikari_light", "access_key": "KEY2KEY2",
     "billing_account": "03-0000-0002", "line_limit": 1000, "restricted": True,
     "passport_ids": [_pid("lineblk1")]},
    {"customer_id": "CAF0000099999", "access_service": "hikari_premium", "access_key": "KEY9KEY9",
     "billing_account": "0012345678", "passport_ids": [_pid("prem01")]},
]}


@pytest.fixture(scope="session")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def deps(template_db: Path, tmp_path: Path) -> Deps:
    db = tmp_path / "unit.db"
    shutil.copy(template_db, db)
    settings = Settings(database_url=f"sqlite:///{db}", key_file=str(tmp_path / "unit.key"))
    d = bootstrap(settings, publisher=FakePublisher())
    (tmp_path / "catalog.json").write_text(json.dumps(CATALOG, ensure_ascii=False))
    (tmp_path / "lines.json").write_text(json.dumps(LINES, ensure_ascii=False))
    load_catalog(d.engine, d.secrets, tmp_path / "catalog.json")
    load_lines(d.engine, settings, tmp_path / "lines.json")
    yield d
    tasks = sys.modules.get("workers.tasks")
    if tasks is not None:  # a task run here may have handed rows to its process's courier
        tasks.close_courier()
    d.engine.dispose()


class Provider:
    """Sends signed provider messages through the bus as a broker would deliver them."""

    def __init__(self, deps: Deps):
        self.deps = deps
        self._n = 0

    def send(self, task: str, message: dict[str, Any], *, now: datetime) -> dict[str, Any]:
        return bus.handle(self.deps, task, [over_the_wire(message)], {}, now=now)

    def message(self, provider_id: str, at: datetime, **fields: Any) -> dict[str, Any]:
        self._n += 1
        body = {"message_id": f"m-{self._n}", "occurred_at": at.isoformat(), "provider_id": provider_id, **fields}
        return signed(body, SECRETS[provider_id])

    def buy(self, passport_id: str, content_id: str, at: datetime, *, provider_id: str | None = None,
            order_id: str | None = None, now: datetime | None = None, **fields: Any) -> dict[str, Any]:
        provider_id = provider_id or ("PA" if content_id in ("pack", "trial") else "PB")
        self._n += 1
        msg = self.message(provider_id, at, order_id=order_id or f"o-{self._n}", passport_id=passport_id,
                           content_id=content_id, **fields)
        return self.send("matomete.purchase", msg, now=now or at)

    def cancel(self, order_id: str, at: datetime, *, provider_id: str = "PB",
               now: datetime | None = None) -> dict[str, Any]:
        return self.send("matomete.cancel", self.message(provider_id, at, order_id=order_id), now=now or at)


@pytest.fixture
def provider(deps: Deps) -> Provider:
    return Provider(deps)


__all__ = ["jst", "Provider", "SECRETS"]
