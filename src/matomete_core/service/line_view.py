"""The line as the customer and the operator see it (SPEC.md "Views"): its overall status, its
Passport IDs with their status, restriction, own limit and this month's usage, the line's
restriction, limit and usage, and the billing account this month's charges go to.

The overall status (``line_status``): 規制中 when the line is restricted; else 利用中 when some
Passport ID is registered, 登録中 when its IDs are all still registering, 未利用 when it has none.
Deleted IDs (a terminated line's) count as none.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, select

from matomete_core.adapters.tables import line_billing, lines, passport_ids
from matomete_core.calendar import billing_month
from matomete_core.errors import NotFound
from matomete_core.service import billing
from matomete_core.service.months import is_open

__all__ = ["IN_USE", "REGISTERING", "UNUSED", "RESTRICTED", "line_status", "line_status_of", "line_details"]

IN_USE, REGISTERING, UNUSED, RESTRICTED = "利用中", "登録中", "未利用", "規制中"


def line_status(*, restricted: bool, id_statuses: Iterable[str]) -> str:
    """``id_statuses``: the statuses of the line's Passport IDs that are not deleted."""
    statuses = set(id_statuses)
    if restricted:
        return RESTRICTED
    if "registered" in statuses:
        return IN_USE
    return REGISTERING if statuses else UNUSED


def line_status_of(conn: Connection, customer_id: str, restricted: bool) -> str:
    statuses = conn.execute(select(passport_ids.c.status).where(
        passport_ids.c.customer_id == customer_id, passport_ids.c.deleted_at.is_(None))).scalars()
    return line_status(restricted=restricted, id_statuses=statuses)


def _iso(ts: datetime | None) -> str | None:
    return ts.isoformat() if ts is not None else None


def line_details(engine: Engine, customer_id: str, *, now: datetime) -> dict[str, Any]:
    month = billing_month(now)
    with engine.connect() as conn:
        line = conn.execute(select(lines).where(lines.c.customer_id == customer_id)).mappings().first()
        if line is None:
            raise NotFound(f"unknown customer ID {customer_id}")
        open_month = is_open(conn, month)
        ids = conn.execute(select(passport_ids).where(passport_ids.c.customer_id == customer_id)
                           .order_by(passport_ids.c.passport_id)).mappings().all()
        account = conn.execute(select(line_billing).where(
            line_billing.c.customer_id == customer_id, line_billing.c.from_month <= month
        ).order_by(line_billing.c.from_month.desc()).limit(1)).mappings().first()
        rows = [{
            "passport_id": p["passport_id"],
            "status": "deleted" if p["deleted_at"] is not None else p["status"],
            "restricted": p["restricted"], "limit": p["limit"],
            "usage": billing.usage(conn, month, open_month=open_month, passport_id=p["passport_id"]),
            "registered_at": _iso(p["registered_at"]),
        } for p in ids]
        usage = billing.usage(conn, month, open_month=open_month, customer_id=customer_id)
    return {
        "customer_id": customer_id,
        "status": line_status(restricted=line["restricted"],
                              id_statuses=[p["status"] for p in ids if p["deleted_at"] is None]),
        "access_service": line["access_service"], "restricted": line["restricted"],
        "line_limit": line["line_limit"], "month": month, "usage": usage,
        "billing_account": account["billing_account"] if account else None,
        "omatome_representative": account["omatome_representative"] if account else None,
        "terminated_at": _iso(line["terminated_at"]),
        "passport_ids": rows,
    }
