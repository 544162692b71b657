from __future__ import annotations

from dataclasses import dataclass

from matomete_core.reasons import Reason


@dataclass(frozen=True)
class Verdict:
    """The outcome of a rule: accepted, or refused with a reason and the numbers that caused it."""

    accepted: bool
    reason: Reason | None = None
    detail: str = ""

    @classmethod
    def accept(cls) -> "Verdict":
        return cls(True)

    @classmethod
    def refuse(cls, reason: Reason, detail: str = "") -> "Verdict":
        return cls(False, reason, detail)
