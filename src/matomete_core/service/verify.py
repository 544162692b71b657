"""``verify_month(M)``: recompute month M from subscriptions and purchases and compare it with what
was stored — charges, invoice items, invoice totals. Every check is one set-based query that
returns only the differences."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, and_, except_, func, literal, or_, select

from matomete_core.adapters.tables import charges, invoice_items, invoices, purchases
from matomete_core.service import billing
from matomete_core.service.invoices import invoiced_accounts
from matomete_core.service.months import is_open

LISTED = 100


def verify_month(engine: Engine, month: str) -> dict[str, Any]:
    c, p = charges.c, purchases.c
    differences: list[dict[str, Any]] = []
    with engine.connect() as conn:
        if is_open(conn, month):
            return {"month": month, "ok": False, "differences": [{"kind": "month_not_closed"}]}
        wrong_amount = select(c.application_number, c.service_month, c.amount,
                              (p.unit_price * p.quantity).label("expected")).join(
            purchases, p.application_number == c.application_number).where(
            c.billing_month == month, c.voided_at.is_(None),
            or_(c.amount != p.unit_price * p.quantity, c.quantity != p.quantity))
        for r in conn.execute(wrong_amount.limit(LISTED)):
            differences.append({"kind": "charge_amount", "application_number": str(r.application_number),
                                "service_month": r.service_month, "stored": r.amount, "expected": r.expected})
        outside = select(c.application_number, c.service_month).join(
            purchases, p.application_number == c.application_number).where(
            c.billing_month == month, c.voided_at.is_(None),
            or_(c.service_month < p.start_month, and_(p.last_month.is_not(None), c.service_month > p.last_month)))
        for r in conn.execute(outside.limit(LISTED)):
            differences.append({"kind": "charge_outside_billable_months",
                                "application_number": str(r.application_number), "service_month": r.service_month})
        for r in conn.execute(billing.renewals_due(month).limit(LISTED)):
            differences.append({"kind": "renewal_not_billed", "application_number": str(r.application_number),
                                "expected": r.amount})
        acct = invoiced_accounts(month).subquery()
        expected_items = select(acct.c.account, c.provider_id, c.content_id, func.sum(c.quantity), func.sum(c.amount)
                                ).join(acct, acct.c.customer_id == c.customer_id).where(
            c.billing_month == month, c.voided_at.is_(None)).group_by(acct.c.account, c.provider_id, c.content_id)
        ii = invoice_items.c
        stored_items = select(ii.billing_account, ii.provider_id, ii.content_id, ii.quantity, ii.amount).where(
            ii.month == month)
        for kind, query in (("invoice_item_missing_or_wrong", except_(expected_items, stored_items)),
                            ("invoice_item_unexpected", except_(stored_items, expected_items))):
            for r in conn.execute(select(query.subquery()).limit(LISTED)):
                differences.append({"kind": kind, "billing_account": r[0], "provider_id": r[1], "content_id": r[2],
                                    "quantity": int(r[3]), "amount": int(r[4])})
        sums = select(ii.billing_account.label("account"), func.sum(ii.amount).label("total")).where(
            ii.month == month).group_by(ii.billing_account).subquery()
        i = invoices.c
        totals = select(i.billing_account, i.total, sums.c.total).outerjoin(sums, sums.c.account == i.billing_account
                                                                            ).where(i.month == month,
                                                                                    or_(sums.c.total.is_(None), i.total != sums.c.total))
        for r in conn.execute(totals.limit(LISTED)):
            differences.append({"kind": "invoice_total", "billing_account": r[0], "stored": r[1],
                                "expected": None if r[2] is None else int(r[2])})
        missing = select(sums.c.account).outerjoin(invoices, and_(i.billing_account == sums.c.account,
                                                                   i.month == literal(month))).where(i.total.is_(None))
        for r in conn.execute(missing.limit(LISTED)):
            differences.append({"kind": "invoice_missing", "billing_account": r[0]})
    return {"month": month, "ok": not differences, "differences": differences}
