"""Deciding a purchase — SPEC.md, the checks in their order; the first that fails is the reason.

Checks 1–2 (well-formed, known provider, own signature) quarantine rather than decide and happen
before this rule is asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from matomete_core.calendar import add_months
from matomete_core.reasons import Reason
from matomete_core.rules.verdict import Verdict

ELIGIBLE_ACCESS_SERVICES = frozenset({"hikari_next", "hikari_light"})
MONTHLY_FLAT, PER_USE = "monthly_flat", "per_use"
MAX_PER_USE_QUANTITY = 99


@dataclass(frozen=True)
class Content:
    provider_id: str
    content_id: str
    name: str
    price_type: str
    unit_price: int
    term_months: int | None


@dataclass(frozen=True)
class Holder:
    """A Passport ID and its line, as they stand when the message is decided."""

    passport_id: str
    customer_id: str
    status: str  # registered | registering
    deleted: bool
    restricted: bool
    limit: int | None
    access_service: str
    line_terminated: bool
    line_restricted: bool
    line_limit: int


@dataclass(frozen=True)
class Usage:
    """What the billing month already holds for the ID and its line, and what this purchase adds."""

    already_subscribed: bool
    passport_usage: int
    line_usage: int
    added: int  # yen this purchase adds to the billing month (0 for a month already billed)


def decide_purchase(*, provider_id: str, content_id: str, quantity: int, unit_price: int | None,
                    content: Content | None, holder: Holder | None,
                    usage: Callable[[], Usage]) -> Verdict:
    if content is None or content.provider_id != provider_id:
        return Verdict.refuse(Reason.UNKNOWN_CONTENT, f"provider={provider_id} content={content_id}")
    if unit_price is not None and unit_price != content.unit_price:
        return Verdict.refuse(Reason.PRICE_MISMATCH, f"stated={unit_price} catalog={content.unit_price}")
    top = 1 if content.price_type == MONTHLY_FLAT else MAX_PER_USE_QUANTITY
    if not 1 <= quantity <= top:
        return Verdict.refuse(Reason.INVALID_QUANTITY, f"quantity={quantity} allowed=1..{top}")
    if holder is None:
        return Verdict.refuse(Reason.UNKNOWN_PASSPORT_ID)
    if holder.line_terminated or holder.deleted:
        return Verdict.refuse(Reason.LINE_TERMINATED, f"customer={holder.customer_id}")
    if holder.access_service not in ELIGIBLE_ACCESS_SERVICES:
        return Verdict.refuse(Reason.LINE_NOT_ELIGIBLE, f"access_service={holder.access_service}")
    if holder.status != "registered":
        return Verdict.refuse(Reason.PASSPORT_ID_NOT_READY, f"status={holder.status}")
    if holder.restricted or holder.line_restricted:
        return Verdict.refuse(Reason.RESTRICTED, "passport" if holder.restricted else "line")
    facts = usage()
    if facts.already_subscribed:
        return Verdict.refuse(Reason.ALREADY_SUBSCRIBED, f"content={content_id}")
    if holder.limit is not None and facts.passport_usage + facts.added > holder.limit:
        return Verdict.refuse(Reason.PASSPORT_LIMIT_EXCEEDED,
                              f"limit={holder.limit}, usage={facts.passport_usage}, amount={facts.added}")
    if facts.line_usage + facts.added > holder.line_limit:
        return Verdict.refuse(Reason.LINE_LIMIT_EXCEEDED,
                              f"limit={holder.line_limit}, usage={facts.line_usage}, amount={facts.added}")
    return Verdict.accept()


def months_billed_at_purchase(start: str, first_open: str, last: str | None) -> list[str]:
    """The service months a newly accepted subscription is charged for right away.

    Its own month; and, when that month is already closed, every closed month from it up to the
    first open one (billed late, in the first open month). Later months are renewals, billed by
    month close.
    """
    if start >= first_open:
        return [start]
    months, m = [], start
    while m < first_open and (last is None or m <= last):
        months.append(m)
        m = add_months(m, 1)
    return months


def term_last_month(start: str, term_months: int | None) -> str | None:
    return None if term_months is None else add_months(start, term_months - 1)


def is_billable(month: str, start: str, last: str | None) -> bool:
    return start <= month and (last is None or month <= last)

