"""Issue 33, item 2: what the engine cannot migrate is refused by a real DAG run's preflight, before
anything is written, with a message naming table and column: a table without a primary key, a
Cassandra partition-key column that neither the relational rows nor the day bucket supply, a
tenant-map table missing from the catalog, a column the copy cannot carry (a generated column; a
type without binary send/receive).

A platform of the test's own (``make_test_platform``) holds one of each, unmapped; each profile maps
one of them beside the sound tables (the sample's switch and DNS: the root rows take the sample
tenants' slugs), and the sound profile passes the same DAG's dry run, so each refusal is the
fault's and only the fault's."""

from __future__ import annotations

import importlib
import logging
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import admin, drop_test_platform, ledger_runs, make_test_platform, parse_dag, sample_slug

from tenant_migration.sample import PROFILE

pytestmark = pytest.mark.e2e

TENANT, OTHER = 2, 3
FAST = {"require_approval": False, "max_ttl_wait_s": 1, "drain_seconds": 3, "drain_quiet_s": 2}

# A base type with text I/O only (the server's own textin/textout): COPY (FORMAT binary) cannot send it.
NO_BINARY = ["CREATE TYPE {s}.opaque_text",
             "CREATE FUNCTION {s}.opaque_in(cstring) RETURNS {s}.opaque_text LANGUAGE internal IMMUTABLE STRICT "
             "AS 'textin'",
             "CREATE FUNCTION {s}.opaque_out({s}.opaque_text) RETURNS cstring LANGUAGE internal IMMUTABLE STRICT "
             "AS 'textout'",
             "CREATE TYPE {s}.opaque_text (INPUT = {s}.opaque_in, OUTPUT = {s}.opaque_out, "
             "INTERNALLENGTH = VARIABLE, STORAGE = extended)"]


def _map(name: str, **extra: Any) -> dict[str, Any]:
    tables = {"tenants": {"key": ["tenant_id"], "tenant_column": "tenant_id"},
              "things": {"key": ["thing_id"], "tenant_column": "tenant_id"}}
    cql = {"by_code": {"partition_key": ["code"], "partitions_from": {"table": "things", "columns": ["code"]}}}
    tables.update(extra.get("tables", {}))
    cql.update(extra.get("cassandra", {}))
    return {"platform": "refusals", "postgres": {"schema": name, "tenant_root": {"table": "tenants", "key": "tenant_id"},
                                                 "tables": tables},
            "cassandra": {"keyspace": name, "tables": cql, "retention_days": 3}}


FAULTS: dict[str, tuple[dict[str, Any], list[str]]] = {
    "no-primary-key": (
        {"tables": {"notes": {"key": ["note_id"], "tenant_column": "tenant_id"}}},
        ["{s}.notes: no primary key: the change stream would carry no key for its updates and deletes, and the "
         "copy's chunks need one; add a PRIMARY KEY (note_id is unique and NOT NULL: make it the primary key, or "
         "ALTER TABLE {s}.notes REPLICA IDENTITY USING INDEX <that index>)"]),
    "unsupplied-partition-key": (
        {"cassandra": {"by_bucket": {"partition_key": ["code", "bucket"],
                                     "partitions_from": {"table": "things", "columns": ["code"]}}}},
        ["cassandra {s}.by_bucket: partition-key column bucket is supplied neither by the relational rows "
         "(partitions_from {s}.things: code) nor the day bucket (no day_column)"]),
    "missing-table": (
        {"tables": {"thingz": {"key": ["thing_id"], "tenant_column": "tenant_id"}}},
        ["{s}.thingz: a tenant-scoped table in the tenant map (postgres.tables.thingz) but not in the source "
         "catalog; did you mean things?"]),
    "generated-column": (
        {"tables": {"computed": {"key": ["computed_id"], "tenant_column": "tenant_id"}}},
        ["{s}.computed.doubled: a generated column (GENERATED ALWAYS AS ... STORED), which COPY cannot read or "
         "write; the copy cannot carry it"]),
    "type-without-binary-io": (
        {"tables": {"opaque": {"key": ["opaque_id"], "tenant_column": "tenant_id"}}},
        ["{s}.opaque.payload: type {s}.opaque_text has no binary send/receive function, so the binary COPY cannot "
         "carry it",
         "{s}.opaque.history: type {s}.opaque_text[] (through {s}.opaque_text) has no binary send/receive function"]),
}


@pytest.fixture(scope="module")
def refusals(topo, endpoints, tiny_dataset, tmp_path_factory) -> Iterator[tuple[str, Any]]:
    """The test platform, a profile per fault (and ``sound``), and the DAG parsed with them listed."""
    from tenant_migration import params
    from tenant_migration.sample import platform

    name = f"rf_{uuid.uuid4().hex[:8]}"
    make_test_platform(
        topo, endpoints, name,
        ["CREATE TABLE {s}.tenants (tenant_id bigint PRIMARY KEY, slug text NOT NULL)",
         "CREATE TABLE {s}.things (thing_id bigint PRIMARY KEY, tenant_id bigint NOT NULL REFERENCES {s}.tenants, "
         "code text NOT NULL)",
         # The faults, none of them reachable through a foreign key (the sound map leaves them out).
         "CREATE TABLE {s}.notes (note_id bigint NOT NULL UNIQUE, tenant_id bigint NOT NULL, body text)",
         "CREATE TABLE {s}.computed (computed_id bigint PRIMARY KEY, tenant_id bigint NOT NULL, "
         "base bigint NOT NULL, doubled bigint GENERATED ALWAYS AS (base * 2) STORED)",
         *NO_BINARY,
         "CREATE TABLE {s}.opaque (opaque_id bigint PRIMARY KEY, tenant_id bigint NOT NULL, payload {s}.opaque_text, "
         "history {s}.opaque_text[])"],
        ["CREATE TABLE {ks}.by_code (code text, ts int, v text, PRIMARY KEY ((code), ts))",
         "CREATE TABLE {ks}.by_bucket (code text, bucket int, ts int, v text, PRIMARY KEY ((code, bucket), ts))"],
        [f"INSERT INTO {{s}}.tenants VALUES ({TENANT}, '{sample_slug(topo, TENANT)}'), "
         f"({OTHER}, '{sample_slug(topo, OTHER)}')",
         f"INSERT INTO {{s}}.things VALUES (1, {TENANT}, 'a'), (2, {TENANT}, 'b'), (3, {OTHER}, 'c')",
         f"INSERT INTO {{s}}.notes VALUES (1, {TENANT}, 'x')",
         f"INSERT INTO {{s}}.computed (computed_id, tenant_id, base) VALUES (1, {TENANT}, 21)",
         f"INSERT INTO {{s}}.opaque VALUES (1, {TENANT}, 'opaque', ARRAY['a', 'b']::{{s}}.opaque_text[])"])
    folder = tmp_path_factory.mktemp("refusal-profiles")
    base = yaml.safe_load(PROFILE.read_text())
    for profile_name, (extra, _) in {"sound": ({}, []), **FAULTS}.items():
        (folder / f"{profile_name}.yaml").write_text(yaml.safe_dump({**base, "tenant_map": _map(name, **extra)},
                                                                    sort_keys=False))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TM_PROFILES_DIR", str(folder))
        importlib.reload(params)
        platform.demo_reset(topo)
        try:
            yield name, parse_dag("tenant_migration")
        finally:
            drop_test_platform(topo, endpoints, name)
    importlib.reload(params)


@pytest.mark.timeout(300)
def test_the_sound_platform_passes_the_dry_run(topo, refusals, capfd, caplog) -> None:
    """With the form's default ``require_approval``: a dry run flips nothing, so asks no approval
    (before, it waited on the approval task for a human). The preflight gate's task log names its
    Data Docs page, in the run's own GX project."""
    _, dag = refusals
    caplog.set_level(logging.INFO, logger="tenant_migration")
    capfd.readouterr()
    dagrun = dag.test(run_conf={"tenant_id": TENANT, "platform": "sound", "dry_run": True,
                                **{k: v for k, v in FAST.items() if k != "require_approval"}})
    out = capfd.readouterr()
    states = {ti.task_id: str(ti.state) for ti in dagrun.get_task_instances()}
    assert str(dagrun.state) == "success", states
    assert states["go.approve_flip"] == "skipped" and states["go.skip_approval"] == "success", states
    found = re.search(r"gate preflight passed: Data Docs (\S+/gx/uncommitted/data_docs/local_site/validations/"
                      r"preflight/.+?\.html)", caplog.text + out.out + out.err)
    assert found, (caplog.text + out.out + out.err)[-3000:]
    assert Path(found.group(1)).exists()


@pytest.mark.parametrize("fault", list(FAULTS))
def test_what_cannot_be_migrated_is_refused_before_anything_is_written(topo, refusals, capfd, fault) -> None:
    name, dag = refusals
    with admin(topo, "target") as t:
        runs = ledger_runs(t)
    capfd.readouterr()
    dagrun = dag.test(run_conf={"tenant_id": TENANT, "platform": fault, **FAST})
    out = capfd.readouterr()
    log = out.out + out.err  # the task's log, as dag.test writes it (the operator reads it in the UI)
    states = {ti.task_id: str(ti.state) for ti in dagrun.get_task_instances()}
    assert str(dagrun.state) == "failed" and states["preflight"] == "failed", states
    assert states["ready.detach_replica"] in {"upstream_failed", "None"}, states
    assert "preflight failed, nothing was written" in log
    for message in FAULTS[fault][1]:
        assert message.format(s=name) in log, f"{message.format(s=name)!r} not in the preflight's log:\n{log[-3000:]}"
    with admin(topo, "target") as t:
        assert ledger_runs(t) == runs
        for table in ("tenants", "things"):
            assert t.execute(f"SELECT count(*) FROM {name}.{table}").fetchone() == (0,)
