"""ops/: the alert rules and the Grafana dashboard use only metrics the workers define, and every
alert points at a section of the runbook. (`promtool test rules ops/prometheus/alerts.test.yml`
tests the rules' logic where promtool is installed.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from workers.metrics import BROKER_GAUGES, DB_GAUGES, METRIC_NAMES

ROOT = Path(__file__).resolve().parents[2]
BUILT_IN = {"up"}  # Prometheus' own: 1 when it could scrape the target
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
            "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges
    names = set()
    for match in re.finditer(r"(?<![0-9.])[A-Za-z_:][A-Za-z0-9_:]*", text):
        if text[match.end():].lstrip().startswith("(") or match.group().lower() in KEYWORDS:
            continue  # a function or an operator
        names.add(match.group())
    return names


def test_the_metric_name_reader_finds_metrics_and_skips_functions_labels_and_operators():
    expr = ('histogram_quantile(0.95, sum by (le, task) (rate(a_bucket{task="x", b=~"y|z"}[5m]))) '
            '/ ignoring (k) b_total > 6 * 3600 or absent(up{job="w"})')
    assert metric_names(expr) == {"a_bucket", "b_total", "up"}


@pytest.fixture(scope="module")
def alert_rules() -> list[dict]:
    yaml = pytest.importorskip("yaml", reason="PyYAML belongs in the [test] extras")
    doc = yaml.safe_load((ROOT / "ops/prometheus/alerts.yml").read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"]]


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads((ROOT / "ops/grafana/matomete.json").read_text(encoding="utf-8"))


def dashboard_exprs(dashboard: dict) -> list[str]:
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_every_alert_reads_only_metrics_the_code_defines(alert_rules):
    for rule in alert_rules:
        used = metric_names(rule["expr"])
        assert used, rule["alert"]
        assert used <= METRIC_NAMES | BUILT_IN, (rule["alert"], used - METRIC_NAMES - BUILT_IN)


def test_every_dashboard_panel_reads_only_metrics_the_code_defines(dashboard):
    exprs = dashboard_exprs(dashboard)
    assert exprs
    for expr in exprs:
        used = metric_names(expr)
        assert used and used <= METRIC_NAMES | BUILT_IN, (expr, used - METRIC_NAMES - BUILT_IN)


def test_the_dashboard_shows_every_metric_family(dashboard):
    used = set().union(*(metric_names(e) for e in dashboard_exprs(dashboard)))
    families = {re.sub(r"_(bucket|sum|count)$", "", name) for name in METRIC_NAMES}
    shown = {re.sub(r"_(bucket|sum|count)$", "", name) for name in used}
    assert families <= shown, families - shown


def test_the_issue_asks_for_these_alerts(alert_rules):
    exprs = {rule["alert"]: rule["expr"] for rule in alert_rules}
    assert "matomete_outbox_oldest_unpublished_age_seconds" in exprs["MatometeOutboxStuck"]
    assert "> 300" in exprs["MatometeOutboxStuck"]  # 5 minutes
    assert "matomete_quarantine_messages" in exprs["MatometeQuarantineGrowing"]
    assert "matomete_month_close_pending_seconds" in exprs["MatometeMonthCloseLate"]
    assert "6 * 3600" in exprs["MatometeMonthCloseLate"]  # the month ends 00:00 JST on the 1st: 06:00 JST
    assert 'up{job="matomete-worker"}' in exprs["MatometeNoWorkerUp"]


def test_every_alert_has_a_severity_a_summary_and_a_runbook_section_that_exists(alert_rules):
    runbook = (ROOT / "ops/RUNBOOK.md").read_text(encoding="utf-8")
    anchors = {re.sub(r"[^a-z0-9 -]", "", heading.strip().lower()).replace(" ", "-")
               for heading in re.findall(r"^#+ (.+)$", runbook, flags=re.MULTILINE)}
    for rule in alert_rules:
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        path, _, anchor = rule["annotations"]["runbook"].partition("#")
        assert path == "ops/RUNBOOK.md" and anchor in anchors, (rule["alert"], anchor)


def test_the_database_and_broker_gauges_are_read_with_max_never_summed_across_workers(alert_rules, dashboard):
    exprs = [rule["expr"] for rule in alert_rules] + dashboard_exprs(dashboard)
    for expr in exprs:
        for gauge in (*DB_GAUGES, *BROKER_GAUGES):
            assert not re.search(rf"\bsum\b[^()]*\(\s*{gauge}\b", expr), expr


def test_the_dashboard_asks_for_its_prometheus_data_source(dashboard):
    [variable] = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == "prometheus"
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == f"${{{variable['name']}}}", panel["title"]
