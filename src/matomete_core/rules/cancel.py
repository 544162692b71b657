"""Deciding a cancel — SPEC.md. A provider reaches only its own orders (looked up by its own id)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from matomete_core.reasons import Reason
from matomete_core.rules.purchase import MONTHLY_FLAT
from matomete_core.rules.verdict import Verdict


@dataclass(frozen=True)
class Order:
    application_number: int
    price_type: str
    purchased_at: datetime
    cancelled: bool
    charge_month_open: bool  # per use: the month its charge is billed in is still open


def decide_cancel(order: Order, *, at: datetime) -> Verdict:
    if order.cancelled:
        return Verdict.refuse(Reason.ALREADY_CANCELLED, f"application_number={order.application_number}")
    if at < order.purchased_at:
        return Verdict.refuse(Reason.CANCEL_BEFORE_PURCHASE,
                              f"cancel={at.isoformat()} purchase={order.purchased_at.isoformat()}")
    if order.price_type != MONTHLY_FLAT and not order.charge_month_open:
        return Verdict.refuse(Reason.MONTH_CLOSED, f"application_number={order.application_number}")
    return Verdict.accept()
