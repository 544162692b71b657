"""SPEC.md "Month close": a close whose process is killed part-way resumes, on a rerun, to the same
invoices and no duplicate charge — on the real PostgreSQL, with a real SIGKILL."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from sqlalchemy import func, select

from matomete_core.adapters.database import release_close_lock, try_close_lock
from matomete_core.adapters.tables import billing_months, charges
from matomete_core.service.close import close_month
from matomete_core.service.invoices import stored_invoices
from tests.support.services import wait_until
from tests.unit.conftest import jst

pytestmark = pytest.mark.integration

CLOSE = textwrap.dedent("""
    import os, signal, sys
    from datetime import datetime
    from matomete_core.adapters.database import make_engine
    from matomete_core.service.close import close_month
    url, killed_after, exports = sys.argv[1:]
    def die(step):
        if step == killed_after:
            os.kill(os.getpid(), signal.SIGKILL)
    close_month(make_engine(url), "2026-08", now=datetime.fromisoformat("2026-09-01T03:00:00+09:00"),
                export_dir=exports, after_step=die)
""")


@pytest.mark.parametrize("killed_after", ["closing", "renewals", "invoices", "published"])
def test_a_killed_close_resumes_to_the_same_invoices(pg_deps, pg_settings, tmp_path, killed_after):
    from tests.unit.conftest import Provider
    provider = Provider(pg_deps)
    provider.buy("user01", "anime1", jst("2026-07-10 10:00"))
    provider.buy("user03", "pack", jst("2026-08-11 10:00"))
    close_month(pg_deps.engine, "2026-07", now=jst("2026-08-01 03:00"), export_dir=tmp_path)
    # when a close of August is SIGKILLed right after a step
    done = subprocess.run([sys.executable, "-c", CLOSE, pg_settings.database_url, killed_after, str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == -9, done.stderr[-2000:]
    with pg_deps.engine.connect() as conn:
        assert conn.execute(select(billing_months.c.step).where(billing_months.c.month == "2026-08")).scalar() \
            == killed_after
    # then, once PostgreSQL has seen the killed close's session end (and with it its close lock),
    wait_until(lambda: _close_lock_free(pg_deps.engine), timeout=30, interval=0.1,
               message="the killed close's session lock to be released")
    # a rerun finishes it, with each charge once and the invoice whole
    result = close_month(pg_deps.engine, "2026-08", now=jst("2026-09-01 04:00"), export_dir=tmp_path)
    assert (result["status"], result["charges"], result["total"]) == ("closed", 2, 825)
    with pg_deps.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(charges)).scalar_one() == 3
    assert [i["total"] for i in stored_invoices(pg_deps.engine, "2026-08")] == [825]
    assert (tmp_path / "invoices-2026-08.jsonl").read_text(encoding="utf-8").count("\n") == 1


def test_two_closes_at_once_cannot_both_run(pg_deps, tmp_path):
    from matomete_core.service.close import CloseInProgress
    with pg_deps.engine.connect() as other_beat:
        assert try_close_lock(other_beat)
        with pytest.raises(CloseInProgress):
            close_month(pg_deps.engine, "2026-08", now=jst("2026-09-01 03:00"), export_dir=tmp_path)
        release_close_lock(other_beat)
    assert close_month(pg_deps.engine, "2026-08", now=jst("2026-09-01 03:00"), export_dir=tmp_path)["status"] == "closed"


def _close_lock_free(engine) -> bool:  # noqa: ANN001
    with engine.connect() as conn:
        if not try_close_lock(conn):
            return False
        release_close_lock(conn)
        return True
