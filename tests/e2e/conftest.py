"""The e2e tier: a real `matomete` deployment driven only through its command line and its queues.

The session fixture ``system`` does what an operator would: a fresh PostgreSQL database, a fresh
Redis database, a Fernet key and an export directory in the environment; ``matomete db upgrade``,
``matomete catalog load``, ``matomete lines load``; then ``matomete worker`` (and ``matomete beat``,
which CONTRACT.md makes responsible for the outbox relay; set ``MATOMETE_E2E_BEAT=0`` to skip it).
It talks to the system with a bare Celery client and a bare kombu connection. Nothing here imports
matomete.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import kombu
import pytest
from celery import Celery
from cryptography.fernet import Fernet

from tests.support.processes import matomete_bin, stop_group, tail
from tests.support.services import (
    WaitTimeout, drop_pg_database, fresh_pg_database, fresh_redis_db, release_redis_db, wait_until,
)

JST = timezone(timedelta(hours=9), "JST")  # Japan has no DST: a fixed offset is exact
CLI_TIMEOUT = 120
WORKER_START_TIMEOUT = 60
STOP_GRACE = 20
RESULT_TIMEOUT = 30
OUTBOUND_TIMEOUT = 60

PROVIDER_SECRETS = {"PA": "s3cret-A", "PB": "s3cret-B"}
MAIN_LINE = "CAF0000012573"
MAIN_BILLING_ACCOUNT = "06-1234-5678"

CATALOG = {"providers": [
    {"provider_id": "PA", "name": "A社", "signing_secret": PROVIDER_SECRETS["PA"],
     "contact": {"url": "https://a.example/help", "phone": "0120-000-000", "hours": "9:00-17:00"},
     "contents": [
         {"content_id": "pack", "name": "パックサービス", "price_type": "monthly_flat",
          "unit_price": 525, "term_months": None}]},
    {"provider_id": "PB", "name": "B社", "signing_secret": PROVIDER_SECRETS["PB"],
     "contact": {"url": "https://b.example/support", "phone": "0120-111-111", "hours": "10:00-18:00"},
     "contents": [
         {"content_id": "anime1", "name": "名作アニメ1", "price_type": "monthly_flat",
          "unit_price": 300, "term_months": None},
         {"content_id": "anime2", "name": "名作アニメ2", "price_type": "monthly_flat",
          "unit_price": 300, "term_months": None},
         {"content_id": "coin", "name": "コイン", "price_type": "per_use",
          "unit_price": 100, "term_months": None}]},
]}


def _passport(pid: str, *, status: str = "registered", limit: int | None = None) -> dict[str, Any]:
    return {"passport_id": pid, "status": status, "limit": limit, "restricted": False,
            "registered_at": "2019-04-01T10:00:00+09:00"}


# user01..user10 each serve one test, so tests sharing this deployment do not disturb each other.
# The line limit is well above what the whole module spends (a few thousand yen) and under the
# 50,000 yen maximum; only user02 has its own limit.
LINES = {"lines": [
    {"customer_id": MAIN_LINE, "access_service": "hikari_next", "access_key": "ABCD1234",
     "billing_account": MAIN_BILLING_ACCOUNT, "omatome_representative": None, "line_limit": 30000,
     "restricted": False,
     "passport_ids": [_passport("user01"), _passport("user02", limit=1000)]
                     + [_passport(f"user{n:02d}") for n in range(3, 11)]},
    {"customer_id": "CAF0000099999", "access_service": "hikari_premium", "access_key": "PREM9999",
     "billing_account": "03-9999-0000", "omatome_representative": None, "line_limit": 10000,
     "restricted": False, "passport_ids": [_passport("prem01")]},
    {"customer_id": "CAF0000077777", "access_service": "hikari_light", "access_key": "LITE7777",
     "billing_account": "06-7777-0000", "omatome_representative": None, "line_limit": 10000,
     "restricted": False,
     # registration was started before the December 2024 cut-off and never finished
     "passport_ids": [{**_passport("newbie01", status="registering"),
                       "registered_at": "2024-11-20T10:00:00+09:00"}]},
]}


# ---- pure helpers -----------------------------------------------------------------------------

def canonical(message: dict[str, Any]) -> bytes:
    """The bytes a provider signs: the message without `signature`, CONTRACT.md's serialization."""
    body = {k: v for k, v in message.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sign(message: dict[str, Any], secret: str) -> dict[str, Any]:
    """A copy of `message` carrying its HMAC-SHA256 `signature` (lowercase hex)."""
    digest = hmac.new(secret.encode("utf-8"), canonical(message), hashlib.sha256).hexdigest()
    return {**message, "signature": digest}


def occurred_at(minutes_ago: float = 1.0) -> str:
    """An RFC 3339 time with +09:00, `minutes_ago` before now but never before this JST month began."""
    now = datetime.now(JST)
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return max(now - timedelta(minutes=minutes_ago), month_start).isoformat(timespec="seconds")


def month_of(timestamp: str) -> str:
    """The JST billing month (YYYY-MM) of an RFC 3339 time."""
    return datetime.fromisoformat(timestamp).astimezone(JST).strftime("%Y-%m")


def date_of(timestamp: str) -> str:
    """The JST calendar date (YYYY-MM-DD) of an RFC 3339 time."""
    return datetime.fromisoformat(timestamp).astimezone(JST).date().isoformat()


# ---- outbound queues --------------------------------------------------------------------------

@dataclass
class Outbox:
    """Reads outbound queues with kombu and remembers every body, so tests sharing a queue
    (``billing-records``) never take each other's messages. Bodies are decoded JSON."""

    broker_url: str
    seen: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def drain(self, queue: str) -> list[dict[str, Any]]:
        """Take everything now waiting on `queue`; return the new bodies (all are also kept in `seen`)."""
        new: list[dict[str, Any]] = []
        with kombu.Connection(self.broker_url, connect_timeout=10) as conn:
            bound = kombu.Queue(queue, durable=True)(conn.default_channel)
            while True:
                message = bound.get(no_ack=False, accept=["json"])
                if message is None:
                    break
                new.append(self._body(message))
                message.ack()
        self.seen.setdefault(queue, []).extend(new)
        return new

    @staticmethod
    def _body(message: kombu.Message) -> dict[str, Any]:
        try:
            body = message.decode()
        except Exception:  # not declared as JSON: decode the raw body ourselves
            body = message.body
        if isinstance(body, bytes):
            body = body.decode("utf-8")
        if isinstance(body, str):
            body = json.loads(body)
        return body

    def matching(self, queue: str, predicate: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        """Bodies seen so far on `queue` that satisfy `predicate`, one per `event_id` (delivery is
        at least once)."""
        by_event: dict[Any, dict[str, Any]] = {}
        for index, body in enumerate(self.seen.get(queue, [])):
            if predicate(body):
                by_event.setdefault(body.get("event_id", ("no-event-id", index)), body)
        return list(by_event.values())

    def wait_for(self, queue: str, predicate: Callable[[dict[str, Any]], bool], count: int = 1,
                 timeout: float = OUTBOUND_TIMEOUT) -> list[dict[str, Any]]:
        """Drain `queue` until at least `count` distinct bodies satisfy `predicate`; return them."""
        def enough() -> list[dict[str, Any]] | None:
            self.drain(queue)
            found = self.matching(queue, predicate)
            return found if len(found) >= count else None
        try:
            return wait_until(enough, timeout=timeout, interval=0.25)
        except WaitTimeout:
            raise AssertionError(
                f"fewer than {count} matching bodies on {queue!r} after {timeout:g} s; "
                f"seen there: {json.dumps(self.seen.get(queue, []), ensure_ascii=False)[:3000]}") from None

    def settle(self, queue: str, seconds: float = 5.0) -> None:
        """Keep draining `queue` for `seconds`, to catch anything that should *not* arrive."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.drain(queue)
            time.sleep(0.25)
        self.drain(queue)


# ---- the running system -----------------------------------------------------------------------

@dataclass
class System:
    """A running deployment: its environment, its CLI, a bare Celery client, its outbound queues."""

    env: dict[str, str]
    workdir: Path
    matomete: str
    client: Celery
    outbox: Outbox
    logs: dict[str, Path] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    # inbound
    def send(self, task_name: str, queue: str, message: Any, timeout: float = RESULT_TIMEOUT) -> dict[str, Any]:
        """Send one inbound message as a Celery task and wait for its decision."""
        result = self.client.send_task(task_name, args=[message], queue=queue)
        try:
            return result.get(timeout=timeout)
        except Exception as exc:
            raise AssertionError(f"{task_name} on {queue!r}: no decision ({exc!r})\n"
                                 f"{self.log_tails()}") from exc

    # time, as the tests need it
    occurred_at = staticmethod(occurred_at)
    month_of = staticmethod(month_of)
    date_of = staticmethod(date_of)

    @staticmethod
    def sign(message: dict[str, Any], secret: str | None = None) -> dict[str, Any]:
        """Sign with `secret`, or with the catalog's secret of the message's provider."""
        return sign(message, secret if secret is not None else PROVIDER_SECRETS[message["provider_id"]])

    # command line
    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([self.matomete, *args], env=self.env, cwd=self.workdir,
                              capture_output=True, text=True, timeout=CLI_TIMEOUT)
        if check and done.returncode != 0:
            raise AssertionError(f"`matomete {' '.join(args)}` exited {done.returncode}\n"
                                 f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}")
        return done

    def load_line(self, customer_id: str, *, access_key: str, billing_account: str, passport_ids: list[str],
                  line_limit: int = 10000) -> None:
        """One more line, with registered Passport IDs, for tests of their own (`matomete lines load`)."""
        doc = {"lines": [{"customer_id": customer_id, "access_service": "hikari_next", "access_key": access_key,
                          "billing_account": billing_account, "omatome_representative": None,
                          "line_limit": line_limit, "restricted": False,
                          "passport_ids": [_passport(pid) for pid in passport_ids]}]}
        path = self.workdir / f"line-{customer_id}.json"
        path.write_text(json.dumps(doc), encoding="utf-8")
        self.cli("lines", "load", str(path))

    def cli_json(self, *args: str) -> Any:
        done = self.cli(*args, "--json")
        try:
            return json.loads(done.stdout)
        except json.JSONDecodeError as exc:
            raise AssertionError(f"`matomete {' '.join(args)} --json` printed no JSON document: {exc}\n"
                                 f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}") from exc

    def log_tails(self, lines: int = 80) -> str:
        return "\n".join(f"---- {name} log ({path}), last {lines} lines ----\n{tail(path, lines)}"
                         for name, path in self.logs.items())


def _start(system: System, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    log = system.workdir / f"{name}.log"
    system.logs[name] = log
    with log.open("ab") as out:
        proc = subprocess.Popen([system.matomete, *args], env={**system.env, **(env or {})}, cwd=system.workdir,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # its own process group: see _stop
    system.processes[name] = proc
    return proc


def _environment(database_url: str, broker_url: str, export_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MATOMETE_") or k.startswith("MATOMETE_TEST_")}
    env.update({
        "MATOMETE_DATABASE_URL": database_url,
        "MATOMETE_BROKER_URL": broker_url,
        "MATOMETE_RESULT_BACKEND": broker_url,
        "MATOMETE_SECRET_KEY": Fernet.generate_key().decode("ascii"),
        "MATOMETE_EXPORT_DIR": str(export_dir),
        "PYTHONUNBUFFERED": "1",
        "MATOMETE_METRICS_PORT": str(_free_port()),  # never the default 9808 another run may hold
    })
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bare_client(broker_url: str, backend_url: str) -> Celery:
    client = Celery("matomete-e2e-client", broker=broker_url, backend=backend_url, set_as_current=False)
    client.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json",
                       broker_connection_retry_on_startup=True)
    return client


_RUNNING: list[System] = []  # for the failure report hook below


@contextmanager
def deployment(tmp_path_factory: pytest.TempPathFactory, mode: str = "task",
               env: dict[str, str] | None = None) -> Iterator[System]:
    """A fresh database and Redis DB, loaded, with beat and the workers of ``mode``: `task` — one
    `matomete worker` on every queue; `batch` — `matomete batch-worker` on provider-events and a
    `matomete worker -X provider-events` for the rest (README, "Micro-batches")."""
    workdir = tmp_path_factory.mktemp(f"matomete-e2e-{mode}")
    export_dir = workdir / "exports"
    export_dir.mkdir()
    database_url = fresh_pg_database("matomete_e2e")
    broker_url = fresh_redis_db()
    client = _bare_client(broker_url, broker_url)
    env = {**_environment(database_url, broker_url, export_dir), **(env or {})}
    system = System(env=env, workdir=workdir, matomete=matomete_bin(), client=client,
                    outbox=Outbox(broker_url))
    (workdir / "catalog.json").write_text(json.dumps(CATALOG, ensure_ascii=False, indent=2), encoding="utf-8")
    (workdir / "lines.json").write_text(json.dumps(LINES, ensure_ascii=False, indent=2), encoding="utf-8")
    (workdir / "env.sh").write_text(  # to reproduce by hand; the secret key is a throwaway
        "".join(f"export {k}={v!r}\n" for k, v in sorted(env.items()) if k.startswith("MATOMETE_")),
        encoding="utf-8")
    _RUNNING.append(system)
    try:
        system.cli("db", "upgrade")
        system.cli("catalog", "load", str(workdir / "catalog.json"))
        system.cli("lines", "load", str(workdir / "lines.json"))

        if mode == "batch":
            _start(system, "batch-worker", "batch-worker", "--loglevel=INFO", "--size=50", "--concurrency=2")
            _start(system, "worker", "worker", "--loglevel=INFO", "--concurrency=2", "-X", "provider-events",
                   env={"MATOMETE_METRICS_PORT": str(_free_port())})
        else:
            _start(system, "worker", "worker", "--loglevel=INFO", "--concurrency=2")
        if os.environ.get("MATOMETE_E2E_BEAT", "1") != "0":
            _start(system, "beat", "beat")

        def answers_ping() -> bool:
            for name, proc in system.processes.items():
                if proc.poll() is not None:
                    raise AssertionError(f"`matomete {name}` exited {proc.returncode} while starting\n"
                                         f"{system.log_tails()}")
            return bool(client.control.ping(timeout=1))
        try:
            wait_until(answers_ping, timeout=WORKER_START_TIMEOUT, interval=0.5,
                       message="the worker to answer a ping")
        except WaitTimeout as exc:
            raise AssertionError(f"{exc}\n{system.log_tails()}") from None
        yield system
    finally:
        _RUNNING.remove(system)
        for proc in reversed(list(system.processes.values())):
            stop_group(proc, STOP_GRACE)
        client.close()
        drop_pg_database(database_url)
        release_redis_db(broker_url)


@pytest.fixture(scope="session")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with deployment(tmp_path_factory) as running:
        yield running


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """On a failure, attach the tails of the worker's and beat's logs to the report."""
    report = yield
    if report.failed and _RUNNING:
        report.sections.append(("matomete process logs", _RUNNING[-1].log_tails()))
    return report
