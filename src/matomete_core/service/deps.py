"""What the handlers need from the outside world, wired once (``bootstrap``) so tests can pass fakes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import Engine

from matomete_core.config import Settings
from matomete_core.security import SecretBox


class Publisher(Protocol):
    def publish(self, queue: str, body: str, event_id: str) -> None: ...


@dataclass
class Deps:
    engine: Engine
    secrets: SecretBox
    settings: Settings
    publisher: Publisher | None = None


def bootstrap(settings: Settings | None = None, publisher: Publisher | None = None) -> Deps:
    from matomete_core.adapters.database import make_engine

    settings = settings or Settings.from_env()
    return Deps(engine=make_engine(settings.database_url),
                secrets=SecretBox.from_settings(settings.secret_key, settings.key_file),
                settings=settings, publisher=publisher)
