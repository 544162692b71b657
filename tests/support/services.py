"""Throwaway PostgreSQL databases and Redis databases on this machine's real servers, and `wait_until`.

* PostgreSQL: the admin URL is ``MATOMETE_TEST_PG_URL`` or ``postgresql+psycopg://postgres@127.0.0.1:5432/test``
  (a SQLAlchemy URL). `fresh_pg_database` creates ``<prefix>_<12 hex>`` on that server and returns its
  SQLAlchemy URL; `drop_pg_database` drops it (and refuses to drop anything it did not name).
* Redis: the base URL is ``MATOMETE_TEST_REDIS_URL`` or ``redis://127.0.0.1:6379``. Databases 1..N-1 are
  reserved for tests (0 is left to developers). `fresh_redis_db` claims a free one with a key that expires
  after `REDIS_CLAIM_TTL` seconds (so parallel runs do not share one), FLUSHDBs it and returns its URL;
  `release_redis_db` flushes it and gives it back.

Nothing here imports the project.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from typing import Callable, TypeVar
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis
from psycopg import sql

__all__ = [
    "pg_admin_url", "fresh_pg_database", "drop_pg_database",
    "redis_base_url", "fresh_redis_db", "release_redis_db",
    "wait_until", "WaitTimeout",
]

DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379"
REDIS_CLAIM_KEY = "matomete-test:claimed"
REDIS_CLAIM_TTL = 4 * 3600

_PREFIX = re.compile(r"^[a-z][a-z0-9_]{0,40}$")
_CREATED_NAME = re.compile(r"^[a-z][a-z0-9_]{0,40}_[0-9a-f]{12}$")

T = TypeVar("T")


# ---- PostgreSQL -------------------------------------------------------------------------------

def pg_admin_url() -> str:
    """The SQLAlchemy URL of the database used to create and drop test databases."""
    return os.environ.get("MATOMETE_TEST_PG_URL") or DEFAULT_PG_URL


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


def _database_of(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def _libpq(url: str) -> str:
    """A SQLAlchemy URL (``postgresql+psycopg://…``) as a libpq URI (``postgresql://…``)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(scheme="postgresql"))


def _admin_connection() -> psycopg.Connection:
    return psycopg.connect(_libpq(pg_admin_url()), autocommit=True, connect_timeout=10)


def fresh_pg_database(prefix: str = "matomete_test") -> str:
    """Create an empty database ``<prefix>_<12 hex>``; return its SQLAlchemy URL."""
    if not _PREFIX.match(prefix):
        raise ValueError(f"database prefix {prefix!r}: lower-case letters, digits and _ only")
    name = f"{prefix}_{secrets.token_hex(6)}"
    with _admin_connection() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return _with_database(pg_admin_url(), name)


def drop_pg_database(url: str) -> None:
    """Drop a database made by `fresh_pg_database`, ending its sessions first. Missing is fine."""
    name = _database_of(url)
    if not _CREATED_NAME.match(name) or name == _database_of(pg_admin_url()):
        raise ValueError(f"refusing to drop {name!r}: not a database made by fresh_pg_database")
    with _admin_connection() as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


# ---- Redis ------------------------------------------------------------------------------------

def redis_base_url() -> str:
    """The Redis server URL, without a database number."""
    return (os.environ.get("MATOMETE_TEST_REDIS_URL") or DEFAULT_REDIS_URL).rstrip("/")


def _redis_url(db: int) -> str:
    return f"{redis_base_url()}/{db}"


def fresh_redis_db() -> str:
    """Claim an unclaimed Redis database (1..N-1), FLUSHDB it, and return its URL, e.g. ``…/13``."""
    base = redis_base_url()
    with redis.Redis.from_url(base + "/0", socket_timeout=5) as admin:
        count = int(admin.config_get("databases").get("databases", 16))
    token = secrets.token_hex(8)
    for db in range(count - 1, 0, -1):
        with redis.Redis.from_url(_redis_url(db), socket_timeout=5) as client:
            if not client.set(REDIS_CLAIM_KEY, token, nx=True, ex=REDIS_CLAIM_TTL):
                continue  # another run holds it
            client.flushdb()
            client.set(REDIS_CLAIM_KEY, token, ex=REDIS_CLAIM_TTL)
            return _redis_url(db)
    raise RuntimeError(f"no free Redis database on {base}: all of 1..{count - 1} are claimed "
                       f"(claims expire after {REDIS_CLAIM_TTL} s; key {REDIS_CLAIM_KEY!r})")


def release_redis_db(url: str) -> None:
    """Flush a database claimed by `fresh_redis_db` (which also drops the claim)."""
    with redis.Redis.from_url(url, socket_timeout=5) as client:
        client.flushdb()


# ---- waiting ----------------------------------------------------------------------------------

class WaitTimeout(AssertionError):
    """`wait_until` ran out of time."""


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.2,
               message: str | None = None) -> T:
    """Call `predicate` every `interval` seconds until it returns something truthy; return that.

    Raises `WaitTimeout` (an AssertionError) after `timeout` seconds. Exceptions from the
    predicate propagate.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            what = message or getattr(predicate, "__name__", "condition")
            raise WaitTimeout(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
