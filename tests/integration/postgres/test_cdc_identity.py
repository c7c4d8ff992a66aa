"""The change stream over a table whose key is a ``GENERATED ALWAYS`` identity, on the real primary and
target (tables made for the test): inserts, updates and deletes of the tenant arrive exactly, nothing of
another tenant does. Before the fix every insert failed on the target with ``GeneratedAlways: cannot
insert a non-DEFAULT value into column "item_id"`` (issue 28, item 2)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import admin

from tenant_migration import ledger
from tenant_migration.endpoints import PgEndpoint
from tenant_migration.postgres import cdc
from tenant_migration.tenant_map import parse_tenant_map

pytestmark = pytest.mark.integration

TENANT, OTHER = 950_001, 950_002


@pytest.fixture
def platform(topo, endpoints) -> Iterator[dict[str, Any]]:
    name = f"gid_{uuid.uuid4().hex[:8]}"
    ddl = [f"CREATE SCHEMA {name}",
           f"CREATE TABLE {name}.tenants (tenant_id bigint PRIMARY KEY, name text)",
           f"CREATE TABLE {name}.items (item_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
           f"tenant_id bigint NOT NULL REFERENCES {name}.tenants, label text, n int)",
           f"ALTER TABLE {name}.items REPLICA IDENTITY DEFAULT"]
    for server, role in (("primary", "migration_reader"), ("target", "migration_writer")):
        with admin(topo, server) as conn:
            for q in ddl:
                conn.execute(q)
            conn.execute(f"GRANT USAGE ON SCHEMA {name} TO {role}")
            conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {name} TO {role}")
    tmap = parse_tenant_map({"platform": "pg-identity", "postgres": {
        "schema": name, "tenant_root": {"table": "tenants", "key": "tenant_id"},
        "tables": {"tenants": {"key": ["tenant_id"], "tenant_column": "tenant_id"},
                   "items": {"key": ["item_id"], "tenant_column": "tenant_id"}}}})
    reader = PgEndpoint(topo.pg_primary.host, topo.pg_primary.port, endpoints.replica.user,
                        endpoints.replica.password, endpoints.replica.dbname)
    slot = f"tm_cdc_gid_{uuid.uuid4().hex[:8]}"
    with reader.connect(autocommit=True) as src:
        info = cdc.create_slot(src, slot)
    try:
        yield {"name": name, "tmap": tmap, "reader": reader, "slot": slot, "start": info.consistent_lsn}
    finally:
        with reader.connect(autocommit=True) as src:
            cdc.drop_slot(src, slot)
        for server in ("primary", "target"):
            with admin(topo, server) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


def _rows(conn, name: str, tenant: int | None) -> list[str]:
    where = f"WHERE tenant_id = {int(tenant)}" if tenant is not None else ""
    return [r[0] for r in conn.execute(f"SELECT t::text FROM {name}.items AS t {where} ORDER BY item_id").fetchall()]


def test_the_stream_applies_rows_of_a_generated_always_identity_table(topo, endpoints, platform) -> None:
    name, tmap = platform["name"], platform["tmap"]
    rid = f"it-gid/{uuid.uuid4().hex[:8]}"
    with admin(topo, "primary") as p:
        p.execute(f"INSERT INTO {name}.tenants VALUES (%s, 'mine'), (%s, 'theirs')", (TENANT, OTHER))
        for i in range(12):
            p.execute(f"INSERT INTO {name}.items (tenant_id, label, n) VALUES (%s, %s, %s)",
                      (TENANT if i % 3 else OTHER, f"item {i}", i))
        p.execute(f"UPDATE {name}.items SET label = 'renamed', n = n + 100 WHERE tenant_id = %s AND n IN (1, 4)",
                  (TENANT,))
        p.execute(f"DELETE FROM {name}.items WHERE tenant_id = %s AND n = 5", (TENANT,))
        source = _rows(p, name, TENANT)
    with endpoints.target.connect() as t:
        ledger.ensure_schema(t)
        ledger.start_run(t, rid, TENANT, "it-gid", {})
    try:
        with platform["reader"].connect(autocommit=True) as src, endpoints.target.connect() as t:
            report = cdc.catch_up(src, t, tmap, TENANT, rid, platform["slot"], platform["start"],
                                  max_lag_bytes=1 << 20, timeout=60)
    finally:
        with endpoints.target.connect() as t:
            ledger.finish_run(t, rid, "aborted")  # one live run per tenant: never leave this one behind
    assert report.converged and report.changes_applied == 1 + 8 + 2 + 1
    with admin(topo, "target") as t:
        assert _rows(t, name, None) == source, "the tenant's rows, with the source's identity values, and nothing else"
