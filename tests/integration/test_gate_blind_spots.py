"""What the gates used to pass without seeing, on tables and a keyspace made for the test (not the
sample platform's):

- a NULL tenant (or hop) column on the target: ``NOT (pred)`` is NULL for such a row, so the final
  gate's "only this tenant" check did not return it; ``(pred) IS NOT TRUE`` does;
- a table of the tenant map with no chunk in the run's plan (a plan that failed to store): the
  post-copy and final gates and the report passed with nothing of it copied;
- an empty table still has its one empty chunk, so an empty plan is 0 = 0, not a blind spot;
- a Cassandra plan shorter than the retention window: the final gate refuses it unless the
  operator said it is intended.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pytest
from helpers import admin, create_keyspace, drop_test_platform

from tenant_migration import ledger, steps
from tenant_migration.cassandra import plan as cql_plan
from tenant_migration.cassandra.copy import CopyOptions, copy_chunks
from tenant_migration.cassandra.fingerprint import fingerprint_chunks
from tenant_migration.postgres import planner
from tenant_migration.spec import MigrationSpec
from tenant_migration.tenant_map import parse_tenant_map
from tenant_migration.validation import gates

pytestmark = pytest.mark.integration

TENANT, EMPTY = 920_001, 920_003


@pytest.fixture
def platform(topo, endpoints) -> Iterator[dict[str, Any]]:
    """On the target's PostgreSQL (the tenant's own database): accounts -> items, the tenant's rows
    only; a keyspace on both clusters keyed by item."""
    name = f"gb_{uuid.uuid4().hex[:8]}"
    with admin(topo, "target") as conn:
        conn.execute(f"CREATE SCHEMA {name}")
        conn.execute(f"CREATE TABLE {name}.accounts (account_id int PRIMARY KEY, tenant_id bigint)")
        conn.execute(f"CREATE TABLE {name}.items (item_id int PRIMARY KEY, account_id int)")
        conn.execute(f"INSERT INTO {name}.accounts VALUES (1, {TENANT}), (2, {TENANT})")
        conn.execute(f"INSERT INTO {name}.items VALUES (10, 1), (11, 1), (12, 2)")
    tmap = parse_tenant_map({
        "platform": "blind-spots",
        "postgres": {"schema": name, "tenant_root": {"table": "accounts", "key": "tenant_id"},
                     "tables": {"accounts": {"key": ["account_id"], "tenant_column": "tenant_id"},
                                "items": {"key": ["item_id"], "via": {"column": "account_id", "table": "accounts"}}}},
        "cassandra": {"keyspace": name, "retention_days": 20, "tables": {"readings": {
            "partition_key": ["item_id", "day"], "partitions_from": {"table": "items", "columns": ["item_id"]},
            "day_column": "day"}}}})
    create_keyspace(endpoints, name, "CREATE TABLE {ks}.readings (item_id int, day date, ts int, v int, "
                    "PRIMARY KEY ((item_id, day), ts))")
    with endpoints.cassandra_source.session() as src:
        today = datetime.now(UTC).date()
        for item in (10, 11, 12):
            src.execute(f"INSERT INTO {name}.readings (item_id, day, ts, v) VALUES (%s, %s, 1, %s)", (item, today, item))
    try:
        yield {"name": name, "tmap": tmap}
    finally:
        drop_test_platform(topo, endpoints, name)


def _run(endpoints, tenant: int) -> str:
    rid = f"it-blind/{uuid.uuid4().hex[:8]}"
    with endpoints.target.connect() as t:
        ledger.ensure_schema(t)
        with t.transaction():
            t.execute("UPDATE tm_control.runs SET status = 'aborted' WHERE tenant_id = %s AND status = 'running'",
                      (tenant,))
        ledger.start_run(t, rid, tenant, "it-blind", {})
    return rid


def _plan_postgres_done(topo, endpoints, tmap, rid: str, tenant: int) -> None:
    """Plan every PostgreSQL table of the map (the target's rows stand for the replica's) and mark
    each chunk done, as a finished copy leaves them."""
    with admin(topo, "target") as rel:
        chunks = [c for t in tmap.load_order() for c in planner.plan_table(rel, tmap, t, tenant)]
    with endpoints.target.connect() as t:
        ledger.plan_chunks(t, rid, chunks)
        with t.transaction():
            for c in chunks:
                ledger.mark_chunk_done(t, rid, c.chunk_id, 0, 0, "", "")


def _plan_cassandra(topo, endpoints, tmap, rid: str, tenant: int, days: int | None = None) -> list[Any]:
    with admin(topo, "target") as rel, endpoints.cassandra_source.session() as src:
        chunks = cql_plan.plan_tenant(rel, tmap, tenant, datetime.now(UTC).date(), cql_plan.PlanOptions(days=days),
                                      session=src)
    with endpoints.target.connect() as t:
        ledger.plan_chunks(t, rid, chunks)
    copy_chunks(endpoints, rid, tmap, chunks, CopyOptions())
    return chunks


def _final(topo, tmap, rid: str, tenant: int, tmp_path, **frames: Any) -> Any:
    with admin(topo, "target") as conn:
        return gates.final_gate(conn, tmap, tenant, rid, tmp_path, **frames)


def _failed(gate) -> dict[str, Any]:
    return {c["name"]: c for c in gate.checks if not c["success"]}


def test_the_final_gate_sees_rows_whose_tenant_is_null(topo, endpoints, platform, tmp_path) -> None:
    tmap, name = platform["tmap"], platform["name"]
    rid = _run(endpoints, TENANT)
    _plan_postgres_done(topo, endpoints, tmap, rid, TENANT)
    _plan_cassandra(topo, endpoints, tmap, rid, TENANT)
    assert _final(topo, tmap, rid, TENANT, tmp_path).passed
    with admin(topo, "target") as conn:  # break on purpose: rows that belong to nobody
        conn.execute(f"INSERT INTO {name}.accounts VALUES (3, NULL)")
        conn.execute(f"INSERT INTO {name}.items VALUES (13, NULL), (14, 3)")
    gate = _final(topo, tmap, rid, TENANT, tmp_path)
    failed = _failed(gate)
    assert not gate.passed and set(failed) == {"accounts__only_this_tenant", "items__only_this_tenant"}
    assert failed["accounts__only_this_tenant"]["observed"].startswith("1 violating rows: ")
    # The rows, as evidence: their key, whose they are (nobody: NULL) and whose they should be.
    sample = failed["accounts__only_this_tenant"]["details"]["sample"]
    assert [list(r.values()) for r in sample] == [[3, None, TENANT]]
    assert sorted(next(iter(r.values())) for r in failed["items__only_this_tenant"]["details"]["sample"]) == [13, 14]
    assert "accounts__only_this_tenant" in gate.summary()


def test_a_table_missing_from_the_plan_fails_post_copy_final_and_the_report(topo, endpoints, platform,
                                                                            tmp_path, reports) -> None:
    tmap = platform["tmap"]
    rid = _run(endpoints, TENANT)
    _plan_postgres_done(topo, endpoints, tmap, rid, TENANT)  # ... and no Cassandra plan at all
    final = _final(topo, tmap, rid, TENANT, tmp_path)
    missing = _failed(final)["ledger__every_table_planned"]
    assert not final.passed and missing["details"]["sample"] == [{"unplanned_table": "cassandra readings"}]
    frame = pd.DataFrame([], columns=["unit", "source_rows", "target_rows", "source_checksum", "target_checksum"])
    with admin(topo, "target") as conn:
        post_copy = gates.post_copy_gate(frame, tmp_path, coverage=(conn, gates.plan_coverage_check(conn, tmap, rid)))
    assert not post_copy.passed and "unplanned_table=cassandra readings" in post_copy.summary()
    with pytest.raises(RuntimeError, match="no plan for the tenant map's table\\(s\\): cassandra readings"):
        steps.report(endpoints, MigrationSpec(tenant_id=TENANT), rid, None, tmap=tmap)
    with endpoints.target.connect() as t:
        assert ledger.run_row(t, rid)["status"] == "failed"


def test_an_empty_tenant_has_an_empty_chunk_per_table_and_passes(topo, endpoints, platform, tmp_path) -> None:
    tmap, name = platform["tmap"], platform["name"]
    with admin(topo, "target") as conn:  # the target is the empty tenant's own: none of the other's rows
        conn.execute(f"TRUNCATE {name}.items, {name}.accounts")
    rid = _run(endpoints, EMPTY)
    _plan_postgres_done(topo, endpoints, tmap, rid, EMPTY)
    chunks = _plan_cassandra(topo, endpoints, tmap, rid, EMPTY)
    assert [(c.chunk_id, c.bounds["bases"], len(c.bounds["days"])) for c in chunks] == [("cql:readings:0000", [], 21)]
    with endpoints.cassandra_sessions() as (src, dst):
        prints = fingerprint_chunks(src, dst, tmap, chunks)
    assert prints.match and [(r["source_rows"], r["target_rows"]) for r in prints.records()] == [(0, 0)]
    assert _final(topo, tmap, rid, EMPTY, tmp_path).passed


@pytest.mark.parametrize("accepted", [pytest.param(False, id="not intended: refused"),
                                      pytest.param(True, id="intended: recorded, passes")])
def test_a_plan_shorter_than_the_retention_window_needs_the_operators_word(topo, endpoints, platform, tmp_path,
                                                                           accepted) -> None:
    tmap = platform["tmap"]
    rid = _run(endpoints, TENANT)
    _plan_postgres_done(topo, endpoints, tmap, rid, TENANT)
    _plan_cassandra(topo, endpoints, tmap, rid, TENANT, days=4)
    with endpoints.target.connect() as t, endpoints.cassandra_target.session() as dst:
        history = steps.history_frame(dst, t, tmap, rid, accepted)
    assert history.to_dict("records") == [{"unit": "cassandra:readings", "planned_days": 4, "window_days": 21,
                                           "missing_days": 17, "accepted": accepted}]
    gate = _final(topo, tmap, rid, TENANT, tmp_path, history=history)
    assert gate.passed is accepted
    if not accepted:
        assert set(_failed(gate)) == {"cassandra__whole_history"} and "cassandra:readings" in gate.summary()
    with endpoints.target.connect() as t, endpoints.cassandra_target.session() as dst:  # the default: whole window
        rid2 = _run(endpoints, TENANT)
        _plan_cassandra(topo, endpoints, tmap, rid2, TENANT)
        assert steps.history_frame(dst, t, tmap, rid2, False)["missing_days"].tolist() == [0]
