"""Issue 6, metrics: the task layer observes the bus's decisions and month closes; the database
gauges are read on scrape. No worker here: the observation functions are called and the
registry read back."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, insert, update

from matomete_core.adapters.tables import outbox, quarantine
from matomete_core.service.close import STEPS, close_month
from tests.unit.conftest import jst
from workers import metrics, multiproc, tasks

AT = jst("2026-08-10 12:00")


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def scrape(collector) -> dict[tuple[str, tuple], float]:  # noqa: ANN001
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in collector.collect() for s in family.samples}


class FakeTask:
    def __init__(self, name: str):
        self.name = name
        self.request = SimpleNamespace(retries=0)


@pytest.fixture
def through_the_task(deps, monkeypatch):
    monkeypatch.setattr(tasks, "deps", lambda: deps)
    return lambda name, message: tasks.decide(FakeTask(name), (message,), {})


def test_a_decision_is_counted_by_task_status_and_reason_and_timed(provider, through_the_task):
    # given
    accepted = {"task": "matomete.purchase", "status": "accepted", "reason": ""}
    refused = {"task": "matomete.purchase", "status": "rejected", "reason": "PASSPORT_LIMIT_EXCEEDED"}
    before = (sample("matomete_decisions_total", **accepted), sample("matomete_decisions_total", **refused),
              sample("matomete_decision_duration_seconds_count", task="matomete.purchase"))
    # when
    through_the_task("matomete.purchase", provider.message("PA", AT, order_id="m1", passport_id="user01",
                                                           content_id="pack"))
    through_the_task("matomete.purchase", provider.message("PB", AT, order_id="m2", passport_id="user02",
                                                           content_id="coin", quantity=11))
    # then
    assert sample("matomete_decisions_total", **accepted) == before[0] + 1
    assert sample("matomete_decisions_total", **refused) == before[1] + 1
    assert sample("matomete_decision_duration_seconds_count", task="matomete.purchase") == before[2] + 2
    assert sample("matomete_decision_duration_seconds_sum", task="matomete.purchase") > 0


def test_a_quarantined_message_is_counted_with_its_reason(through_the_task):
    labels = {"task": "matomete.line_change", "status": "quarantined", "reason": "INVALID_MESSAGE"}
    before = sample("matomete_decisions_total", **labels)
    through_the_task("matomete.line_change", {"message_id": "bad-1"})
    assert sample("matomete_decisions_total", **labels) == before + 1


def test_a_month_close_run_by_beat_is_timed_once_it_is_closed(deps, provider, tmp_path):
    provider.buy("user01", "pack", jst("2026-08-03 10:00"))
    before = sample("matomete_month_close_duration_seconds_count")
    timer = metrics.MonthCloseTimer()
    close_month(deps.engine, "2026-08", now=jst("2026-09-01 03:00"), export_dir=tmp_path,
                progress=lambda step, done, total: timer("2026-08", step, done, total))
    assert sample("matomete_month_close_duration_seconds_count") == before + 1


def test_the_database_gauges_show_quarantine_outbox_and_month_close(deps, provider, tmp_path):
    # given: 2026-07 closed; two quarantined messages, one of them replayed; two events and one
    # batch unpublished
    provider.buy("user01", "pack", jst("2026-07-03 10:00"))
    close_month(deps.engine, "2026-07", now=jst("2026-08-01 03:00"), export_dir=tmp_path)
    provider.send("matomete.purchase", {"message_id": "q-1"}, now=AT)
    provider.send("matomete.line_change", {"message_id": "q-2"}, now=AT)
    with deps.engine.begin() as conn:
        conn.execute(update(quarantine).where(quarantine.c.message_id == "q-2").values(replayed_at=AT))
        conn.execute(update(outbox).values(published_at=AT))
        conn.execute(insert(outbox), [
            {"event_id": "e-1", "queue": "billing-records", "body": "{}", "created_at": AT - timedelta(minutes=7)},
            {"event_id": "e-2", "queue": "billing-records", "body": "{}", "created_at": AT - timedelta(minutes=1)}])
        conn.execute(insert(outbox).values(event_id="b-1", queue="billing-records", body="{}", batch="invoices",
                                           created_at=AT - timedelta(hours=2)))
    # when
    gauges = scrape(metrics.DatabaseCollector(deps.engine, clock=lambda: jst("2026-09-01 05:00")))
    # then
    assert gauges[("matomete_database_up", ())] == 1
    assert gauges[("matomete_quarantine_messages", (("reason", "INVALID_MESSAGE"),))] == 1
    assert gauges[("matomete_quarantine_messages", (("reason", "BAD_SIGNATURE"),))] == 0
    now = jst("2026-09-01 05:00")
    assert gauges[("matomete_outbox_unpublished_rows", (("kind", "batch"),))] == 1
    assert gauges[("matomete_outbox_unpublished_rows", (("kind", "event"),))] == 2
    assert gauges[("matomete_outbox_oldest_unpublished_age_seconds", (("kind", "event"),))] == pytest.approx(
        (now - (AT - timedelta(minutes=7))).total_seconds())
    assert gauges[("matomete_outbox_oldest_unpublished_age_seconds", (("kind", "batch"),))] == pytest.approx(
        (now - (AT - timedelta(hours=2))).total_seconds())
    assert gauges[("matomete_month_close_step", (("month", "2026-07"),))] == len(STEPS)
    # 2026-08 has ended and is not closed: pending since 00:00 JST on the 1st
    assert gauges[("matomete_month_close_pending_seconds", ())] == 5 * 3600


def test_a_month_part_closed_shows_the_steps_it_has_done(deps, provider, tmp_path):
    provider.buy("user01", "pack", jst("2026-08-03 10:00"))

    class Crash(Exception):
        pass

    def crash_after(step: str) -> None:
        if step == "renewals":
            raise Crash

    with pytest.raises(Crash):
        close_month(deps.engine, "2026-08", now=jst("2026-09-01 03:00"), export_dir=tmp_path, after_step=crash_after)
    gauges = scrape(metrics.DatabaseCollector(deps.engine, clock=lambda: jst("2026-09-01 03:05")))
    assert gauges[("matomete_month_close_step", (("month", "2026-08"),))] == STEPS.index("renewals") + 1
    assert gauges[("matomete_month_close_pending_seconds", ())] == 3 * 3600 + 5 * 60


def test_nothing_is_pending_before_anything_was_bought(deps):
    gauges = scrape(metrics.DatabaseCollector(deps.engine, clock=lambda: jst("2026-09-01 09:00")))
    assert gauges[("matomete_month_close_pending_seconds", ())] == 0
    assert gauges[("matomete_outbox_unpublished_rows", (("kind", "event"),))] == 0


def test_a_scrape_answers_database_down_when_the_database_does_not(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'missing' / 'no.db'}")
    assert scrape(metrics.DatabaseCollector(engine)) == {("matomete_database_up", ()): 0}


def test_every_metric_name_the_code_declares_is_in_a_scrape(deps, provider, tmp_path):
    # given: one of each observation, so every family has a sample
    metrics.observe_decision("matomete.purchase", {"status": "accepted", "reason": None}, 0.01)
    metrics.MonthCloseTimer()("2026-01", "closed", len(STEPS), len(STEPS))
    provider.buy("user01", "pack", jst("2026-07-03 10:00"))
    close_month(deps.engine, "2026-07", now=jst("2026-08-01 03:00"), export_dir=tmp_path)
    # when
    text = generate_latest(metrics.registry_for_serving(deps.engine)).decode()
    # then
    scraped = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    # (the broker gauges need a Redis broker: tests/integration/test_broker_gauges_redis.py)
    declared = metrics.METRIC_NAMES - set(metrics.BROKER_GAUGES)
    assert declared <= scraped, declared - scraped


def test_the_multiprocess_directory_is_private_or_emptied(tmp_path):
    env: dict[str, str] = {}
    made = multiproc.prepare(env)
    assert env[multiproc.ENV] == str(made) and made.is_dir() and not any(made.iterdir())
    given = tmp_path / "given"
    given.mkdir()
    (given / "counter_123.db").write_bytes(b"stale")
    assert multiproc.prepare({multiproc.ENV: str(given)}) == given
    assert not any(given.iterdir())


def test_a_bad_metrics_port_is_refused(monkeypatch):
    monkeypatch.setenv("MATOMETE_METRICS_PORT", "nine")
    with pytest.raises(ValueError, match="MATOMETE_METRICS_PORT"):
        metrics.enable()
