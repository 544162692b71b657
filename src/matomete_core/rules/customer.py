"""Who may command a line, and the registration commands — SPEC.md "Security" and "Registration
since December 2024".

* The access key is checked only while the customer ID is not locked out (``LOCKED_OUT`` says
  nothing about the key). A wrong key is ``BAD_ACCESS_KEY`` and counts; the 5th consecutive wrong
  key locks the customer ID for 30 minutes from when it was processed, and the count starts again
  from zero. A right key resets the count. A command refused while locked out neither counts nor
  extends the lock.
* Registration ended in December 2024 (``registration_cutoff``): registering an ID is refused
  ``REGISTRATION_CLOSED`` and changing registration details ``READ_ONLY``. This system never had a
  registration path, so a command dated before the cut-off is refused the same way; the cut-off only
  changes the detail. Both are authenticated first, like every customer command.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable

from matomete_core.reasons import Reason
from matomete_core.rules.verdict import Verdict

__all__ = ["MAX_WRONG_KEYS", "LOCKOUT", "KeyState", "Access", "authenticate", "decide_registration"]

MAX_WRONG_KEYS = 5
LOCKOUT = timedelta(minutes=30)
REGISTER, UPDATE = "register", "update"


@dataclass(frozen=True)
class KeyState:
    """The line's record of wrong keys: consecutive failures, and the end of a lock-out."""

    failed_attempts: int = 0
    locked_until: datetime | None = None


@dataclass(frozen=True)
class Access:
    verdict: Verdict
    state: KeyState  # what to store, whatever the verdict


def authenticate(state: KeyState, key_matches: Callable[[], bool], *, now: datetime) -> Access:
    """``key_matches`` is asked only when the customer ID is not locked out; ``now`` is the
    processing time."""
    if state.locked_until is not None and now < state.locked_until:
        return Access(Verdict.refuse(Reason.LOCKED_OUT, f"until={state.locked_until.isoformat()}"), state)
    if key_matches():
        return Access(Verdict.accept(), KeyState())
    failed = state.failed_attempts + 1
    if failed >= MAX_WRONG_KEYS:
        until = now + LOCKOUT
        return Access(Verdict.refuse(Reason.BAD_ACCESS_KEY, f"attempts={failed}, locked until={until.isoformat()}"),
                      KeyState(0, until))
    return Access(Verdict.refuse(Reason.BAD_ACCESS_KEY, f"attempts={failed}"), KeyState(failed, None))


def decide_registration(kind: str, *, at: datetime, cutoff: datetime) -> Verdict:
    """``kind``: ``"register"`` (a new Passport ID) or ``"update"`` (registration details)."""
    reason = Reason.REGISTRATION_CLOSED if kind == REGISTER else Reason.READ_ONLY
    when = "ended" if at >= cutoff else "is not offered here; it ends"
    return Verdict.refuse(reason, f"registration {when} {cutoff.isoformat()}")
