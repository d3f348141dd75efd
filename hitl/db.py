"""SQL that Django's ORM does slowly or not at all, on PostgreSQL and SQLite alike: one
statement for many rows (both accept ``WITH v(...) AS (VALUES ...) UPDATE ... FROM v``), and a
median computed in the database."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from django.db import connection, models


def update_rows(model: type[models.Model], columns: Sequence[str], rows: Sequence[Sequence[Any]],
                constants: dict[str, Any] | None = None, chunk: int = 1000) -> None:
    """``UPDATE`` each row (primary key first, then ``columns``) and set ``constants`` on all.

    Django's ``bulk_update`` builds a CASE per column and row, which is slow past a few hundred
    rows; this is one join against a VALUES list per chunk.
    """
    table = connection.ops.quote_name(model._meta.db_table)
    pk = connection.ops.quote_name(model._meta.pk.column)
    names = ["pk", *columns]
    assignments = [f"{connection.ops.quote_name(c)} = v.{connection.ops.quote_name(c)}" for c in columns]
    constants = constants or {}
    assignments += [f"{connection.ops.quote_name(c)} = %s" for c in constants]
    with connection.cursor() as cursor:
        for start in range(0, len(rows), chunk):
            part = rows[start:start + chunk]
            placeholders = ", ".join("(" + ", ".join(["%s"] * len(names)) + ")" for _ in part)
            cursor.execute(
                f"WITH v({', '.join(connection.ops.quote_name(n) for n in names)}) AS (VALUES {placeholders}) "
                f"UPDATE {table} SET {', '.join(assignments)} FROM v WHERE {table}.{pk} = v.{connection.ops.quote_name('pk')}",
                [value for row in part for value in row] + list(constants.values()),
            )


class Median(models.Aggregate):
    """The median of a numeric expression, NULLs ignored (None when there is none): PostgreSQL's
    ``percentile_cont(0.5)``; on SQLite, the ``MEDIAN`` aggregate `register_sqlite_functions` adds."""

    function = "MEDIAN"
    name = "Median"
    output_field = models.FloatField()

    def as_postgresql(self, compiler, connection, **extra_context):
        return self.as_sql(compiler, connection, template="percentile_cont(0.5) WITHIN GROUP (ORDER BY %(expressions)s)",
                           **extra_context)


class _SqliteMedian:
    def __init__(self) -> None:
        self.values: list[float] = []

    def step(self, value: float | None) -> None:
        if value is not None:
            self.values.append(value)

    def finalize(self) -> float | None:
        return statistics.median(self.values) if self.values else None


def register_sqlite_functions(sender, connection, **kwargs) -> None:
    """On each new SQLite connection (``connection_created``), the aggregates hitl's queries use."""
    if connection.vendor == "sqlite":
        connection.connection.create_aggregate("MEDIAN", 1, _SqliteMedian)
