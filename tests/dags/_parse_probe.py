"""Parses every DAG file with a DagBag while recording what parsing touched: sockets opened,
SQL statements run against the metadata database, heavy modules imported. Prints one JSON line.
Run in a fresh interpreter so that sys.modules reflects the DAG files alone."""

from __future__ import annotations

import json
import socket
import sys

attempts: list[str] = []
_orig_connect = socket.socket.connect


def _refuse(self, address):  # type: ignore[no-untyped-def]
    attempts.append(repr(address))
    raise OSError("network access while parsing a DAG file")


socket.socket.connect = _refuse  # type: ignore[method-assign]

from sqlalchemy import event  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402

queries: list[str] = []


@event.listens_for(Engine, "before_cursor_execute")
def _count(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]
    queries.append(statement[:200])


from airflow.dag_processing.dagbag import DagBag  # noqa: E402
from airflow.sdk import BaseHook  # noqa: E402

conn_lookups: list[str] = []
_orig_get = BaseHook.get_connection


def _get_connection(conn_id, *a, **k):  # type: ignore[no-untyped-def]
    conn_lookups.append(conn_id)
    raise RuntimeError("connection looked up while parsing")


BaseHook.get_connection = _get_connection  # type: ignore[method-assign]
heavy_before = {m for m in ("pandas", "great_expectations", "cassandra", "psycopg", "boto3") if m in sys.modules}
bag = DagBag(dag_folder=sys.argv[1])
heavy = sorted(m for m in ("pandas", "great_expectations", "cassandra", "psycopg", "boto3")
               if m in sys.modules and m not in heavy_before)
print(json.dumps({
    "dag_ids": sorted(bag.dag_ids),
    "import_errors": {k: str(v)[-2000:] for k, v in bag.import_errors.items()},
    "sockets": attempts,
    "queries": queries,
    "connections": conn_lookups,
    "heavy_imports": heavy,
}))
