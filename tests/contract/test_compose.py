"""The project frame: docker-compose.yml, the Dockerfile, the Makefile and the CI scripts.

Read, never run: there is no Docker engine where the tests run.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {"redis", "postgres", "migrate", "worker", "beat", "flower"}
WAITING_CONDITIONS = {"service_healthy", "service_completed_successfully"}


@pytest.fixture(scope="module")
def compose() -> dict:
    yaml = pytest.importorskip("yaml", reason="PyYAML belongs in the [test] extras")
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


def command(service: dict) -> list[str]:
    cmd = service.get("command", [])
    return shlex.split(cmd) if isinstance(cmd, str) else [str(part) for part in cmd]


def has_healthcheck(service: dict) -> bool:
    check = service.get("healthcheck") or {}
    return bool(check.get("test")) and check["test"] != ["NONE"] and not check.get("disable")


def waits_for(service: dict) -> dict[str, str]:
    """depends_on as {service: condition}; the short list form waits for nothing."""
    depends = service.get("depends_on") or {}
    if isinstance(depends, list):
        return {name: "service_started" for name in depends}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in depends.items()}


def make_recipe(target: str) -> list[str]:
    lines = (ROOT / "Makefile").read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"{target}\s*:(?!=)", line))
    recipe = []
    for line in lines[start + 1:]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return recipe


def one_line(text: str) -> str:
    return " ".join(text.replace("\\\n", " ").split())


def test_the_stack_has_redis_postgres_migrate_worker_beat_and_flower(services):
    assert SERVICES <= set(services)


def test_redis_keeps_its_data_with_appendonly(services):
    redis = services["redis"]
    cmd = command(redis)
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    assert any(volume.split(":")[1] == "/data" for volume in redis["volumes"])


def test_redis_never_evicts_queued_messages(services):
    cmd = command(services["redis"])
    assert cmd[cmd.index("--maxmemory-policy") + 1] == "noeviction"


def test_redis_is_healthy_when_it_answers_ping(services):
    assert "redis-cli ping" in " ".join(services["redis"]["healthcheck"]["test"])


def test_postgres_keeps_its_data_in_a_volume(compose, services):
    postgres = services["postgres"]
    named = {volume.split(":")[0]: volume.split(":")[1] for volume in postgres["volumes"]}
    assert "/var/lib/postgresql/data" in named.values()
    assert set(named) <= set(compose["volumes"])
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])


def test_every_long_running_service_has_a_healthcheck_or_waits_for_healthy_services(services):
    for name, service in services.items():
        if service.get("restart") == "no":
            continue
        conditions = waits_for(service)
        gated = bool(conditions) and set(conditions.values()) <= WAITING_CONDITIONS
        assert has_healthcheck(service) or gated, name


def test_migrate_runs_db_upgrade_once_after_postgres_is_healthy(services):
    migrate = services["migrate"]
    assert command(migrate) == ["matomete", "db", "upgrade"]
    assert migrate["restart"] == "no"
    assert waits_for(migrate)["postgres"] == "service_healthy"


def test_worker_runs_matomete_worker_and_can_be_scaled(services):
    worker = services["worker"]
    assert command(worker)[:2] == ["matomete", "worker"]
    assert "container_name" not in worker
    assert worker.get("deploy", {}).get("replicas", 1) >= 1


def test_the_batch_worker_is_an_optional_scalable_service_started_after_the_migration(services):
    batch = services["batch-worker"]
    assert command(batch)[:2] == ["matomete", "batch-worker"]
    assert batch["profiles"] == ["batch"] and "container_name" not in batch
    assert waits_for(batch)["migrate"] == "service_completed_successfully"
    assert "MATOMETE_DATABASE_URL" in batch["environment"]


def test_beat_runs_matomete_beat_in_exactly_one_container(services):
    beat = services["beat"]
    assert command(beat) == ["matomete", "beat"]
    assert "container_name" in beat  # compose refuses to scale a named container


@pytest.mark.parametrize("name", ["worker", "beat"])
def test_workers_and_beat_start_only_after_a_successful_migration(services, name):
    assert waits_for(services[name]) == {
        "redis": "service_healthy",
        "postgres": "service_healthy",
        "migrate": "service_completed_successfully",
    }


@pytest.mark.parametrize("name", ["migrate", "worker", "beat"])
def test_every_matomete_service_is_given_the_settings_it_reads(services, name):
    environment = services[name]["environment"]
    for variable in ["MATOMETE_DATABASE_URL", "MATOMETE_BROKER_URL", "MATOMETE_RESULT_BACKEND",
                     "MATOMETE_EXPORT_DIR", "MATOMETE_SECRET_KEY"]:
        assert variable in environment, variable
    assert "postgresql+psycopg://" in environment["MATOMETE_DATABASE_URL"]


def test_every_variable_the_compose_file_reads_is_in_env_example():
    wanted = set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)",
                            (ROOT / "docker-compose.yml").read_text(encoding="utf-8")))
    example = (ROOT / ".env.example").read_text(encoding="utf-8")
    offered = set(re.findall(r"^([A-Za-z_][A-Za-z0-9_]*)=", example, flags=re.MULTILINE))
    assert wanted and wanted <= offered, wanted - offered
    assert "Fernet.generate_key()" in example


def test_the_image_installs_matomete_and_runs_as_a_non_root_user():
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, flags=re.MULTILINE)
    assert re.search(r"^RUN pip install \.", dockerfile, flags=re.MULTILINE)
    users = re.findall(r"^USER\s+(\S+)", dockerfile, flags=re.MULTILINE)
    assert users and users[-1] not in {"root", "0"}


@pytest.mark.parametrize("script", [".ci/run", "ops/ensure-services.sh"])
def test_the_scripts_are_executable_bash_that_stops_on_errors(script):
    path = ROOT / script
    assert os.access(path, os.X_OK), f"chmod +x {script}"
    text = path.read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text


def test_ensure_services_starts_each_service_with_the_machines_own_command():
    text = one_line((ROOT / "ops/ensure-services.sh").read_text(encoding="utf-8"))
    assert "pg_isready -q -h 127.0.0.1 -p 5432" in text
    assert "redis-cli -h 127.0.0.1 ping" in text
    assert "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start" in text
    assert ('redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" '
            "--appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log") in text


def test_make_test_ensures_the_services_then_runs_pytest():
    recipe = make_recipe("test")
    services_at = next(i for i, line in enumerate(recipe) if "ops/ensure-services.sh" in line)
    pytest_at = next(i for i, line in enumerate(recipe) if "/bin/pytest $(PYTEST_ARGS)" in line)
    assert services_at < pytest_at


def test_make_demo_runs_on_a_throwaway_sqlite_database():
    recipe = " ".join(make_recipe("demo"))
    assert "mktemp -d" in recipe and "rm -rf" in recipe
    assert 'MATOMETE_DATABASE_URL="sqlite:///$$tmp/demo.db"' in recipe
    assert recipe.endswith("matomete\" demo")


def test_ci_runs_make_test_and_refuses_skipped_tests():
    text = (ROOT / ".ci/run").read_text(encoding="utf-8")
    assert re.search(r"^make test PYTEST_ARGS=.*--junitxml=", text, flags=re.MULTILINE)
    assert 'find("skipped")' in text


def default_of(value: str) -> str:
    """``${VAR:-default}`` → ``default``; anything else as it is."""
    match = re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}", str(value))
    return match.group(1) if match else str(value)


def test_the_worker_exposes_its_metrics_port_and_is_healthy_when_it_answers_there(services):
    from workers.metrics import DEFAULT_PORT

    worker = services["worker"]
    port = default_of(worker["environment"]["MATOMETE_METRICS_PORT"])
    assert port == str(DEFAULT_PORT)
    assert [default_of(p) for p in worker["expose"]] == [port]
    assert "/metrics" in " ".join(worker["healthcheck"]["test"]) and "MATOMETE_METRICS_PORT" in " ".join(
        worker["healthcheck"]["test"])


def test_prometheus_scrapes_every_worker_replica_on_that_port_with_the_alert_rules(services):
    yaml = pytest.importorskip("yaml", reason="PyYAML belongs in the [test] extras")
    config = yaml.safe_load((ROOT / "ops/prometheus/prometheus.yml").read_text(encoding="utf-8"))
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "matomete-worker"]
    [sd] = job["dns_sd_configs"]
    serving = sorted(name for name, service in services.items() if "expose" in service
                     and service.get("command", [None, None])[:2] in (["matomete", "worker"], ["matomete", "batch-worker"]))
    assert serving == ["batch-worker", "worker"]  # the batch worker's decisions count too
    assert sorted(sd["names"]) == serving and sd["type"] == "A"
    for name in serving:
        assert str(sd["port"]) == default_of(services[name]["environment"]["MATOMETE_METRICS_PORT"])
    assert config["rule_files"] == ["alerts.yml"]
    prometheus = services["prometheus"]
    assert "./ops/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert prometheus["profiles"] == ["monitoring"]
