"""JSON built inside the database, the same on PostgreSQL and SQLite, so set-based steps (month
close) can write outbox bodies with one ``INSERT … SELECT`` instead of a Python loop per row."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Text, case, cast, func, literal
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.sql import ColumnElement


class SqlJson:
    def __init__(self, dialect_name: str):
        self.pg = dialect_name == "postgresql"

    def obj(self, **fields: Any) -> ColumnElement:
        args: list[Any] = []
        for key, value in fields.items():
            args += [literal(key), value]
        return func.json_build_object(*args) if self.pg else func.json_object(*args)

    def text(self, value: ColumnElement) -> ColumnElement:
        return cast(value, Text)

    def boolean(self, expr: ColumnElement) -> ColumnElement:
        return expr if self.pg else case((expr, func.json("true")), else_=func.json("false"))

    def nested(self, value: ColumnElement) -> ColumnElement:
        """A JSON value from a subquery, embedded as JSON rather than as a string."""
        return value if self.pg else func.json(value)

    def array_agg(self, value: ColumnElement, *order_by: ColumnElement) -> ColumnElement:
        """A JSON array of ``value`` over a group; on SQLite the rows must come ordered."""
        if self.pg:
            return func.json_agg(aggregate_order_by(value, *order_by))
        return func.json_group_array(func.json(value))
