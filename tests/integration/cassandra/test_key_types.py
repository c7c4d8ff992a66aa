"""Partition keys of every type a platform may use, planned from relational rows, stored in the
ledger, reloaded and copied on the real servers, with tables and a keyspace made for the test:
uuid, timeuuid, inet, decimal, date, timestamp, blob, text with any characters, tuples, and a
composite key of several. Before ``keycodec`` the plan of a uuid key failed to store (``Object of
type UUID is not JSON serializable``) and no Cassandra data was copied."""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from helpers import admin, create_keyspace, drop_test_platform

from tenant_migration import ledger, steps
from tenant_migration.cassandra import plan
from tenant_migration.cassandra.copy import CopyOptions, copy_chunks
from tenant_migration.cassandra.fingerprint import fingerprint_chunks
from tenant_migration.tenant_map import parse_tenant_map

pytestmark = pytest.mark.integration

TENANT, OTHER = 910_001, 910_002
TODAY = datetime.now(UTC).date()
DAYS = [TODAY, TODAY - timedelta(days=3)]

# Cassandra table -> (partition-key columns with their CQL types, the relational columns feeding them)
TABLES: dict[str, tuple[list[tuple[str, str]], list[str]]] = {
    "k_uuid": ([("k", "uuid")], ["id"]),
    "k_timeuuid": ([("k", "timeuuid")], ["tu"]),
    "k_inet": ([("k", "inet")], ["addr"]),
    "k_decimal": ([("k", "decimal")], ["amount"]),
    "k_date": ([("k", "date")], ["born"]),
    "k_timestamp": ([("k", "timestamp")], ["seen"]),
    "k_blob": ([("k", "blob")], ["tag"]),
    "k_text": ([("k", "text")], ["label"]),
    "k_tuple": ([("k", "frozen<tuple<int, int>>")], ["pair"]),
    "k_uuid_text": ([("k", "text")], ["id"]),  # a uuid stored as text on the Cassandra side
    "k_all": ([("a", "uuid"), ("b", "inet"), ("c", "text"), ("d", "timestamp")], ["id", "addr", "label2", "seen"]),
}
NO_DAY = {"k_date"}  # a table without a day bucket


def _things(tenant: int, n: int, seed: int) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        out.append({
            "tenant_id": tenant, "id": uuid.UUID(int=seed * 1000 + i), "tu": uuid.uuid1(node=seed, clock_seq=i),
            "addr": ipaddress.ip_address(f"10.{seed}.0.{i + 1}") if i % 2 else ipaddress.ip_address(f"2001:db8::{seed}:{i}"),
            "amount": Decimal(f"-{i}.{seed}0") if i else Decimal(seed - 1),  # 0 for the tenant, trailing zeros kept
            "born": date(1970 + seed, 1, 1) + timedelta(days=i),
            "seen": datetime(2026, 1, 2, 3, 4, 5 + i, 123456, tzinfo=UTC) + timedelta(hours=seed),  # ms on Cassandra
            "tag": bytes([0, seed, i, 255]),
            "label": f"it's \"{seed}\" é 漢 🙂 \\ {i}",
            "label2": "" if i == 0 else f"x{seed}{i}",  # '' is a legal part of a composite key
            "pair": [seed, -i],
        })
    return out


@pytest.fixture
def platform(topo, endpoints) -> Iterator[dict[str, Any]]:
    """A schema on the target's PostgreSQL holding two tenants' rows (the relational side the
    plan reads) and a keyspace on both clusters with each tenant's datapoints on the source."""
    name = f"kt_{uuid.uuid4().hex[:8]}"
    mine, theirs = _things(TENANT, 4, 1), _things(OTHER, 3, 2)
    with admin(topo, "target") as conn:
        conn.execute(f"CREATE SCHEMA {name}")
        conn.execute(f"CREATE TABLE {name}.things (tenant_id bigint, id uuid PRIMARY KEY, tu uuid, addr inet, "
                     "amount numeric, born date, seen timestamptz, tag bytea, label text, label2 text, pair int[])")
        with conn.cursor() as cur:
            cur.executemany(f"INSERT INTO {name}.things VALUES (%(tenant_id)s, %(id)s, %(tu)s, %(addr)s, %(amount)s, "
                            "%(born)s, %(seen)s, %(tag)s, %(label)s, %(label2)s, %(pair)s)", mine + theirs)
    tables: dict[str, Any] = {}
    for table, (pk, cols) in TABLES.items():
        day = table not in NO_DAY
        tables[table] = {"partition_key": [c for c, _ in pk] + (["day"] if day else []),
                         "partitions_from": {"table": "things", "columns": cols}, **({"day_column": "day"} if day else {})}
    tmap = parse_tenant_map({
        "platform": "key-types", "postgres": {"schema": name, "tenant_root": {"table": "things", "key": "tenant_id"},
                                              "tables": {"things": {"key": ["id"], "tenant_column": "tenant_id"}}},
        "cassandra": {"keyspace": name, "retention_days": 30, "tables": tables}})
    ddl = []
    for table, (pk, _) in TABLES.items():
        day = table not in NO_DAY
        cols = ", ".join(f"{c} {t}" for c, t in pk)
        key = ", ".join([c for c, _ in pk] + (["day"] if day else []))
        ddl.append(f"CREATE TABLE {{ks}}.{table} ({cols}, {'day date, ' if day else ''}ts int, v text, "
                   f"PRIMARY KEY (({key}), ts))")
    create_keyspace(endpoints, name, *ddl)
    with endpoints.cassandra_source.session() as src:
        from tenant_migration.cassandra import keys

        written: dict[str, int] = {}
        for table, (pk, cols) in TABLES.items():
            day = table not in NO_DAY
            convs = [keys.converter(t) for _, t in pk]
            names = [c for c, _ in pk] + (["day"] if day else [])
            stmt = src.prepare(f"INSERT INTO {name}.{table} ({', '.join(names)}, ts, v) "
                               f"VALUES ({', '.join('?' for _ in names)}, ?, ?)")
            for thing in mine + theirs:
                base = [f(thing[c]) for f, c in zip(convs, cols, strict=True)]
                for d in (DAYS if day else [None]):
                    for ts in range(3):
                        src.execute(stmt, [*base, *([d] if day else []), ts, f"{thing['tenant_id']}:{ts}"])
                        if thing["tenant_id"] == TENANT:
                            written[table] = written.get(table, 0) + 1
    try:
        yield {"name": name, "tmap": tmap, "written": written}
    finally:
        drop_test_platform(topo, endpoints, name)


@pytest.fixture
def run_id(endpoints) -> Iterator[str]:
    rid = f"it-keys/{uuid.uuid4().hex[:8]}"
    with endpoints.target.connect() as t:
        ledger.ensure_schema(t)
        ledger.start_run(t, rid, TENANT, "it-keys", {})
    yield rid
    with endpoints.target.connect() as t:
        ledger.finish_run(t, rid, "aborted")


def test_every_key_type_is_planned_stored_reloaded_and_copied(topo, endpoints, platform, run_id) -> None:
    tmap, name = platform["tmap"], platform["name"]
    with admin(topo, "target") as rel, endpoints.cassandra_source.session() as src:
        chunks = plan.plan_tenant(rel, tmap, TENANT, TODAY, plan.PlanOptions(days=5), session=src)
    assert {c.table_name for c in chunks} == set(TABLES)
    with endpoints.target.connect() as t:
        ledger.plan_chunks(t, run_id, chunks)
        reloaded = ledger.run_chunks(t, run_id, "cassandra")
    by_id = {c.chunk_id: c for c in chunks}
    for c in reloaded:  # the exact values, with their types, back from the ledger
        original = by_id[c.chunk_id].bounds["bases"]
        assert c.bounds["bases"] == [list(b) for b in original]
        assert [[type(v) for v in b] for b in c.bounds["bases"]] == [[type(v) for v in b] for b in original]
    report = copy_chunks(endpoints, run_id, tmap, reloaded, CopyOptions())
    assert sorted(report.chunks_done) == sorted(by_id)
    assert {t: s.rows for t, s in report.tables.items()} == platform["written"]
    with endpoints.cassandra_sessions() as (src, dst):
        prints = fingerprint_chunks(src, dst, tmap, reloaded)
        for table in TABLES:  # nothing of the other tenant on the target
            on_target = dst.execute(f"SELECT v FROM {name}.{table}").all()
            assert len(on_target) == platform["written"][table], table
            assert {r.v.split(":")[0] for r in on_target} == {str(TENANT)}, table
    assert prints.match, prints.mismatched_partitions()[:5]
    assert {r["chunk_id"].split(":")[1] for r in prints.records() if r["source_rows"]} == set(TABLES)
    with admin(topo, "target") as rel, endpoints.cassandra_target.session() as dst:
        owned = steps.cassandra_ownership(dst, rel, tmap, TENANT)
    assert owned["foreign_partitions"].sum() == 0 and owned["partitions"].sum() > 0


def test_a_key_type_no_plan_can_hold_is_refused_before_anything_is_written(topo, endpoints) -> None:
    name = f"kt_{uuid.uuid4().hex[:8]}"
    tmap = parse_tenant_map({
        "postgres": {"schema": "platform", "tenant_root": {"table": "tenants", "key": "tenant_id"},
                     "tables": {"tenants": {"key": ["tenant_id"], "tenant_column": "tenant_id"}}},
        "cassandra": {"keyspace": name, "tables": {"by_list": {
            "partition_key": ["k"], "partitions_from": {"table": "tenants", "columns": ["tenant_id"]}}}}})
    create_keyspace(endpoints, name, "CREATE TABLE {ks}.by_list (k frozen<list<int>> PRIMARY KEY, v int)")
    try:
        problems = steps.cassandra_drift(endpoints, tmap)
    finally:
        drop_test_platform(topo, endpoints, name)
    assert len(problems) == 1
    assert f"{name}.by_list: partition-key column k has type frozen<list<int>>" in problems[0]
