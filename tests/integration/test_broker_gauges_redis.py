"""The broker gauges on the real Redis: what waits on each inbound queue (every priority step kombu
keeps it in) and what is taken but not acknowledged, read on each scrape — and a scrape that still
answers, with ``matomete_broker_up 0``, when the broker does not."""

from __future__ import annotations

import pytest
import redis
from kombu import Connection
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine

from workers import metrics
from workers.transport import UNACKED

pytestmark = pytest.mark.integration


def scrape(collector) -> dict[tuple[str, tuple], float]:  # noqa: ANN001
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in collector.collect() for s in family.samples}


def test_the_broker_gauges_count_waiting_and_unacknowledged_messages(redis_url):
    # given three messages on provider-events (one sent with a priority, which kombu keeps in
    # another list), one on line-changes, and one taken by a worker and not acknowledged
    with Connection(redis_url) as conn:
        producer = conn.Producer(serializer="json")
        for n, priority in enumerate((0, 0, 9)):
            producer.publish({"n": n}, routing_key="provider-events", exchange="", priority=priority)
        producer.publish({"n": 3}, routing_key="line-changes", exchange="")
    r = redis.Redis.from_url(redis_url)
    r.hset(UNACKED, "tag-1", b"[]")

    # when the gauges are scraped
    gauges = scrape(metrics.BrokerCollector(redis_url))

    # then
    assert gauges == {
        ("matomete_broker_up", ()): 1,
        ("matomete_queue_messages", (("queue", "provider-events"),)): 3,
        ("matomete_queue_messages", (("queue", "line-changes"),)): 1,
        ("matomete_queue_messages", (("queue", "customer-commands"),)): 0,
        ("matomete_queue_unacked_messages", ()): 1,
    }


def test_an_unreachable_broker_gives_broker_up_0_and_the_scrape_still_answers():
    assert scrape(metrics.BrokerCollector("redis://127.0.0.1:1/0")) == {("matomete_broker_up", ()): 0}


@pytest.mark.parametrize("broker", ["redis", "memory://"])
def test_a_worker_serves_the_broker_gauges_when_its_broker_is_redis(redis_url, broker):
    registry = metrics.registry_for_serving(create_engine("sqlite://"), redis_url if broker == "redis" else broker)
    served = {s.name for family in text_string_to_metric_families(generate_latest(registry).decode())
              for s in family.samples}
    assert (set(metrics.BROKER_GAUGES) <= served) is (broker == "redis")
    assert not (set(metrics.BROKER_GAUGES) & served) or broker == "redis"
    assert "matomete_database_up" in served
