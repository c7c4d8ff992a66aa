"""PostgreSQL chunks cut at keys of every type a platform may use, on tables made for the test
(primary -> streaming standby -> target): a composite key of uuid, inet, numeric, date,
timestamptz, bytea and text, and a text key with quotes, backslashes, percent signs and non-ASCII
characters. Each chunk's range bounds are stored in the ledger, reloaded and copied; every row of
the tenant arrives once, nothing of the other tenant does. Before the fix a bytea bound was stored
as Python's ``b'...'`` text, which PostgreSQL reads as other bytes."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from helpers import admin

from tenant_migration import ledger
from tenant_migration.postgres import copy as pg_copy
from tenant_migration.postgres import planner
from tenant_migration.tenant_map import parse_tenant_map

pytestmark = pytest.mark.integration

TENANT, OTHER = 940_001, 940_002
LABELS = ["plain", "it's", 'say "hi"', "back\\slash", "100 %", "%(tenant_id)s", "é 漢 🙂", "", " lead", "tab\there",
          "new\nline", "{}", "$1", "z" * 300]


def _things(tenant: int, n: int) -> list[tuple[Any, ...]]:
    rows = []
    for i in range(n):
        rows.append((tenant, uuid.UUID(int=(i % 5) + 1), f"10.0.{i % 3}.{i % 7}" if i % 2 else f"2001:db8::{i % 4:x}",
                     Decimal(i % 4) - Decimal("1.50"), date(2026, 1, 1) + timedelta(days=i % 6),
                     datetime(2026, 1, 1, tzinfo=UTC) + timedelta(microseconds=10 * i + tenant % 10), bytes([0, i % 256, 92, 39]),
                     LABELS[i % len(LABELS)], i))
    return rows


@pytest.fixture
def platform(topo, endpoints) -> Iterator[dict[str, Any]]:
    name = f"pk_{uuid.uuid4().hex[:8]}"
    ddl = [f"CREATE SCHEMA {name}",
           f"CREATE TABLE {name}.things (tenant_id bigint NOT NULL, id uuid, addr inet, amount numeric, born date, "
           "seen timestamptz, tag bytea, label text, v int, PRIMARY KEY (id, addr, amount, born, seen, tag, label))",
           f"CREATE TABLE {name}.labels (label text PRIMARY KEY, tenant_id bigint NOT NULL, n int)"]
    mine = _things(TENANT, 60)
    theirs = _things(OTHER, 25)
    with admin(topo, "primary") as p:
        for q in ddl:
            p.execute(q)
        p.execute(f"GRANT USAGE ON SCHEMA {name} TO migration_reader")
        p.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA {name} TO migration_reader")
        with p.cursor() as cur:
            cur.executemany(f"INSERT INTO {name}.things VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)", mine + theirs)
            cur.executemany(f"INSERT INTO {name}.labels VALUES (%s, %s, %s)",
                            [(label, TENANT, i) for i, label in enumerate(LABELS)]
                            + [(f"other {i}", OTHER, i) for i in range(5)])
    with admin(topo, "target") as t:
        for q in ddl:
            t.execute(q)
        t.execute(f"GRANT USAGE ON SCHEMA {name} TO migration_writer")
        t.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA {name} TO migration_writer")
    deadline = time.monotonic() + 60
    with admin(topo, "standby") as s:  # the standby replays the DDL and rows (it must be attached)
        while True:
            found = s.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{name}.labels",)).fetchone()[0]
            if found and s.execute(f"SELECT count(*) FROM {name}.labels").fetchone()[0] == len(LABELS) + 5:
                break
            assert time.monotonic() < deadline, "the standby did not replay the test's tables within 60 s"
            time.sleep(0.2)
    tmap = parse_tenant_map({"platform": "pg-key-types", "postgres": {
        "schema": name, "tenant_root": {"table": "labels", "key": "tenant_id"},
        "tables": {"labels": {"key": ["label"], "tenant_column": "tenant_id"},
                   "things": {"key": ["id", "addr", "amount", "born", "seen", "tag", "label"],
                              "tenant_column": "tenant_id"}}}})
    try:
        yield {"name": name, "tmap": tmap, "mine": mine}
    finally:
        for server in ("primary", "target"):
            with admin(topo, server) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


def test_chunks_cut_at_typed_keys_are_stored_reloaded_and_copied_exactly(topo, endpoints, platform) -> None:
    tmap, name = platform["tmap"], platform["name"]
    rid = f"it-pgkeys/{uuid.uuid4().hex[:8]}"
    with endpoints.target.connect() as t:
        ledger.ensure_schema(t)
        ledger.start_run(t, rid, TENANT, "it-pgkeys", {})
    with endpoints.replica.connect(autocommit=True) as r:
        chunks = [c for table in tmap.load_order() for c in planner.plan_table(r, tmap, table, TENANT, chunk_rows=7)]
    assert sum(c.table_name == "things" for c in chunks) >= 8 and sum(c.table_name == "labels" for c in chunks) >= 2
    with endpoints.target.connect() as t:
        ledger.plan_chunks(t, rid, chunks)
        reloaded = ledger.run_chunks(t, rid, "postgres")
    assert {c.chunk_id: c.bounds for c in reloaded} == {c.chunk_id: c.bounds for c in chunks}
    ids = [c.chunk_id for c in reloaded]
    for attempt in range(2):  # run twice: the second skips every chunk and changes nothing
        results = pg_copy.copy_chunks(endpoints.replica, endpoints.target, tmap, rid, TENANT, ids)
        assert all(r.skipped for r in results) is (attempt == 1)
        with admin(topo, "target") as t, admin(topo, "primary") as p:
            for table in ("things", "labels"):
                source = p.execute(f"SELECT * FROM {name}.{table} WHERE tenant_id = %s", (TENANT,)).fetchall()
                target = t.execute(f"SELECT * FROM {name}.{table}").fetchall()
                assert len(target) == len(source) and set(target) == set(source), table
    with endpoints.target.connect() as t:
        rows = {c["chunk_id"]: c["rows_copied"] for c in ledger.chunk_rows(t, rid)}
        ledger.finish_run(t, rid, "aborted")
    assert sum(rows.values()) == len(platform["mine"]) + len(LABELS)
