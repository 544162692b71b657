"""The commit probe (``matomete.probe_commit``, workers.probe): one transaction committed as durably
as a decision's and writing nothing else — the floor under any design that commits each message
(ops/bench/decisions.py), and a readiness probe of a worker's database."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from matomete_core.adapters.database import commit_empty, make_engine
from workers.app import app

pytestmark = pytest.mark.integration


def test_the_commit_probe_commits_a_transaction_that_took_an_id_on_postgresql(pg_url):
    engine = make_engine(pg_url)
    try:
        xid = commit_empty(engine)
        with engine.connect() as conn:  # an id taken means a commit record flushed to the WAL
            assert conn.execute(text("SELECT pg_xact_status(CAST(:x AS xid8))"), {"x": str(xid)}).scalar_one() \
                == "committed"
    finally:
        engine.dispose()


def test_the_commit_probe_commits_on_the_embedded_database(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'probe.db'}")
    assert commit_empty(engine) is None


def test_the_commit_probe_is_a_task_of_the_worker():
    app.loader.import_default_modules()  # what a worker imports as it starts (the app's include)
    assert {"matomete.probe_commit", "matomete.noop"} <= set(app.tasks)
