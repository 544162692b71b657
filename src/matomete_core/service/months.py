"""Which billing months are open: a month with no row in billing_months is open."""

from __future__ import annotations

from sqlalchemy import Connection, select

from matomete_core.adapters.tables import billing_months
from matomete_core.calendar import add_months


def first_open_month(conn: Connection, month: str) -> str:
    """``month`` itself if open, else the first open month after it."""
    shut = set(conn.execute(select(billing_months.c.month).where(billing_months.c.month >= month)).scalars())
    while month in shut:
        month = add_months(month, 1)
    return month


def is_open(conn: Connection, month: str) -> bool:
    return conn.execute(select(billing_months.c.month).where(billing_months.c.month == month)).first() is None


def mark_closing(conn: Connection, month: str, *, now) -> None:  # noqa: ANN001
    """From now on nothing more is billed into ``month``: later charges go to the first open month."""
    from matomete_core.adapters.database import insert_ignore

    insert_ignore(conn, billing_months, month=month, status="closing", closing_at=now)
