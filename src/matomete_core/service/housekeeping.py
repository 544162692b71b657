"""Scheduled work that is not a message: expiring held cancels."""

from __future__ import annotations

from datetime import datetime

from matomete_core.service import provider
from matomete_core.service.deps import Deps


def expire_held(deps: Deps, *, now: datetime) -> int:
    with deps.engine.begin() as conn:
        return provider.expire_held_cancels(conn, now=now, hold=deps.settings.hold)
