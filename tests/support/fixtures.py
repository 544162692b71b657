"""pytest fixtures over `tests.support.services` (registered by tests/conftest.py).

* ``pg_url``: a fresh, empty PostgreSQL database for one test (SQLAlchemy URL), dropped after it.
* ``redis_url``: a claimed, flushed Redis database for one test, flushed and released after it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.services import drop_pg_database, fresh_pg_database, fresh_redis_db, release_redis_db


@pytest.fixture
def pg_url() -> Iterator[str]:
    url = fresh_pg_database("matomete_test")
    try:
        yield url
    finally:
        drop_pg_database(url)


@pytest.fixture
def redis_url() -> Iterator[str]:
    url = fresh_redis_db()
    try:
        yield url
    finally:
        release_redis_db(url)
