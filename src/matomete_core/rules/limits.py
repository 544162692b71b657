"""Changing limits (ご利用限度額) — SPEC.md "Limits".

The customer sets the line limit, up to the deployment's maximum, and each Passport ID's own limit
(or none). The per-ID limits of the line, after the change, may not sum above the line limit after
the change. A change is judged whole: one failing part refuses all of it. Lowering a limit cancels
nothing; it only blocks new purchases.
"""

from __future__ import annotations

from collections.abc import Mapping

from matomete_core.reasons import Reason
from matomete_core.rules.verdict import Verdict

__all__ = ["decide_limits", "limits_after"]


def limits_after(own_limits: Mapping[str, int | None],
                 passport_limits: Mapping[str, int | None] | None) -> dict[str, int | None]:
    """The line's per-ID limits once the change is applied."""
    return {**own_limits, **(passport_limits or {})}


def decide_limits(*, customer_id: str, terminated: bool, line_limit: int, own_limits: Mapping[str, int | None],
                  new_line_limit: int | None, passport_limits: Mapping[str, int | None] | None,
                  maximum: int) -> Verdict:
    """``own_limits``: every Passport ID of the line (not deleted) with its own limit, None for none."""
    if terminated:
        return Verdict.refuse(Reason.LINE_TERMINATED, f"customer={customer_id}")
    strangers = sorted(set(passport_limits or {}) - set(own_limits))
    if strangers:
        return Verdict.refuse(Reason.UNKNOWN_PASSPORT_ID, f"customer={customer_id} passport={','.join(strangers)}")
    if new_line_limit is not None and new_line_limit > maximum:
        return Verdict.refuse(Reason.LINE_LIMIT_ABOVE_MAXIMUM, f"line_limit={new_line_limit}, maximum={maximum}")
    limit = line_limit if new_line_limit is None else new_line_limit
    total = sum(v for v in limits_after(own_limits, passport_limits).values() if v is not None)
    if total > limit:
        return Verdict.refuse(Reason.LIMIT_SUM_EXCEEDS_LINE_LIMIT, f"sum={total}, line_limit={limit}")
    return Verdict.accept()
