"""Views for the customer and the operator: ご利用明細, お問合せ先一覧, Passport ID details."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, select

from matomete_core.adapters.tables import contents, lines, passport_ids, providers, purchases
from matomete_core.calendar import billing_month, jst_date
from matomete_core.errors import NotFound
from matomete_core.service import billing
from matomete_core.service.line_view import line_status_of
from matomete_core.service.months import is_open

PAGE_SIZE = 10


def _line_exists(conn, customer_id: str) -> None:  # noqa: ANN001
    if conn.execute(select(lines.c.customer_id).where(lines.c.customer_id == customer_id)).first() is None:
        raise NotFound(f"unknown customer ID {customer_id}")


def statement(engine: Engine, customer_id: str, month: str, *, passport_id: str | None = None,
              page: int = 1) -> dict[str, Any]:
    """The line's charges for a billing month (an open month: what close would bill), 10 rows a page."""
    with engine.connect() as conn:
        _line_exists(conn, customer_id)
        billed = billing.month_lines(month, open_month=is_open(conn, month), customer_id=customer_id,
                                     passport_id=passport_id).subquery()
        count, total = conn.execute(select(func.count(), func.coalesce(func.sum(billed.c.amount), 0))).one()
        p = purchases.c
        rows = conn.execute(
            select(billed.c.application_number, billed.c.passport_id, providers.c.name.label("provider_name"),
                   contents.c.name.label("content_name"), p.unit_price, billed.c.quantity, billed.c.amount,
                   p.price_type, p.purchased_at, p.cancelled_at)
            .join(purchases, p.application_number == billed.c.application_number)
            .join(providers, providers.c.provider_id == billed.c.provider_id)
            .join(contents, (contents.c.provider_id == billed.c.provider_id)
                  & (contents.c.content_id == billed.c.content_id))
            .order_by(billed.c.application_number).limit(PAGE_SIZE).offset((page - 1) * PAGE_SIZE)
        ).mappings().all()
    return {
        "customer_id": customer_id, "month": month, "passport_id": passport_id, "page": page,
        "pages": max(1, -(-count // PAGE_SIZE)), "total_count": count, "total_amount": int(total),
        "rows": [{
            "application_number": str(r["application_number"]), "passport_id": r["passport_id"],
            "provider_name": r["provider_name"], "content_name": r["content_name"],
            "unit_price": r["unit_price"], "quantity": r["quantity"], "amount": r["amount"],
            "price_type": r["price_type"], "start_date": jst_date(r["purchased_at"]),
            "end_date": jst_date(r["cancelled_at"]) if r["cancelled_at"] else None,
        } for r in rows],
    }


def passport_details(engine: Engine, passport_id: str, *, now: datetime) -> dict[str, Any]:
    month = billing_month(now)
    with engine.connect() as conn:
        row = conn.execute(select(passport_ids, lines.c.line_limit, lines.c.restricted.label("line_restricted")).join(
            lines, lines.c.customer_id == passport_ids.c.customer_id).where(
            passport_ids.c.passport_id == passport_id)).mappings().first()
        if row is None:
            raise NotFound(f"unknown Passport ID {passport_id}")
        used = billing.usage(conn, month, open_month=is_open(conn, month), passport_id=passport_id)
        overall = line_status_of(conn, row["customer_id"], row["line_restricted"])
    status = "deleted" if row["deleted_at"] is not None else row["status"]
    return {"passport_id": passport_id, "customer_id": row["customer_id"], "status": status,
            "restricted": row["restricted"], "limit": row["limit"], "line_limit": row["line_limit"],
            "month": month, "usage": used,
            "registered_at": row["registered_at"].isoformat() if row["registered_at"] else None,
            "line_status": overall}  # beyond CONTRACT.md: the line's overall status (SPEC.md "Views")


def inquiries(engine: Engine, customer_id: str) -> dict[str, Any]:
    """The providers the line has bought from, with their contact."""
    with engine.connect() as conn:
        _line_exists(conn, customer_id)
        bought = select(purchases.c.provider_id).where(purchases.c.customer_id == customer_id).distinct()
        rows = conn.execute(select(providers).where(providers.c.provider_id.in_(bought))
                            .order_by(providers.c.provider_id)).mappings().all()
    return {"customer_id": customer_id, "providers": [
        {"provider_id": r["provider_id"], "name": r["name"], "url": r["contact_url"],
         "phone": r["contact_phone"], "hours": r["contact_hours"]} for r in rows]}
