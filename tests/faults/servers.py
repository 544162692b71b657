"""Processes of the fault suite: servers of its own, and signals to the processes it starts.

* `DedicatedPostgres`: ``initdb`` into a temporary directory (as the ``postgres`` user when run as
  root, through ``runuser``) and ``pg_ctl`` on a free port — never the shared server on 5432,
  which other engineers use at the same time. `stop(mode)` and `start()` are safe in a test.
* `DedicatedRedis`: ``redis-server`` on a free port with ``appendonly yes`` (as docker-compose.yml
  runs it in production) and ``save ""``; `stop()` sends SIGTERM (what ``docker restart`` sends:
  Redis writes its append-only file and exits) and `start()` starts it again on the same files.
* `kill_group` / `stop_group` signal only the process group of a process this suite started;
  `children_of` lists a worker's pool processes.

Nothing here imports matomete.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import psycopg
import redis

from tests.support.processes import group_alive, kill_group, stop_group, tail  # noqa: F401 — re-exported
from tests.support.services import WaitTimeout, wait_until

__all__ = ["PG_BIN", "DedicatedPostgres", "DedicatedRedis", "children_of", "kill_group", "run",
           "stop_group"]

PG_BIN = Path(os.environ.get("MATOMETE_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
RUN_TIMEOUT = 120


# ---- processes -----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(cmd: list[str]) -> list[str]:
    """Run PostgreSQL's tools as ``postgres`` when we are root (initdb refuses root)."""
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


def run(cmd: list[str], *, timeout: float = RUN_TIMEOUT, **kw: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}\n{done.stdout}\n{done.stderr}")
    return done


def children_of(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (a worker's pool processes), from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        if ppid == pid:
            found.append(int(entry.name))
    return found


# ---- dedicated servers ------------------------------------------------------------------------------

class DedicatedPostgres:
    """A PostgreSQL cluster of this test session only, in a temporary directory, on a free port."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="matomete-faults-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
        run(_as_postgres([str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                           "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"]))

    def start(self) -> None:
        # fsync off: a crash of the *server process* loses nothing (the OS still has the pages);
        # only a crash of the machine would, and no test crashes the machine.
        opts = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off "
                f"-c full_page_writes=off -c max_connections=200")
        run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.log),
                           "-w", "-t", "60", "start"]))

    def stop(self, mode: str = "fast") -> None:
        """``fast``: a clean shutdown that ends every session; ``immediate``: as if it crashed."""
        run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop"]))

    def is_up(self) -> bool:
        return subprocess.run([str(PG_BIN / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
                              check=False).returncode == 0

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "faults") -> str:
        name = f"{prefix}_{secrets.token_hex(4)}"
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def destroy(self) -> None:
        if self.is_up():
            try:
                self.stop("immediate")
            except RuntimeError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)


class DedicatedRedis:
    """A redis-server of this test session only, on a free port, with an append-only file."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="matomete-faults-redis-"))
        self.port = free_port()
        self.pidfile = self.root / "redis.pid"
        self.log = self.root / "redis.log"
        self._next_db = 0

    def start(self) -> None:
        run(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
              "--appendonly", "yes", "--appendfsync", "everysec", "--maxmemory-policy", "noeviction",
              "--databases", "64", "--dir", str(self.root), "--pidfile", str(self.pidfile),
              "--logfile", str(self.log), "--daemonize", "yes"])
        wait_until(self.is_up, timeout=30, interval=0.1, message="the dedicated Redis to answer")

    def pid(self) -> int:
        return int(self.pidfile.read_text().strip())

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM: Redis flushes its append-only file and exits, as under ``docker restart``."""
        pid = self.pid()
        os.kill(pid, sig)

        def gone() -> bool:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            return False
        wait_until(gone, timeout=30, interval=0.05, message="the dedicated Redis to exit")

    def is_up(self) -> bool:
        try:
            with redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1, socket_connect_timeout=1) as r:
                return bool(r.ping())
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
            return False

    def url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def fresh_db(self) -> str:
        """A database number no earlier test of this session used, flushed."""
        self._next_db += 1
        url = self.url(self._next_db)
        with redis.Redis.from_url(url) as r:
            r.flushdb()
        return url

    def destroy(self) -> None:
        try:
            self.stop(signal.SIGKILL)
        except (OSError, ValueError, WaitTimeout):
            pass
        shutil.rmtree(self.root, ignore_errors=True)
