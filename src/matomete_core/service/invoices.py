"""Invoices as they are stored and published: one per billing account per month, titled
「フレッツ・まとめて支払い料金」, items by provider and content. Also what a provider is owed
(settlement) and what the open month would bill now (preview)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Iterator

from sqlalchemy import Engine, Select, and_, func, literal, select

from matomete_core.adapters.tables import (
    charges, contents, invoice_items, invoices, line_billing, providers)
from matomete_core.calendar import billing_month
from matomete_core.errors import NotFound
from matomete_core.service import billing
from matomete_core.service.months import is_open
from matomete_core.service.sqljson import SqlJson

TITLE = "フレッツ・まとめて支払い料金"


def invoiced_accounts(month: str, customer_id: str | None = None) -> Select:
    """Each line's invoiced account for ``month``: its billing account from the latest change
    effective by then — or, for an おまとめ member, its representative's."""
    lb = line_billing.c
    latest = select(lb.customer_id, func.max(lb.from_month).label("from_month")).where(lb.from_month <= month)
    if customer_id is not None:
        latest = latest.where(lb.customer_id == customer_id)
    latest = latest.group_by(lb.customer_id).subquery()
    return select(lb.customer_id, func.coalesce(lb.omatome_representative, lb.billing_account).label("account"),
                  lb.billing_account).join(latest, and_(latest.c.customer_id == lb.customer_id,
                                                         latest.c.from_month == lb.from_month))


def items_select(j: SqlJson, month: str, account) -> Select:  # noqa: ANN001
    """The JSON array of an invoice's items, sorted by provider ID then content ID; correlated to
    ``account`` (a column of the enclosing query)."""
    ii = invoice_items.c
    rows = select(ii.provider_id, providers.c.name.label("provider_name"), ii.content_id,
                  contents.c.name.label("content_name"), ii.quantity, ii.amount
                  ).join(providers, providers.c.provider_id == ii.provider_id
                  ).join(contents, and_(contents.c.provider_id == ii.provider_id, contents.c.content_id == ii.content_id)
                  ).where(ii.month == month, ii.billing_account == account)
    if j.pg:  # an aggregate ORDER BY; PostgreSQL cannot correlate into a derived table
        item = j.obj(provider_id=ii.provider_id, provider_name=providers.c.name, content_id=ii.content_id,
                     content_name=contents.c.name, quantity=ii.quantity, amount=ii.amount)
        return rows.with_only_columns(j.array_agg(item, ii.provider_id, ii.content_id))
    ordered = rows.order_by(ii.provider_id, ii.content_id).correlate(invoices).subquery()
    item = j.obj(provider_id=ordered.c.provider_id, provider_name=ordered.c.provider_name,
                 content_id=ordered.c.content_id, content_name=ordered.c.content_name,
                 quantity=ordered.c.quantity, amount=ordered.c.amount)
    return select(j.array_agg(item))


def invoice_json(j: SqlJson, month: str, **extra: Any):  # noqa: ANN201
    """The invoice document of each row of ``invoices`` (extra fields first: type, event_id)."""
    i = invoices.c
    items = items_select(j, month, i.billing_account).scalar_subquery()
    return j.obj(**extra, billing_account=i.billing_account, month=i.month, title=literal(TITLE),
                 total=i.total, items=j.nested(items))


def stored_invoices(engine: Engine, month: str, billing_account: str | None = None) -> Iterator[dict[str, Any]]:
    import json

    with engine.connect() as conn:
        j = SqlJson(conn.dialect.name)
        stmt = select(j.text(invoice_json(j, month))).where(invoices.c.month == month)
        if billing_account is not None:
            stmt = stmt.where(invoices.c.billing_account == billing_account)
        for (doc,) in conn.execution_options(stream_results=True, yield_per=2000).execute(
                stmt.order_by(invoices.c.billing_account)):
            yield json.loads(doc)


def preview(engine: Engine, customer_id: str, *, now: datetime) -> dict[str, Any]:
    """What the line's invoice for the current month would bill if it closed now."""
    month = billing_month(now)
    with engine.connect() as conn:
        billed = billing.month_lines(month, open_month=is_open(conn, month), customer_id=customer_id).subquery()
        rows = conn.execute(
            select(billed.c.provider_id, providers.c.name, billed.c.content_id, contents.c.name,
                   func.sum(billed.c.quantity), func.sum(billed.c.amount))
            .join(providers, providers.c.provider_id == billed.c.provider_id)
            .join(contents, and_(contents.c.provider_id == billed.c.provider_id,
                                 contents.c.content_id == billed.c.content_id))
            .group_by(billed.c.provider_id, providers.c.name, billed.c.content_id, contents.c.name)
            .order_by(billed.c.provider_id, billed.c.content_id)).all()
        account = conn.execute(invoiced_accounts(month, customer_id)).first()
    if account is None:
        raise NotFound(f"unknown customer ID {customer_id}")
    items = [{"provider_id": r[0], "provider_name": r[1], "content_id": r[2], "content_name": r[3],
              "quantity": int(r[4]), "amount": int(r[5])} for r in rows]
    return {"customer_id": customer_id, "billing_account": account.account,
            "month": month, "title": TITLE, "total": sum(i["amount"] for i in items), "items": items}


def settlement(engine: Engine, month: str) -> dict[str, Any]:
    """What each provider is owed for ``month``: its charges billed in the month, by content."""
    c = charges.c
    with engine.connect() as conn:
        rows = conn.execute(
            select(c.provider_id, providers.c.name, c.content_id, contents.c.name, func.sum(c.quantity),
                   func.sum(c.amount), func.count())
            .join(providers, providers.c.provider_id == c.provider_id)
            .join(contents, and_(contents.c.provider_id == c.provider_id, contents.c.content_id == c.content_id))
            .where(c.billing_month == month, c.voided_at.is_(None))
            .group_by(c.provider_id, providers.c.name, c.content_id, contents.c.name)
            .order_by(c.provider_id, c.content_id)).all()
        closed = not is_open(conn, month)
    out: dict[str, dict[str, Any]] = {}
    for pid, pname, cid, cname, qty, amount, n in rows:
        p = out.setdefault(pid, {"provider_id": pid, "name": pname, "total": 0, "contents": []})
        p["contents"].append({"content_id": cid, "name": cname, "charges": n, "quantity": int(qty),
                              "amount": int(amount)})
        p["total"] += int(amount)
    return {"month": month, "final": closed, "providers": list(out.values()),
            "total": sum(p["total"] for p in out.values())}


__all__ = ["TITLE", "invoiced_accounts", "invoice_json", "stored_invoices", "preview", "settlement"]
