"""workers/app.py derives every time-bound reliability setting from the visibility timeout
(MATOMETE_VISIBILITY_TIMEOUT, default 90 s): in-flight work of a killed worker comes back within
2 minutes by default, a running task is never handed out twice, a retry never outwaits the timeout."""

from __future__ import annotations

import pytest

from matomete_core.config import Settings
from workers.app import create_app, timings


def test_by_default_a_killed_workers_messages_come_back_within_2_minutes():
    t = timings(Settings().visibility_timeout)
    assert (t.visibility_timeout, t.time_limit, t.soft_time_limit, t.max_retry_backoff) == (90, 60, 50, 30)
    assert t.visibility_timeout + t.restore_interval <= 120  # swept every R s once older than V
    assert t.visibility_timeout + t.restore_interval + t.restore_mutex_expire <= 120  # even if a sweeper died


@pytest.mark.parametrize("visibility", [10, 11, 12, 15, 30, 60, 89, 90, 91, 300, 3600])
def test_limits_and_backoff_stay_under_the_visibility_timeout(visibility):
    t = timings(visibility)
    assert 1 <= t.soft_time_limit < t.time_limit < visibility
    assert 1 <= t.max_retry_backoff < visibility and t.max_retry_backoff <= 30
    assert 1 <= t.restore_interval <= 5 and t.restore_mutex_expire < visibility


def test_the_app_hands_the_timings_to_celery_and_kombu():
    conf = create_app(Settings(visibility_timeout=12)).conf
    t = timings(12)
    assert conf.broker_transport_options == {
        "visibility_timeout": 12, "unacked_restore_interval": t.restore_interval,
        "unacked_restore_throttle": 1, "unacked_mutex_expire": t.restore_mutex_expire}
    assert (conf.task_time_limit, conf.task_soft_time_limit) == (t.time_limit, t.soft_time_limit)


def test_the_visibility_timeout_comes_from_the_environment_and_has_a_floor(monkeypatch):
    monkeypatch.setenv("MATOMETE_VISIBILITY_TIMEOUT", "12")
    assert Settings.from_env().visibility_timeout == 12
    monkeypatch.setenv("MATOMETE_VISIBILITY_TIMEOUT", "5")
    with pytest.raises(ValueError, match="MATOMETE_VISIBILITY_TIMEOUT"):
        Settings.from_env()
