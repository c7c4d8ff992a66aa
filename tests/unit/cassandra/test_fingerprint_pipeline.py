"""``fingerprint_chunks``' order of work: the largest table is read first, and a table's partitions
are settled (re-checks, cell-by-cell re-reads) on a worker while the next table is read. Reads and
settling are faked at their seams; what is tested is the overlap, the order, and that the report
keeps the caller's chunk order."""

from __future__ import annotations

import threading
from datetime import date
from types import SimpleNamespace
from typing import Any

import pytest

from tenant_migration.cassandra import fingerprint
from tenant_migration.cassandra.copy import TableShape
from tenant_migration.ledger import Chunk

DAY = date(2026, 11, 26)
SHAPES = {
    "datapoints": TableShape("telemetry", "datapoints", ("device_id", "property_id", "day"), ("ts",), ("value",)),
    "latest_values": TableShape("telemetry", "latest_values", ("device_id",), ("property_id",), ("value",)),
}
TMAP = SimpleNamespace(keyspace="telemetry", cassandra_tables={
    "datapoints": SimpleNamespace(day_column="day"), "latest_values": SimpleNamespace(day_column=None)})
CHUNKS = [  # the small table first: the reads must still begin with the large one
    Chunk("cql:latest_values:0000", "cassandra", "latest_values", {"bases": [[1], [2]], "days": []}),
    Chunk("cql:datapoints:0001", "cassandra", "datapoints",
          {"bases": [[1, 10], [1, 11], [2, 20]], "days": [DAY.isoformat()]}),
]


@pytest.fixture
def faked(monkeypatch) -> dict[str, Any]:
    state: dict[str, Any] = {"reads": [], "settled": [], "small_read": threading.Event()}
    monkeypatch.setattr(fingerprint, "table_shape", lambda session, keyspace, table: SHAPES[table])
    monkeypatch.setattr(fingerprint, "_scan_target", lambda *a, **k: {})

    def read(session: Any, shape: TableShape, groups: Any, opts: Any = None, spellings: Any = None) -> dict[Any, Any]:
        state["reads"].append(shape.table)
        if shape.table == "latest_values":
            state["small_read"].set()
        return {}

    def settle(source: Any, target: Any, shape: TableShape, a: Any, b: Any, opts: Any, wt: Any) -> tuple[Any, Any]:
        if shape.table == "datapoints":
            # Settling the large table waits for the next table's read: without the worker this
            # would wait for itself.
            assert state["small_read"].wait(5), "the next table was not read while this one was settled"
        state["settled"].append(shape.table)
        return {}, {}

    monkeypatch.setattr(fingerprint, "aggregate_prints", read)
    monkeypatch.setattr(fingerprint, "_settle", settle)
    return state


def test_the_largest_table_is_read_first_and_settled_while_the_next_is_read(faked) -> None:
    report = fingerprint.fingerprint_chunks("source", "target", TMAP, CHUNKS, scan_target=True)
    assert faked["reads"] == ["datapoints", "latest_values"]
    assert faked["settled"] == ["datapoints", "latest_values"]
    assert [c.chunk_id for c in report.chunks] == [c.chunk_id for c in CHUNKS]
    assert report.match


def test_an_error_while_settling_reaches_the_caller(faked, monkeypatch) -> None:
    def broken(*a: Any) -> tuple[Any, Any]:
        raise RuntimeError("re-read failed")

    monkeypatch.setattr(fingerprint, "_settle", broken)
    with pytest.raises(RuntimeError, match="re-read failed"):
        fingerprint.fingerprint_chunks("source", "target", TMAP, CHUNKS, scan_target=True)
