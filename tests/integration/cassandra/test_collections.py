"""Issue 28, item 1: non-frozen collections (set, list, map) on the real clusters, with a keyspace
and tables made for the test. Before the fix the copy's read failed in the driver (``Failed
decoding result column "ttl(tags)" ... Length must be positive``) and the fingerprints' ``mask_hash``
refused the columns; now every element is copied with its value and TTL, sets' and maps' elements
with their own write time, a list at its newest element's (docs/tenant-map.md, "What a copy keeps")."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from helpers import admin, create_keyspace, drop_test_platform

from tenant_migration import ledger, steps
from tenant_migration.cassandra import catchup, plan, warmup
from tenant_migration.cassandra.copy import ChunkCopier, CopyOptions, copy_chunks, reader_for, table_shape
from tenant_migration.cassandra.fingerprint import fingerprint_chunks
from tenant_migration.tenant_map import parse_tenant_map

pytestmark = pytest.mark.integration

TENANT, OTHER = 930_001, 930_002
COLUMNS = ("tags", "readings", "attrs", "note", "fz")
NOW_US = int(time.time() * 1_000_000)


def _write_source(src: Any, ks: str, k: int, ck: int, base: int) -> None:
    """Elements written at different times and with different TTLs, as a platform's updates leave them."""
    q = f"UPDATE {ks}.things USING TIMESTAMP %s{{}} SET {{}} WHERE k = %s AND ck = %s"
    src.execute(q.format("", "tags = tags + {'a', 'b'}, note = 'n', fz = [1, 2]"), (base, k, ck))
    src.execute(q.format(" AND TTL 7200", "tags = tags + {'c'}"), (base + 10, k, ck))
    src.execute(q.format("", "readings = [1, 2]"), (base + 20, k, ck))
    src.execute(q.format(" AND TTL 3600", "readings = readings + [3, 3]"), (base + 30, k, ck))
    src.execute(q.format("", "attrs = attrs + {'x': 1}"), (base + 40, k, ck))
    src.execute(q.format(" AND TTL 5000", "attrs = attrs + {'y': 2, 'z': 3}"), (base + 50, k, ck))
    src.execute(f"UPDATE {ks}.only_sets USING TIMESTAMP %s AND TTL 9000 SET s = s + {{1, 2}} WHERE k = %s AND ck = %s",
                (base, k, ck))


@pytest.fixture
def platform(topo, endpoints) -> Iterator[dict[str, Any]]:
    name = f"co_{uuid.uuid4().hex[:8]}"
    with admin(topo, "target") as conn:
        conn.execute(f"CREATE SCHEMA {name}")
        conn.execute(f"CREATE TABLE {name}.things (k int PRIMARY KEY, tenant_id bigint NOT NULL)")
        conn.execute(f"INSERT INTO {name}.things SELECT g, CASE WHEN g % 2 = 0 THEN {TENANT} ELSE {OTHER} END "
                     "FROM generate_series(1, 8) g")
    create_keyspace(endpoints, name,
                    "CREATE TABLE {ks}.things (k int, ck int, tags set<text>, readings list<int>, attrs map<text, int>, "
                    "note text, fz frozen<list<int>>, PRIMARY KEY ((k), ck))",
                    "CREATE TABLE {ks}.only_sets (k int, ck int, s set<int>, PRIMARY KEY ((k), ck))")
    with endpoints.cassandra_source.session() as src:
        for k in range(1, 9):
            for ck in range(3):
                _write_source(src, name, k, ck, NOW_US - 60_000_000 + 1000 * ck)
    tables = {t: {"partition_key": ["k"], "partitions_from": {"table": "things", "columns": ["k"]}}
              for t in ("things", "only_sets")}
    tmap = parse_tenant_map({
        "platform": "collections", "postgres": {"schema": name, "tenant_root": {"table": "things", "key": "tenant_id"},
                                                "tables": {"things": {"key": ["k"], "tenant_column": "tenant_id"}}},
        "cassandra": {"keyspace": name, "retention_days": 30, "tables": tables}})
    try:
        yield {"name": name, "tmap": tmap}
    finally:
        drop_test_platform(topo, endpoints, name)


@pytest.fixture
def run_id(endpoints) -> Iterator[str]:
    rid = f"it-coll/{uuid.uuid4().hex[:8]}"
    with endpoints.target.connect() as t:
        ledger.ensure_schema(t)
        ledger.start_run(t, rid, TENANT, "it-coll", {})
    yield rid
    with endpoints.target.connect() as t:
        ledger.finish_run(t, rid, "aborted")


def _cells(session: Any, ks: str, table: str = "things") -> dict[tuple[int, int], dict[str, Any]]:
    """Every row's every column: (value, WRITETIME, TTL), collections element by element."""
    shape = table_shape(session, ks, table)
    reader = reader_for(session, shape)
    cols = [c for c in shape.regular]
    sel = ", ".join(f"{c}, WRITETIME({c}), TTL({c})" for c in cols)
    out = {}
    for row in reader.execute(f"SELECT k, ck, {sel} FROM {ks}.{table}"):
        out[(row[0], row[1])] = {c: tuple(_plain(v) for v in row[2 + 3 * i:5 + 3 * i]) for i, c in enumerate(cols)}
    return out


def _plain(v: Any) -> Any:
    if hasattr(v, "items"):
        return tuple(v.items())
    if isinstance(v, list | tuple) or type(v).__name__ == "SortedSet":
        return tuple(v)
    return v


def _ttl_close(a: Any, b: Any, slack: int = 8) -> bool:
    if isinstance(a, tuple) or isinstance(b, tuple):
        return a is not None and b is not None and len(a) == len(b) and all(_ttl_close(x, y) for x, y in zip(a, b, strict=True))
    return (a is None and b is None) or (a is not None and b is not None and 0 <= a - b <= slack)


def _copy(topo, endpoints, tmap, run_id) -> list[ledger.Chunk]:
    with admin(topo, "target") as rel, endpoints.cassandra_source.session() as src:
        chunks = plan.plan_tenant(rel, tmap, TENANT, datetime.now(UTC).date(), plan.PlanOptions(days=1), session=src)
    with endpoints.target.connect() as t:
        ledger.plan_chunks(t, run_id, chunks)
        chunks = ledger.run_chunks(t, run_id, "cassandra")
    copy_chunks(endpoints, run_id, tmap, chunks, CopyOptions())
    return chunks


def test_collections_copy_every_element_with_its_write_time_and_ttl(topo, endpoints, platform, run_id) -> None:
    ks, tmap = platform["name"], platform["tmap"]
    chunks = _copy(topo, endpoints, tmap, run_id)
    with endpoints.cassandra_sessions() as (src, dst):
        source = {key: row for key, row in _cells(src, ks).items() if key[0] % 2 == 0}
        target = _cells(dst, ks)
        assert set(target) == set(source) and len(source) == 12, "the tenant's rows, nothing of the other tenant"
        for key, row in source.items():
            mine = target[key]
            for col in ("tags", "attrs", "note", "fz"):  # values and every element's write time, exactly
                assert mine[col][:2] == row[col][:2], (key, col, mine[col], row[col])
                assert _ttl_close(row[col][2], mine[col][2]), (key, col, row[col][2], mine[col][2])
            values, writetimes, ttls = row["readings"]
            assert values == (1, 2, 3, 3) and mine["readings"][0] == values, "a list keeps its order and repeats"
            assert mine["readings"][1] == (max(writetimes),) * 4, "a list's elements at its newest write time"
            assert _ttl_close(ttls, mine["readings"][2]) and ttls[:2] == (None, None)
        assert {k: r["s"][:2] for k, r in _cells(dst, ks, "only_sets").items()} == \
            {k: r["s"][:2] for k, r in _cells(src, ks, "only_sets").items() if k[0] % 2 == 0}
        assert fingerprint_chunks(src, dst, tmap, chunks).match
        assert warmup.warm_up(dst, tmap, chunks, sample=5).warmed_rows == 12 + 12  # the warm-up reads them too

    # Run twice, same result: sets and maps are idempotent, a list is not appended twice.
    with endpoints.target.connect() as t:
        t.execute("UPDATE tm_control.chunks SET status = 'pending' WHERE run_id = %s", (run_id,))
        t.commit()
    copy_chunks(endpoints, run_id, tmap, chunks, CopyOptions())
    with endpoints.cassandra_target.session() as dst:
        again = _cells(dst, ks)
    assert {k: {c: v[:2] for c, v in r.items()} for k, r in again.items()} == \
        {k: {c: v[:2] for c, v in r.items()} for k, r in target.items()}


def test_the_gate_sees_a_wrong_element_and_names_the_partition(topo, endpoints, platform, run_id) -> None:
    ks, tmap = platform["name"], platform["tmap"]
    chunks = _copy(topo, endpoints, tmap, run_id)
    with endpoints.cassandra_sessions() as (src, dst):
        wt = dst.execute(f"SELECT WRITETIME(tags) FROM {ks}.things WHERE k = 2 AND ck = 0").one()[0]
        dst.execute(f"UPDATE {ks}.things USING TIMESTAMP %s SET tags = tags + {{'zz'}} WHERE k = 2 AND ck = 0", (wt[0],))
        dst.execute(f"UPDATE {ks}.things USING TIMESTAMP %s SET readings = [7] WHERE k = 4 AND ck = 1", (NOW_US - 1,))
        report = fingerprint_chunks(src, dst, tmap, chunks)
    assert not report.match
    assert sorted(report.mismatched_partitions()) == ["things(k=2)", "things(k=4)"]


def test_catch_up_and_drain_carry_later_elements_without_doubling_a_list(topo, endpoints, platform, run_id) -> None:
    ks, tmap = platform["name"], platform["tmap"]
    chunks = _copy(topo, endpoints, tmap, run_id)
    flip_us = int(time.time() * 1_000_000)
    with endpoints.cassandra_source.session() as src:  # the platform keeps writing after the copy
        src.execute(f"UPDATE {ks}.things USING TIMESTAMP %s SET tags = tags + {{'late'}}, readings = readings + [9], "
                    "attrs = attrs + {'w': 4} WHERE k = 6 AND ck = 2", (flip_us + 5,))
        src.execute(f"UPDATE {ks}.things USING TIMESTAMP %s SET readings = [5] WHERE k = 8 AND ck = 0", (flip_us + 6,))
    with endpoints.cassandra_sessions() as (src, dst):
        since = datetime.fromtimestamp(flip_us / 1e6 - 3600, UTC)
        late = {w.table: w for w in catchup.late_writes(src, dst, tmap, chunks, since, flip_us, None)}
        assert late["things"].cells == 3 + 1 and late["things"].missing == 4
        shape = table_shape(src, ks, "things")
        copier = ChunkCopier(src, dst, shape, None, CopyOptions())
        stats = [copier.copy_chunk(c.bounds, min_writetime=flip_us - 1) for c in chunks if c.table_name == "things"]
        # Only the later elements: a set's and a map's one each, a changed list whole (5 and 1 elements).
        assert sum(s.cells for s in stats) == 1 + 1 + 5 + 1
        watched = [copier.copy_groups(plan.read_groups(c.bounds, shape.partition_key, None, 64), watch_after=flip_us)
                   for c in chunks if c.table_name == "things"]
        assert sum(s.late_cells for s in watched) == 3 + 1  # what the drain counts: the elements written after
        late = {w.table: w for w in catchup.late_writes(src, dst, tmap, chunks, since, flip_us, None)}
        assert late["things"].missing == 0
        source, target = _cells(src, ks), _cells(dst, ks)
        for key in ((6, 2), (8, 0)):
            assert target[key]["readings"][0] == source[key]["readings"][0], key
        assert target[(6, 2)]["tags"][:2] == source[(6, 2)]["tags"][:2]
        assert fingerprint_chunks(src, dst, tmap, chunks).match


def test_counters_and_non_frozen_udts_are_refused_before_anything_is_written(topo, endpoints) -> None:
    name = f"co_{uuid.uuid4().hex[:8]}"
    tmap = parse_tenant_map({
        "postgres": {"schema": "platform", "tenant_root": {"table": "tenants", "key": "tenant_id"},
                     "tables": {"tenants": {"key": ["tenant_id"], "tenant_column": "tenant_id"}}},
        "cassandra": {"keyspace": name, "tables": {t: {
            "partition_key": ["k"], "partitions_from": {"table": "tenants", "columns": ["tenant_id"]}}
            for t in ("hits", "places", "fine")}}})
    create_keyspace(endpoints, name, "CREATE TYPE {ks}.address (street text, city text)",
                    "CREATE TABLE {ks}.hits (k bigint PRIMARY KEY, n counter)",
                    "CREATE TABLE {ks}.places (k bigint PRIMARY KEY, home address, work frozen<address>)",
                    "CREATE TABLE {ks}.fine (k bigint PRIMARY KEY, tags set<text>, at frozen<address>)")
    try:
        problems = steps.cassandra_drift(endpoints, tmap)
    finally:
        drop_test_platform(topo, endpoints, name)
    assert len(problems) == 2, problems
    assert f"cassandra {name}.hits: column n is a counter" in problems[0]
    assert f"cassandra {name}.places: column home is a non-frozen user-defined type (address)" in problems[1]
