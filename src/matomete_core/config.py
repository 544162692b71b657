"""Deployment settings, read from the environment once, at the edge (CLI, worker start-up).

| variable                      | default                         |
|-------------------------------|---------------------------------|
| MATOMETE_DATABASE_URL         | sqlite:///matomete.db           |
| MATOMETE_BROKER_URL           | redis://localhost:6379/0        |
| MATOMETE_RESULT_BACKEND       | the broker URL                  |
| MATOMETE_EXPORT_DIR           | ./exports                       |
| MATOMETE_SECRET_KEY           | read from MATOMETE_KEY_FILE     |
| MATOMETE_KEY_FILE             | ./matomete.key (made if absent) |
| MATOMETE_DEFAULT_LINE_LIMIT   | 10000                           |
| MATOMETE_MAX_LINE_LIMIT       | 50000                           |
| MATOMETE_REGISTRATION_CUTOFF  | 2024-12-01T00:00:00+09:00       |
| MATOMETE_CLOSE_HOUR           | 3 (JST, on the 1st)             |
| MATOMETE_HOLD_HOURS           | 24                              |
| MATOMETE_VISIBILITY_TIMEOUT   | 90 (seconds, at least 10)       |

MATOMETE_SECRET_KEY is the key that encrypts providers' signing secrets at rest (a Fernet key).
MATOMETE_VISIBILITY_TIMEOUT is how long a message a worker took but never acknowledged (its
worker died) stays invisible before Redis hands it out again; the task time limits and retry
backoff are derived from it (workers/app.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


@dataclass(frozen=True)
class Settings:
    database_url: str = "sqlite:///matomete.db"
    broker_url: str = "redis://localhost:6379/0"
    result_backend: str | None = None
    export_dir: str = "exports"
    key_file: str = "matomete.key"
    secret_key: str | None = field(default=None, repr=False)
    default_line_limit: int = 10_000
    max_line_limit: int = 50_000
    registration_cutoff: datetime = datetime.fromisoformat("2024-12-01T00:00:00+09:00")
    close_hour: int = 3
    hold: timedelta = timedelta(hours=24)
    visibility_timeout: int = 90
    outbox_retention: timedelta = timedelta(days=7)  # published outbox rows are kept this long

    @classmethod
    def from_env(cls) -> "Settings":
        broker = _env("MATOMETE_BROKER_URL", cls.broker_url)
        return cls(
            database_url=_env("MATOMETE_DATABASE_URL", cls.database_url),
            broker_url=broker,
            result_backend=_env("MATOMETE_RESULT_BACKEND", broker),
            export_dir=_env("MATOMETE_EXPORT_DIR", cls.export_dir),
            key_file=_env("MATOMETE_KEY_FILE", cls.key_file),
            secret_key=os.environ.get("MATOMETE_SECRET_KEY") or None,
            default_line_limit=int(_env("MATOMETE_DEFAULT_LINE_LIMIT", str(cls.default_line_limit))),
            max_line_limit=int(_env("MATOMETE_MAX_LINE_LIMIT", str(cls.max_line_limit))),
            registration_cutoff=datetime.fromisoformat(
                _env("MATOMETE_REGISTRATION_CUTOFF", cls.registration_cutoff.isoformat())),
            close_hour=int(_env("MATOMETE_CLOSE_HOUR", str(cls.close_hour))),
            hold=timedelta(hours=float(_env("MATOMETE_HOLD_HOURS", "24"))),
            outbox_retention=timedelta(days=float(_env("MATOMETE_OUTBOX_RETENTION_DAYS", "7"))),
            visibility_timeout=_visibility_timeout(_env("MATOMETE_VISIBILITY_TIMEOUT", str(cls.visibility_timeout))),
        )


MIN_VISIBILITY_TIMEOUT = 10


def _visibility_timeout(text: str) -> int:
    seconds = int(text)
    if seconds < MIN_VISIBILITY_TIMEOUT:
        raise ValueError(f"MATOMETE_VISIBILITY_TIMEOUT={seconds}: at least {MIN_VISIBILITY_TIMEOUT} seconds")
    return seconds
