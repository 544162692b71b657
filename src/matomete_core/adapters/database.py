"""Engines and the few places where PostgreSQL and SQLite differ.

PostgreSQL runs at READ COMMITTED: a decision serializes on its line with ``SELECT … FOR UPDATE``
and on its order with a transaction-scoped advisory lock. SQLite (the embedded default) takes the
write lock at ``BEGIN IMMEDIATE``, so its transactions are serial and the locks are no-ops.
"""

from __future__ import annotations

import hashlib
from contextlib import nullcontext
from datetime import datetime
from functools import lru_cache
from typing import Any, Mapping

import orjson
from psycopg.pq import ExecStatus, TransactionStatus
from psycopg.rows import namedtuple_row
from sqlalchemy import (
    BindParameter, ColumnElement, Connection, Dialect, Engine, Executable, Select, Table, TextClause, any_, bindparam,
    create_engine, event, insert, select, text)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from matomete_core.adapters.tables import lines

__all__ = ["make_engine", "commit_empty", "pipelined", "insert_ignore", "insert_rows", "inserting", "list_param",
           "among", "upsert", "lock_line", "locking_line", "lock_order", "locking_order", "locking_keys",
           "is_transient", "share_month", "seize_month", "try_close_lock", "release_close_lock"]


def make_engine(url: str, **kwargs: Any) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # noqa: ANN001
            dbapi_conn.isolation_level = None  # let SQLAlchemy's begin event issue BEGIN
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            if ":memory:" not in url:
                cur.execute("PRAGMA journal_mode=WAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin_immediate(conn):  # noqa: ANN001
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    # No pool_pre_ping: it costs a round trip on every checkout, i.e. on every decision. After a
    # server restart the first statement on a stale connection fails as a disconnect, which
    # invalidates the whole pool and is transient — the task retries it (workers.tasks.decide).
    return create_engine(url, **kwargs)


def commit_empty(engine: Engine) -> int | None:
    """Commit one transaction that writes nothing but its commit record: the cost of a durable
    commit on its own (ops/bench/decisions.py), and a probe that the database takes commits. On
    PostgreSQL it takes a transaction id, so its commit is flushed to the WAL like a decision's,
    and returns that id (None on SQLite)."""
    with engine.begin() as conn:
        return int(conn.execute(_TAKE_XID).scalar_one()) if conn.dialect.name == "postgresql" else None


_TAKE_XID = text("SELECT pg_current_xact_id()")


def pipelined(conn: Connection, *statements: tuple[Executable, Any]) -> list[list[Any]]:
    """Run ``statements`` (each with its parameters: a dict; elsewhere than PostgreSQL also a list of
    dicts, an executemany) in order, in ``conn``'s transaction, and return the rows of each (an empty
    list for a statement that returns none).

    On PostgreSQL they go in one round trip (psycopg's pipeline mode), straight to psycopg: a
    decision waits for the server once for its lock and the reads under it, not once for each, and
    skips SQLAlchemy's execution path, which cost more CPU than the round trips themselves (six
    ``SELECT 1`` in a transaction: 0.4–0.5 ms of client CPU pipelined, 1.0–1.1 ms one by one). The
    server still runs each statement on its own, in order, each with its own snapshot at READ
    COMMITTED: a read sent after a lock sees what the lock's previous holder committed. If one
    fails, the rest are not run and the error is raised as SQLAlchemy would raise it (a lost
    connection invalidates ``conn``), so ``is_transient`` and rollback treat it alike. Rows are named
    tuples, without SQLAlchemy's result processing: for statements whose columns psycopg returns as
    they are. Each statement is compiled once and kept: pass statements built once, not anew for
    each call. Elsewhere, one after another through SQLAlchemy."""
    if conn.dialect.name != "postgresql" or not statements:  # an empty pipeline still waits for its sync
        return [_rows(conn.execute(stmt, params)) for stmt, params in statements]
    if not conn.in_transaction():  # as SQLAlchemy's autobegin: the caller's conn.commit() commits this work
        conn.begin()
    raw = conn.connection.driver_connection
    cursors = []
    try:
        # one statement inside a transaction is one round trip as it is: no pipeline to set up and sync
        alone = len(statements) == 1 and raw.info.transaction_status == _IN_TRANSACTION
        with nullcontext() if alone else raw.pipeline():
            for stmt, params in statements:
                sql, processors = _for_psycopg(stmt, conn.dialect, tuple(params) if stmt.is_dml else ())
                cursor = raw.cursor(row_factory=namedtuple_row)
                cursor.execute(sql.string, _bound(sql, processors, params))
                cursors.append(cursor)
        return [cursor.fetchall() if _returns_rows(cursor) else [] for cursor in cursors]
    except conn.dialect.loaded_dbapi.Error as exc:
        lost = conn.dialect.is_disconnect(exc, raw, None)
        if lost:
            conn.invalidate(exc)
        raise DBAPIError.instance(None, None, exc, conn.dialect.loaded_dbapi.Error, connection_invalidated=lost,
                                  dialect=conn.dialect) from exc


_IN_TRANSACTION = TransactionStatus.INTRANS


def _returns_rows(cursor) -> bool:  # noqa: ANN001
    """Whether the statement returned rows — from its result's status, as psycopg's ``description``
    decides, without building the column objects it would for each call (a hot path)."""
    result = cursor.pgresult
    return result is not None and result.status == ExecStatus.TUPLES_OK


def _rows(result) -> list[Any]:  # noqa: ANN001
    return result.all() if result.returns_rows else []


@lru_cache(maxsize=128)
def _for_psycopg(stmt: Executable, dialect: Dialect, columns: tuple[str, ...]):  # noqa: ANN202 — built once: a hot path
    """The statement compiled for psycopg — an INSERT or UPDATE for the ``columns`` given, as
    SQLAlchemy compiles it for its parameters, so that a column not given keeps its server default.
    A Python-side default SQLAlchemy would fill in its execution path, which this one skips: refused."""
    if stmt.is_dml:
        unfilled = [c.key for c in stmt.table.columns if c.key not in columns and any(
            d is not None and (d.is_scalar or d.is_callable) for d in (c.default, c.onupdate))]
        if unfilled:
            raise TypeError(f"pipelined does not apply Python-side defaults: give {', '.join(unfilled)}")
    compiled = stmt.compile(dialect=dialect, column_keys=list(columns) or None)
    processors = {name: process for bind, name in compiled.bind_names.items()
                  if (process := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None}
    return compiled, processors


def _bound(compiled, processors: dict[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:  # noqa: ANN001
    values = compiled.construct_params(dict(params))
    for name, process in processors.items():
        if values.get(name) is not None:
            values[name] = process(values[name])
    return values


@lru_cache(maxsize=64)
def _insert_ignore(dialect_name: str, table):  # noqa: ANN001, ANN202 — built once per table: a hot path
    dialect = postgresql if dialect_name == "postgresql" else sqlite
    return dialect.insert(table).on_conflict_do_nothing().returning(*table.primary_key.columns)


def insert_ignore(conn: Connection, table, **values: Any):  # noqa: ANN001
    """INSERT … ON CONFLICT DO NOTHING; returns the inserted primary key, or None on conflict."""
    [rows] = pipelined(conn, (_insert_ignore(conn.dialect.name, table), values))
    return rows[0][0] if rows else None


@lru_cache(maxsize=2)
def _line_row(locking: bool):  # noqa: ANN202
    stmt = select(lines).where(lines.c.customer_id == bindparam("customer_id"))
    return stmt.with_for_update() if locking else stmt


def lock_line(conn: Connection, customer_id: str):  # noqa: ANN201
    """Lock the line row for this transaction and return it (None if unknown)."""
    return conn.execute(*locking_line(conn.dialect.name, customer_id)).mappings().first()


def locking_line(dialect_name: str, customer_id: str) -> tuple[Select, dict[str, str]]:
    """lock_line's statement, to run with the reads it protects (``pipelined``)."""
    return _line_row(dialect_name == "postgresql"), {"customer_id": customer_id}


def lock_order(conn: Connection, provider_id: str, order_id: str, *, share_month: str | None = None) -> None:
    """Serialize the purchase and the cancels of one provider order, known yet or not; with
    ``share_month``, also hold that month shared (see share_month) — one round trip for both."""
    pipelined(conn, *locking_order(conn.dialect.name, provider_id, order_id, share_month=share_month))


def locking_order(dialect_name: str, provider_id: str, order_id: str, *,
                  share_month: str | None = None) -> list[tuple[TextClause, dict[str, int]]]:
    """lock_order's statement, to run with the reads it protects (``pipelined``); none but on PostgreSQL."""
    if dialect_name != "postgresql":
        return []
    order = _order_key(provider_id, order_id)
    if share_month is None:
        return [(_LOCK_ORDER, {"k": order})]
    return [(_LOCK_ORDER_AND_MONTH, {"k": order, "m": _month_key(share_month)})]


_LOCK_ORDER = text("SELECT pg_advisory_xact_lock(:k) AS ordered")
_LOCK_ORDER_AND_MONTH = text("SELECT pg_advisory_xact_lock(:k) AS ordered, pg_advisory_xact_lock_shared(:m) AS shared")


def locking_keys(dialect_name: str, *, orders: list[tuple[str, str]],
                 shared_months: set[str]) -> list[tuple[TextClause, dict[str, Any]]]:
    """lock_order for many orders and share_month for many months, in one statement and in a fixed
    order (by key), so that two batches taking overlapping sets cannot deadlock: the statement, to
    run with the reads those locks protect (``pipelined``); none but on PostgreSQL."""
    if dialect_name != "postgresql":
        return []
    exclusive = sorted({_order_key(p, o) for p, o in orders})
    shared = sorted({_month_key(m) for m in shared_months})
    return [(_LOCK_KEYS, {"x": exclusive, "s": shared})]


_LOCK_KEYS = text("SELECT (SELECT count(pg_advisory_xact_lock(k)) FROM unnest(CAST(:x AS bigint[])) AS k) AS orders,"
                  " (SELECT count(pg_advisory_xact_lock_shared(k)) FROM unnest(CAST(:s AS bigint[])) AS k) AS months")


def is_transient(exc: BaseException) -> bool:
    """A database error worth retrying: connection lost, server restarting, serialization."""
    if isinstance(exc, (OperationalError, InterfaceError)):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return False


def upsert(conn: Connection, table, rows: list[dict[str, Any]], keys: list[str],  # noqa: ANN001
           insert_only: frozenset[str] = frozenset()) -> None:
    """INSERT … ON CONFLICT (keys) DO UPDATE every other given column but ``insert_only`` ones."""
    if not rows:
        return
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(table)
    update_cols = {c: getattr(stmt.excluded, c) for c in rows[0] if c not in keys and c not in insert_only}
    stmt = stmt.on_conflict_do_update(index_elements=keys, set_=update_cols) if update_cols \
        else stmt.on_conflict_do_nothing(index_elements=keys)
    conn.execute(stmt, rows)


def insert_rows(conn: Connection, table: Table, rows: list[dict[str, Any]],
                returning: tuple[str, ...] = ()) -> list[Any]:
    """INSERT ``rows`` (dicts with the same keys) in one statement; the ``returning`` columns of
    the rows inserted, in no particular order."""
    done = pipelined(conn, *inserting(conn.dialect.name, table, rows, returning))
    return done[0] if done else []


def inserting(dialect_name: str, table: Table, rows: list[dict[str, Any]],
              returning: tuple[str, ...] = ()) -> list[tuple[Executable, Any]]:
    """insert_rows' statement, to run with others (``pipelined``); none for no rows.

    On PostgreSQL the rows travel as one JSON document (``json_populate_recordset``): the same short
    statement for any number of rows, with one parameter, which orjson encodes (a quarter of the
    time ``json.dumps`` took, measured) and PostgreSQL parses in C. A multi-row VALUES list is a
    new statement for every row count, with a parameter per value, and parsing and binding it cost
    the batch worker a fifth of its time. Elsewhere, an executemany."""
    if not rows:
        return []
    columns = tuple(rows[0])
    if dialect_name == "postgresql":
        return [(_rows_from_json(table, columns, returning),
                 {"rows": orjson.dumps(rows, default=_iso, option=orjson.OPT_PASSTHROUGH_DATETIME).decode()})]
    stmt = insert(table)
    return [(stmt.returning(*[table.c[c] for c in returning]) if returning else stmt, rows)]


@lru_cache(maxsize=64)
def _rows_from_json(table: Table, columns: tuple[str, ...], returning: tuple[str, ...]) -> TextClause:
    listed = ", ".join(columns)
    back = f" RETURNING {', '.join(returning)}" if returning else ""
    return text(f"INSERT INTO {table.name} ({listed}) SELECT {listed} "  # noqa: S608 — our own table and columns
                f"FROM json_populate_recordset(NULL::{table.name}, CAST(:rows AS json)){back}")


def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("naive datetime: every stored time is aware")
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def list_param(name: str, type_: Any, *, arrays: bool) -> BindParameter:
    """A list bound as one parameter: a PostgreSQL array (``arrays``), so the statement stays the
    same whatever the list's length (see insert_rows), or elsewhere an expanding IN list."""
    return bindparam(name, type_=postgresql.ARRAY(type_)) if arrays else bindparam(name, expanding=True)


def among(column: Any, values: BindParameter) -> ColumnElement[bool]:
    """``column IN values`` for a ``list_param``."""
    return column == any_(values) if isinstance(values.type, postgresql.ARRAY) else column.in_(values)


def _key(text_: str) -> int:
    return int.from_bytes(hashlib.blake2b(text_.encode(), digest_size=8).digest(), "big", signed=True)


def _order_key(provider_id: str, order_id: str) -> int:
    return _key(f"order:{provider_id}\x00{order_id}")


def _month_key(month: str) -> int:
    return _key(f"month:{month}")


def share_month(conn: Connection, month: str) -> None:
    """A decision billing into ``month`` holds it shared, so month close waits for it to commit."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock_shared(:k)"), {"k": _month_key(month)})


def seize_month(conn: Connection, month: str) -> None:
    """Month close marks ``month`` closing under an exclusive hold: in-flight decisions finish first."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _month_key(month)})


def try_close_lock(conn: Connection) -> bool:
    """One month close at a time, whoever starts it (two beats, an operator): a session lock."""
    if conn.dialect.name != "postgresql":
        return True
    return bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": _key("month-close")}).scalar())


def release_close_lock(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _key("month-close")})
