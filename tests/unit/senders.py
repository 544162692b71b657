"""Senders for the unit tier beside ``conftest.Provider``: the order system and the customer's
self-service page, each sending through the bus as a broker would deliver (JSON round trip)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from matomete_core.service import bus
from matomete_core.service.deps import Deps
from matomete_core.testing import over_the_wire

LINE = "CAF0000012573"
ACCESS_KEY = "ABCD1234"  # LINE's, in conftest.LINES


class OrderSystem:
    """Sends ``matomete.line_change``."""

    def __init__(self, deps: Deps):
        self.deps = deps
        self._n = 0

    def message(self, change: str, at: datetime, *, customer_id: str = LINE, **fields: Any) -> dict[str, Any]:
        self._n += 1
        return {"message_id": f"ord-{self._n}", "occurred_at": at.isoformat(), "customer_id": customer_id,
                "change": change, **fields}

    def send(self, message: dict[str, Any], *, now: datetime) -> dict[str, Any]:
        return bus.handle(self.deps, "matomete.line_change", [over_the_wire(message)], {}, now=now)

    def change(self, change: str, at: datetime, *, now: datetime | None = None, customer_id: str = LINE,
               **fields: Any) -> dict[str, Any]:
        return self.send(self.message(change, at, customer_id=customer_id, **fields), now=now or at)


class Customer:
    """Sends the self-service commands of one line, with its access key unless told another."""

    def __init__(self, deps: Deps, customer_id: str = LINE, access_key: str = ACCESS_KEY):
        self.deps, self.customer_id, self.access_key = deps, customer_id, access_key
        self._n = 0

    def message(self, at: datetime, *, access_key: str | None = None, **fields: Any) -> dict[str, Any]:
        self._n += 1
        return {"message_id": f"web-{self._n}", "occurred_at": at.isoformat(), "customer_id": self.customer_id,
                "access_key": self.access_key if access_key is None else access_key, **fields}

    def send(self, task: str, message: Any, *, now: datetime) -> dict[str, Any]:
        return bus.handle(self.deps, task, [over_the_wire(message)], {}, now=now)

    def command(self, task: str, at: datetime, *, now: datetime | None = None, access_key: str | None = None,
                **fields: Any) -> dict[str, Any]:
        return self.send(task, self.message(at, access_key=access_key, **fields), now=now or at)

    def restrict(self, passport_id: str | None, at: datetime, *, restricted: bool = True,
                 **kw: Any) -> dict[str, Any]:
        return self.command("matomete.set_restriction", at, passport_id=passport_id, restricted=restricted, **kw)

    def lift(self, passport_id: str | None, at: datetime, **kw: Any) -> dict[str, Any]:
        return self.restrict(passport_id, at, restricted=False, **kw)

    def set_limits(self, at: datetime, **kw: Any) -> dict[str, Any]:
        return self.command("matomete.set_limits", at, **kw)
