"""Restrictions (利用規制 / 利用規制解除) — SPEC.md: the customer restricts, or lifts, one Passport
ID of the line or the whole line. A restricted ID cannot buy; its subscriptions keep billing."""

from __future__ import annotations

from collections.abc import Collection

from matomete_core.reasons import Reason
from matomete_core.rules.verdict import Verdict

__all__ = ["decide_restriction"]


def decide_restriction(*, customer_id: str, terminated: bool, line_ids: Collection[str],
                       passport_id: str | None) -> Verdict:
    """``passport_id`` None: the whole line. ``line_ids``: the line's Passport IDs (not deleted)."""
    if terminated:
        return Verdict.refuse(Reason.LINE_TERMINATED, f"customer={customer_id}")
    if passport_id is not None and passport_id not in line_ids:
        return Verdict.refuse(Reason.UNKNOWN_PASSPORT_ID, f"customer={customer_id} passport={passport_id}")
    return Verdict.accept()
