"""Scheduled work that is not a message: expiring held cancels, pruning the published outbox."""

from __future__ import annotations

from datetime import datetime

from matomete_core.service import outbox, provider
from matomete_core.service.deps import Deps


def expire_held(deps: Deps, *, now: datetime) -> int:
    with deps.engine.begin() as conn:
        return provider.expire_held_cancels(conn, now=now, hold=deps.settings.hold)


def prune_outbox(deps: Deps, *, now: datetime) -> int:
    """The outbox rows published more than ``outbox_retention`` ago."""
    return outbox.prune(deps.engine, published_before=now - deps.settings.outbox_retention)
