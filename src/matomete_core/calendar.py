"""Business time: Asia/Tokyo. The billing month and the 1st-day rule live here and only here.

A month is the string ``YYYY-MM`` (it sorts as it should, in Python and in SQL).
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

JST = ZoneInfo("Asia/Tokyo")

__all__ = ["JST", "billing_month", "add_months", "month_start", "last_billable_month", "jst_date"]


def _require_aware(ts: datetime) -> None:
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise ValueError(f"naive timestamp {ts.isoformat()}: business time needs an explicit offset")


def billing_month(ts: datetime) -> str:
    """The JST calendar month of ``ts`` — the one place a billing month is computed."""
    _require_aware(ts)
    local = ts.astimezone(JST)
    return f"{local.year:04d}-{local.month:02d}"


def jst_date(ts: datetime) -> str:
    """The JST calendar date of ``ts`` as ``YYYY-MM-DD``."""
    _require_aware(ts)
    return ts.astimezone(JST).date().isoformat()


def add_months(month: str, n: int) -> str:
    year, mon = int(month[:4]), int(month[5:7])
    index = year * 12 + (mon - 1) + n
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def month_start(month: str) -> datetime:
    """00:00 JST on the 1st of ``month``."""
    return datetime(int(month[:4]), int(month[5:7]), 1, tzinfo=JST)


def last_billable_month(purchased_at: datetime, cancelled_at: datetime | None,
                        term_months: int | None = None) -> str | None:
    """The last month a monthly-flat subscription bills, or None while it runs on.

    Billed from the purchase month S through the cancellation month, no proration; the 1st-day
    rule: a cancellation on the 1st of a month later than S does not bill that month (bought on
    the 1st and cancelled that same 1st still bills it). A term of N months ends after month S+N-1.
    """
    start = billing_month(purchased_at)
    last: str | None = None
    if cancelled_at is not None:
        last = billing_month(cancelled_at)
        if cancelled_at.astimezone(JST).day == 1 and last > start:
            last = add_months(last, -1)
    if term_months is not None:
        term_end = add_months(start, term_months - 1)
        last = term_end if last is None else min(last, term_end)
    return last
