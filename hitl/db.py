"""Set-based SQL that Django's ORM does slowly: one statement for many rows, on PostgreSQL and
SQLite alike (both accept ``WITH v(...) AS (VALUES ...) UPDATE ... FROM v``)."""

from __future__ import annotations

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
