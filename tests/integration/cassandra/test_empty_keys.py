"""Issue 28, item 4: a relational value that would be an empty single-column partition key
(Cassandra refuses it in every statement: ``Key may not be empty``). Before the fix the plan held
such a key and the copy, the warm-up and the fingerprints crashed mid-run; now the preflight
refuses it naming the table and the row, or, where the tenant map says ``empty_keys: skip``, the
run leaves it out and says so. An empty part of a composite key is a legal key and is copied."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from helpers import drop_test_platform, ledger_runs, make_test_platform, sample_slug

from tenant_migration import ledger, steps
from tenant_migration.cassandra import plan, warmup
from tenant_migration.cassandra.copy import CopyOptions, copy_chunks
from tenant_migration.cassandra.fingerprint import fingerprint_chunks
from tenant_migration.spec import MigrationSpec
from tenant_migration.tenant_map import TenantMapError, parse_tenant_map

pytestmark = pytest.mark.integration

TENANT, OTHER = 2, 3  # sample tenants: their slugs have DNS records in the zone


def _tmap(name: str, empty_keys: str | None = None) -> Any:
    extra = {"empty_keys": empty_keys} if empty_keys else {}
    return parse_tenant_map({
        "platform": "empty-keys",
        "postgres": {"schema": name, "tenant_root": {"table": "tenants", "key": "tenant_id"},
                     "tables": {"tenants": {"key": ["tenant_id"], "tenant_column": "tenant_id"},
                                "things": {"key": ["thing_id"], "tenant_column": "tenant_id"}}},
        "cassandra": {"keyspace": name, "tables": {
            "by_code": {"partition_key": ["code"], "partitions_from": {"table": "things", "columns": ["code"]}, **extra},
            "by_tag": {"partition_key": ["tag"], "partitions_from": {"table": "things", "columns": ["tag"]}, **extra},
            "by_code_day": {"partition_key": ["code", "day"], "day_column": "day",
                            "partitions_from": {"table": "things", "columns": ["code"]}}}}})


@pytest.fixture
def platform(topo, endpoints) -> Iterator[str]:
    name = f"ek_{uuid.uuid4().hex[:8]}"
    today = datetime.now(UTC).date().isoformat()
    make_test_platform(
        topo, endpoints, name,
        ["CREATE TABLE {s}.tenants (tenant_id bigint PRIMARY KEY, slug text NOT NULL)",
         "CREATE TABLE {s}.things (thing_id bigint PRIMARY KEY, tenant_id bigint NOT NULL REFERENCES {s}.tenants, "
         "code text NOT NULL, tag bytea NOT NULL)"],
        ["CREATE TABLE {ks}.by_code (code text, ts int, v text, PRIMARY KEY ((code), ts))",
         "CREATE TABLE {ks}.by_tag (tag blob, ts int, v text, PRIMARY KEY ((tag), ts))",
         "CREATE TABLE {ks}.by_code_day (code text, day date, ts int, v text, PRIMARY KEY ((code, day), ts))"],
        [f"INSERT INTO {{s}}.tenants VALUES ({TENANT}, '{sample_slug(topo, TENANT)}'), "
         f"({OTHER}, '{sample_slug(topo, OTHER)}')",
         f"INSERT INTO {{s}}.things VALUES (1, {TENANT}, '', ''::bytea), (2, {TENANT}, 'a', '\\x01'), "
         f"(3, {TENANT}, 'b', '\\x02'), (4, {OTHER}, '', ''::bytea)"])
    with endpoints.cassandra_source.session() as src:
        for code, tag in (("a", b"\x01"), ("b", b"\x02")):
            src.execute(f"INSERT INTO {name}.by_code (code, ts, v) VALUES (%s, 1, 'x')", (code,))
            src.execute(f"INSERT INTO {name}.by_tag (tag, ts, v) VALUES (%s, 1, 'x')", (tag,))
        for code in ("", "a"):  # '' is a legal part of a composite key
            src.execute(f"INSERT INTO {name}.by_code_day (code, day, ts, v) VALUES (%s, '{today}', 1, 'x')", (code,))
    try:
        yield name
    finally:
        drop_test_platform(topo, endpoints, name)


def test_an_empty_partition_key_is_refused_in_the_preflight_naming_table_and_row(topo, endpoints, platform,
                                                                                 target_admin, reports) -> None:
    runs = ledger_runs(target_admin)
    with pytest.raises(steps.PreflightError) as refused:
        steps.preflight(endpoints, MigrationSpec(tenant_id=TENANT), f"it-ek/{uuid.uuid4().hex[:8]}", _tmap(platform))
    msg = str(refused.value)
    assert (f"cassandra {platform}.by_code: 1 row(s) of tenant {TENANT} would have an empty partition key code, "
            f"which Cassandra refuses: {platform}.things(thing_id=1)") in msg
    assert f"cassandra {platform}.by_tag: 1 row(s) of tenant {TENANT} would have an empty partition key tag" in msg
    assert "by_code_day" not in msg and "empty_keys: skip" in msg
    assert "nothing was written" in msg and ledger_runs(target_admin) == runs


def test_skipped_empty_keys_are_reported_and_the_rest_copies_exactly(topo, endpoints, platform, reports) -> None:
    tmap, run_id = _tmap(platform, "skip"), f"it-ek/{uuid.uuid4().hex[:8]}"
    pre = steps.preflight(endpoints, MigrationSpec(tenant_id=TENANT), run_id, tmap)
    try:
        assert pre["empty_keys_skipped"] == {"by_code": 1, "by_tag": 1}
        with endpoints.replica.connect() as rel, endpoints.cassandra_source.session() as src:
            chunks = plan.plan_tenant(rel, tmap, TENANT, datetime.now(UTC).date(), plan.PlanOptions(days=2),
                                      session=src)
        with endpoints.target.connect() as t:
            ledger.plan_chunks(t, run_id, chunks)
            chunks = ledger.run_chunks(t, run_id, "cassandra")
        report = copy_chunks(endpoints, run_id, tmap, chunks, CopyOptions())
        assert {t: s.rows for t, s in report.tables.items()} == {"by_code": 2, "by_tag": 2, "by_code_day": 2}
        with endpoints.cassandra_sessions() as (src, dst):
            assert fingerprint_chunks(src, dst, tmap, chunks).match
            assert warmup.warm_up(dst, tmap, chunks, sample=5).warmed_rows == 2 + 2 + 2
            assert sorted(r.code for r in dst.execute(f"SELECT code FROM {platform}.by_code_day")) == ["", "a"]
    finally:
        with endpoints.target.connect() as t:
            ledger.finish_run(t, run_id, "aborted")


def test_an_unknown_empty_keys_choice_is_a_tenant_map_error() -> None:
    with pytest.raises(TenantMapError, match="empty_keys: 'drop' is not one of"):
        _tmap("x", "drop")
