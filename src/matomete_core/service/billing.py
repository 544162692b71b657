"""What a billing month holds: the charges that month close would bill for it, given what is known now.

That is the materialized charges billed in the month (not voided) and, while the month is open,
the renewals still to come: every monthly-flat subscription billable in the month that has no
charge for it yet — once per Passport ID and content. Usage (limits), the statement and the
invoice preview all read this one definition.
"""

from __future__ import annotations

from functools import lru_cache

from sqlalchemy import BindParameter, Connection, Select, bindparam, exists, func, literal, or_, select, union_all
from sqlalchemy.dialects.postgresql import ARRAY

from matomete_core.adapters.database import among
from matomete_core.adapters.tables import charges, purchases
from matomete_core.rules.purchase import MONTHLY_FLAT

__all__ = ["month_lines", "usage", "reading_line_usage", "per_passport", "dedupe_key"]


def dedupe_key(passport_id: str, provider_id: str, content_id: str) -> str:
    return f"{passport_id}|{provider_id}|{content_id}"


Customers = str | list[str] | None  # one line, some lines, or all


def _of(column, customer_id):  # noqa: ANN001, ANN202 — a value, a list, a list_param or a bound value
    if isinstance(customer_id, BindParameter) and (customer_id.expanding or isinstance(customer_id.type, ARRAY)):
        return among(column, customer_id)
    return column.in_(customer_id) if isinstance(customer_id, list) else column == customer_id


def _charged(month: str, customer_id: Customers, passport_id: str | None) -> Select:
    c = charges.c
    stmt = select(c.application_number, c.customer_id, c.passport_id, c.provider_id, c.content_id,
                  c.quantity, c.amount, c.late, c.dedupe_key).where(c.billing_month == month, c.voided_at.is_(None))
    if customer_id is not None:
        stmt = stmt.where(_of(c.customer_id, customer_id))
    if passport_id is not None:
        stmt = stmt.where(c.passport_id == passport_id)
    return stmt


def renewals_due(month: str, customer_id: Customers = None, passport_id: str | None = None) -> Select:
    """Subscriptions billable in ``month`` with no charge for it yet, one per Passport ID and content."""
    p = purchases.c
    covered = exists().where(charges.c.dedupe_key == p.dedupe_key, charges.c.service_month == month)
    rank = func.row_number().over(partition_by=p.dedupe_key, order_by=p.application_number)
    inner = select(p.application_number, p.customer_id, p.passport_id, p.provider_id, p.content_id,
                   p.quantity, (p.unit_price * p.quantity).label("amount"), p.dedupe_key, rank.label("rank")).where(
        p.price_type == MONTHLY_FLAT, p.start_month < month,
        or_(p.last_month.is_(None), p.last_month >= month), ~covered)
    if customer_id is not None:
        inner = inner.where(_of(p.customer_id, customer_id))
    if passport_id is not None:
        inner = inner.where(p.passport_id == passport_id)
    due = inner.subquery()
    return select(due.c.application_number, due.c.customer_id, due.c.passport_id, due.c.provider_id,
                  due.c.content_id, due.c.quantity, due.c.amount, literal(False).label("late"),
                  due.c.dedupe_key).where(due.c.rank == 1)


def month_lines(month: str, *, open_month: bool, customer_id: Customers = None,
                passport_id: str | None = None) -> Select:
    charged = _charged(month, customer_id, passport_id)
    if not open_month:
        return charged
    return select(union_all(charged, renewals_due(month, customer_id, passport_id)).subquery())


def usage(conn: Connection, month: str, *, open_month: bool, customer_id: str | None = None,
          passport_id: str | None = None) -> int:
    lines = month_lines(month, open_month=open_month, customer_id=customer_id, passport_id=passport_id).subquery()
    return int(conn.execute(select(func.coalesce(func.sum(lines.c.amount), 0))).scalar_one())


def month_is_billed_for(conn: Connection, key: str, month: str) -> bool:
    """True when ``month`` already bills this Passport ID and content (a charge, or a renewal due)."""
    p = purchases.c
    charged = exists().where(charges.c.dedupe_key == key, charges.c.service_month == month)
    running = exists().where(p.dedupe_key == key, p.start_month <= month,
                             or_(p.last_month.is_(None), p.last_month >= month))
    return bool(conn.execute(select(or_(charged, running))).scalar())


@lru_cache(maxsize=1)
def _usage_by_passport() -> Select:
    """Built once: an open month's lines of one line, summed per Passport ID."""
    lines = month_lines(bindparam("month"), open_month=True, customer_id=bindparam("customer_id")).subquery()
    return select(lines.c.passport_id, func.sum(lines.c.amount)).group_by(lines.c.passport_id)


def reading_line_usage(month: str, customer_id: str) -> tuple[Select, dict[str, str]]:
    """Usage of an open month per Passport ID of the line, in one query — the line's is the sum:
    the statement, to run with the line's lock (``database.pipelined``), and its rows give
    ``per_passport``."""
    return _usage_by_passport(), {"month": month, "customer_id": customer_id}


def per_passport(rows) -> dict[str, int]:  # noqa: ANN001 — rows of (Passport ID, amount)
    return {pid: int(amount) for pid, amount in rows}
