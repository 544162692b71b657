"""The fault tier: no yen lost or doubled under faults, hostile input contained.

Session fixtures start servers of this session only — ``dedicated_pg`` (a PostgreSQL cluster in a
temporary directory) and ``dedicated_redis`` (redis-server with an append-only file), each on a
free port — so a test may stop, kill and restart them. The shared servers on 5432 and 6379, which
other engineers' runs use at the same time, are never touched. ``deployment`` makes a fresh
database and Redis db on them and installs matomete there (see harness.Deployment).

Tests that start processes are marked ``faults``; ``-m "not faults"`` runs only the in-process ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.faults.harness import Deployment
from tests.faults.servers import DedicatedPostgres, DedicatedRedis
from tests.unit.conftest import deps, provider, template_db  # noqa: F401 — the unit tier's fixtures


@pytest.fixture(scope="session")
def dedicated_pg() -> Iterator[DedicatedPostgres]:
    pg = DedicatedPostgres()
    try:
        pg.start()
        yield pg
    finally:
        pg.destroy()


@pytest.fixture(scope="session")
def dedicated_redis() -> Iterator[DedicatedRedis]:
    server = DedicatedRedis()
    try:
        server.start()
        yield server
    finally:
        server.destroy()


_RUNNING: list[Deployment] = []


@pytest.fixture
def deployment(dedicated_pg: DedicatedPostgres, dedicated_redis: DedicatedRedis,
               tmp_path: Path) -> Iterator[Callable[..., Deployment]]:
    """``deployment(**env)``: matomete installed on a fresh database and Redis db of the dedicated
    servers, with extra environment ``env`` (e.g. MATOMETE_VISIBILITY_TIMEOUT="12")."""
    made: list[Deployment] = []

    def make(**env: str) -> Deployment:
        # servers a previous test stopped on purpose are up again before anything is made
        if not dedicated_pg.is_up():
            dedicated_pg.start()
        if not dedicated_redis.is_up():
            dedicated_redis.start()
        workdir = tmp_path / f"deployment{len(made)}"
        (workdir / "exports").mkdir(parents=True)
        d = Deployment(database_url=dedicated_pg.create_database(), broker_url=dedicated_redis.fresh_db(),
                       workdir=workdir, extra_env=env)
        made.append(d)
        _RUNNING.append(d)
        return d.install()

    try:
        yield make
    finally:
        for d in made:
            _RUNNING.remove(d)
            d.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """On a failure, attach the tails of the deployment's process logs."""
    report = yield
    if report.failed and _RUNNING:
        report.sections.append(("matomete process logs", "\n".join(d.log_tails() for d in _RUNNING)))
    return report
