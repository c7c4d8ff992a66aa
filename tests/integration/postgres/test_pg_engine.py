"""The PostgreSQL engine against the real servers at tiny scale: tenant map checked against the
catalog, planner on awkward keys, chunk copies (run twice, kill -9 mid-chunk and resume, broken
target row caught, drift refused), and the ledger's refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from helpers import admin

from tenant_migration import ledger
from tenant_migration.endpoints import Endpoints
from tenant_migration.postgres import catalog, planner, rowsum
from tenant_migration.postgres.copy import (
    ChecksumMismatch,
    ChunkCopier,
    SchemaDrift,
    chunk_checksum,
    copy_chunk,
    copy_pending_chunks,
    table_checksum,
    verify_chunks,
)
from tenant_migration.sample import SAMPLE_MAP, data
from tenant_migration.tenant_map import load_tenant_map, parse_tenant_map

pytestmark = pytest.mark.integration

TMAP = load_tenant_map(SAMPLE_MAP)
TENANT = 2  # small, non-empty in the tiny preset
CHUNK_ROWS = 40  # several chunks per table at tiny scale
PLAN_ROWS = 5  # the planner tests want several chunks even for the tenant's smallest tables


def _run_id() -> str:
    return f"pg-it/{uuid.uuid4().hex[:10]}"


def _start(ep: Endpoints, tenant: int = TENANT) -> str:
    run_id = _run_id()
    with ep.target.connect() as t:
        ledger.start_run(t, run_id, tenant, "pg-engine-test", {"tenant_id": tenant})
    return run_id


def _counts(conn: psycopg.Connection, tenant: int, *, tenant_only: bool = True) -> dict[str, int]:
    out = {}
    for table in TMAP.tables:
        if tenant_only:
            q = psycopg.sql.SQL("SELECT count(*) FROM {} AS t WHERE {}").format(
                TMAP.qualified(table), TMAP.tenant_predicate(table))
            out[table] = conn.execute(q, {"tenant_id": tenant}).fetchone()[0]
        else:
            out[table] = conn.execute(psycopg.sql.SQL("SELECT count(*) FROM {}").format(TMAP.qualified(table))).fetchone()[0]
    return out


def _chunks(target_admin: psycopg.Connection, run_id: str) -> dict[str, dict]:
    return {c["chunk_id"]: c for c in ledger.chunk_rows(target_admin, run_id)}


@pytest.fixture
def clean_target(topo, tiny_dataset):
    from tenant_migration.sample import platform

    platform.demo_reset(topo)
    yield
    with admin(topo, "target") as t:
        t.execute("UPDATE tm_control.runs SET status = 'aborted' WHERE status = 'running'")


@pytest.fixture
def standby(topo):
    with admin(topo, "standby") as s:
        yield s


# ------------------------------------------------------------------------------ tenant map vs catalog


def test_sample_map_matches_the_live_catalog(endpoints, clean_target) -> None:
    with endpoints.replica.connect(autocommit=True) as r, endpoints.target.connect() as t:
        assert catalog.check_tenant_map(r, t, TMAP) == []


def _mutated(mutate) -> object:
    import copy

    import yaml

    from tenant_migration.sample import SAMPLE_MAP

    doc = copy.deepcopy(yaml.safe_load(SAMPLE_MAP.read_text()))
    mutate(doc["postgres"]["tables"])
    return parse_tenant_map(doc)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        pytest.param(lambda t: t.pop("dashboards"),
                     "platform.dashboards.user_id: references tenant-scoped platform.users",
                     id="table pointing at tenant data missing from the map"),
        pytest.param(lambda t: t["rules"].update(via={"column": "property_id", "table": "devices"}),
                     "platform.rules.property_id: the map's hop to platform.devices.device_id is not a foreign key",
                     id="hop that is not a real foreign key"),
        pytest.param(lambda t: t["device_shares"].update(key=["device_id"]),
                     "platform.device_shares.device_id: key is not the primary key or a NOT NULL unique key",
                     id="key that is not unique"),
        pytest.param(lambda t: t["devices"].update(tenant_column="owner_id"),
                     "platform.devices.owner_id: tenant column does not exist",
                     id="tenant column that does not exist"),
    ],
)
def test_map_disagreements_are_named_with_table_and_column(endpoints, clean_target, mutate, expected) -> None:
    tmap = _mutated(mutate)
    with endpoints.replica.connect(autocommit=True) as r, endpoints.target.connect() as t:
        problems = catalog.check_tenant_map(r, t, tmap)
    assert any(expected in p for p in problems), problems


def test_type_drift_on_the_target_is_named(endpoints, clean_target, target_admin) -> None:
    target_admin.execute("ALTER TABLE platform.dashboards ALTER COLUMN title TYPE varchar(200)")
    try:
        with endpoints.replica.connect(autocommit=True) as r, endpoints.target.connect() as t:
            problems = catalog.check_tenant_map(r, t, TMAP)
    finally:
        target_admin.execute("ALTER TABLE platform.dashboards ALTER COLUMN title TYPE text")
    assert problems == ["platform.dashboards.title: type text on the source, character varying(200) on the target"]


def test_load_order_follows_every_real_foreign_key(endpoints) -> None:
    with endpoints.replica.connect(autocommit=True) as r:
        order = catalog.load_order(r, TMAP)
    # device_registrations and device_shares reach the tenant through devices, but also reference users.
    for child, parent in [("device_registrations", "users"), ("device_shares", "users"),
                          ("device_registrations", "devices"), ("rule_actions", "rules"), ("rules", "properties")]:
        assert order.index(parent) < order.index(child), (child, parent)
    assert order[0] == "tenants" and set(order) == set(TMAP.tables)


# ------------------------------------------------------------------------------ planner


def _outlier_tenant(standby: psycopg.Connection) -> int:
    return standby.execute("SELECT tenant_id FROM platform.devices WHERE device_id = %s", (-(2**40),)).fetchone()[0]


@pytest.mark.parametrize("sample_rows", [pytest.param(0, id="exact"), pytest.param(300, id="sampled")])
@pytest.mark.parametrize(
    ("table", "tenant"),
    [
        pytest.param("device_shares", TENANT, id="composite key uuid+bigint"),
        pytest.param("rule_actions", TENANT, id="composite key bigint+smallint three hops away"),
        pytest.param("users", TENANT, id="uuid key"),
        pytest.param("devices", None, id="negative, zero and 2^40 outlier keys"),
        pytest.param("properties", data.EMPTY_TENANT_ID, id="tenant without rows"),
    ],
)
def test_chunks_cover_the_tenant_rows_exactly_once(endpoints, standby, tiny_dataset, table, tenant, sample_rows) -> None:
    tenant = tenant if tenant is not None else _outlier_tenant(standby)
    if sample_rows and tenant == TENANT:
        tenant = data.BIG_TENANT_ID  # enough rows for a sample of a tiny table to see several chunks
    with endpoints.replica.connect(autocommit=True) as r:
        chunks = planner.plan_table(r, TMAP, table, tenant, chunk_rows=PLAN_ROWS, sample_rows=sample_rows)
        again = planner.plan_table(r, TMAP, table, tenant, chunk_rows=PLAN_ROWS, sample_rows=sample_rows)
        total, _ = table_checksum(r, TMAP, table, tenant)
        sizes = [chunk_checksum(r, TMAP, c, tenant)[0] for c in chunks]
    assert chunks == again, "planning the same snapshot twice moved the chunks"
    assert sum(sizes) == total
    assert chunks[0].bounds["lower"] is None and chunks[-1].bounds["upper"] is None
    assert [json.loads(json.dumps(c.bounds)) for c in chunks] == [c.bounds for c in chunks]
    assert [c.chunk_id for c in chunks] == [f"pg:{table}:{i:04d}" for i in range(len(chunks))]
    if total == 0:
        assert len(chunks) == 1
    else:
        assert len(chunks) > 1, "the tenant's rows should split at this chunk size"
    if total and sample_rows == 0:
        assert max(sizes) - min(sizes) <= 1 and max(sizes) <= PLAN_ROWS
        assert len(chunks) == planner.math_chunks(total, PLAN_ROWS)
    if table == "devices":
        lows = [b for c in chunks for b in (c.bounds["lower"] or [])]
        assert lows and all(isinstance(v, int) for v in lows)
        with endpoints.replica.connect(autocommit=True) as r:
            keys = [k for (k,) in r.execute("SELECT device_id FROM platform.devices WHERE tenant_id = %s", (tenant,))]
        assert min(keys) == -(2**40) and any(-(2**40) < k <= 0 for k in keys)


# ------------------------------------------------------------------------------ copies


def test_copy_is_exact_and_a_second_run_gives_the_same_result(endpoints, clean_target, target_admin, standby) -> None:
    run_id = _start(endpoints)
    results = copy_pending_chunks(endpoints.replica, endpoints.target, TMAP, run_id, TENANT, CHUNK_ROWS)
    assert len(results) > len(TMAP.tables), "tiny tables should still split into several chunks"
    source = _counts(standby, TENANT)
    assert _counts(target_admin, TENANT) == source
    # Nothing of another tenant reached the target: every row there is the tenant's.
    assert _counts(target_admin, TENANT, tenant_only=False) == source
    assert target_admin.execute("SELECT count(*) FROM platform.devices WHERE tenant_id <> %s", (TENANT,)).fetchone() == (0,)
    first = {t: table_checksum(target_admin, TMAP, t, TENANT) for t in TMAP.tables}
    assert first == {t: table_checksum(standby, TMAP, t, TENANT) for t in TMAP.tables}
    chunks = _chunks(target_admin, run_id)
    assert {c["status"] for c in chunks.values()} == {"done"}
    assert all(c["source_checksum"] == c["target_checksum"] for c in chunks.values())

    # Re-running the same run does nothing; a new run over a full target gives the same rows.
    again = copy_pending_chunks(endpoints.replica, endpoints.target, TMAP, run_id, TENANT)
    assert all(r.skipped for r in again) and len(again) == len(results)
    with endpoints.target.connect() as t:
        ledger.finish_run(t, run_id, "succeeded")
    copy_pending_chunks(endpoints.replica, endpoints.target, TMAP, _start(endpoints), TENANT, CHUNK_ROWS * 3)
    assert {t: table_checksum(target_admin, TMAP, t, TENANT) for t in TMAP.tables} == first
    assert _counts(target_admin, TENANT, tenant_only=False) == source


def test_without_a_c_compiler_the_python_checksum_tool_gives_the_same_ledger(
    endpoints, clean_target, target_admin, monkeypatch
) -> None:
    fast = _start(endpoints)
    copy_pending_chunks(endpoints.replica, endpoints.target, TMAP, fast, TENANT, CHUNK_ROWS)
    with endpoints.target.connect() as t:
        ledger.finish_run(t, fast, "succeeded")
    monkeypatch.setattr(rowsum, "build", lambda cache=None: None)
    slow = _start(endpoints)
    copy_pending_chunks(endpoints.replica, endpoints.target, TMAP, slow, TENANT, CHUNK_ROWS)

    def sums(run_id: str) -> dict[str, tuple[int, str, str]]:
        return {cid: (c["rows_copied"], c["source_checksum"], c["target_checksum"])
                for cid, c in _chunks(target_admin, run_id).items()}
    assert sums(slow) == sums(fast)
    assert all(c[1] == c[2] and c[1].startswith(f"{c[0]}:") for c in sums(fast).values())


def test_empty_tenant_copies_its_two_rows_and_nothing_else(endpoints, clean_target, target_admin) -> None:
    run_id = _start(endpoints, data.EMPTY_TENANT_ID)
    results = copy_pending_chunks(endpoints.replica, endpoints.target, TMAP, run_id, data.EMPTY_TENANT_ID, CHUNK_ROWS)
    assert len(results) == len(TMAP.tables)
    assert {r.table: r.rows for r in results if r.rows} == {"tenants": 1, "tenant_settings": 1}


_KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from tenant_migration.endpoints import Endpoints
    from tenant_migration.postgres.copy import ChunkCopier, copy_pending_chunks
    from tenant_migration.sample import SAMPLE_MAP
    from tenant_migration.tenant_map import load_tenant_map

    state, run_id, tenant, victim, marker = sys.argv[1:6]
    ep = Endpoints.from_file(Path(state) / "connections.json")
    seen = []

    def hook(src_pid, dst_pid):
        seen.append(1)
        if len(seen) == int(victim):
            Path(marker).write_text(f"{src_pid} {dst_pid}")
            time.sleep(600)  # stuck mid-chunk: rows deleted and loaded, not committed

    copy_pending_chunks(ep.replica, ep.target, load_tenant_map(SAMPLE_MAP), run_id, int(tenant), {chunk_rows}, on_spawn=hook)
""")


def _wait_gone(pids: list[int], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while any(Path(f"/proc/{p}").exists() and "zombie" not in Path(f"/proc/{p}/status").read_text().lower()
              for p in pids):
        assert time.monotonic() < deadline, f"orphaned psql {pids} still running"
        time.sleep(0.1)


def test_sigkill_mid_chunk_then_resume_loses_and_doubles_nothing(
    topo, endpoints, clean_target, target_admin, standby, tmp_path
) -> None:
    run_id = _start(endpoints)
    # Kill during a chunk of `properties` (a big table at tiny scale, several chunks before it).
    with endpoints.replica.connect(autocommit=True) as r, endpoints.target.connect() as t:
        plan = planner.plan_postgres(r, t, TMAP, run_id, TENANT, CHUNK_ROWS * 2)
    victim_index = next(i for i, c in enumerate(plan) if c.table_name == "properties") + 1
    victim = plan[victim_index - 1]
    marker = tmp_path / "pids"
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILL_SCRIPT.replace("{chunk_rows}", str(CHUNK_ROWS * 2)),
         str(topo.state_dir), run_id, str(TENANT), str(victim_index), str(marker)],
        env=os.environ.copy(),
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, "copier exited before reaching the victim chunk"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        psql_pids = [int(p) for p in marker.read_text().split()]
        # Wait until the chunk is really in flight: DELETE and COPY done inside the open target
        # transaction, which now waits for the epilogue that would compare checksums and commit.
        while target_admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tm_copy_target' "
            "AND state = 'idle in transaction' AND query ILIKE 'copy %%'"
        ).fetchone()[0] != 1:
            assert time.monotonic() < deadline, "the victim chunk never reached its COPY"
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    _wait_gone(psql_pids)

    chunks = _chunks(target_admin, run_id)
    assert chunks[victim.chunk_id]["status"] == "running"
    assert chunk_checksum(target_admin, TMAP, victim, TENANT, whole_range=True)[0] == 0, "a killed chunk left rows"
    done_before = {cid for cid, c in chunks.items() if c["status"] == "done"}
    assert done_before and victim.chunk_id not in done_before

    results = copy_pending_chunks(endpoints.replica, endpoints.target, TMAP, run_id, TENANT)
    redone = {r.chunk_id for r in results if not r.skipped}
    assert redone == set(chunks) - done_before, "resume must copy exactly the chunks not done"
    assert _counts(target_admin, TENANT, tenant_only=False) == _counts(standby, TENANT)
    assert {t: table_checksum(target_admin, TMAP, t, TENANT) for t in TMAP.tables} == \
        {t: table_checksum(standby, TMAP, t, TENANT) for t in TMAP.tables}
    after = _chunks(target_admin, run_id)
    assert {c["status"] for c in after.values()} == {"done"}
    assert after[victim.chunk_id]["attempts"] == 2
    assert sum(c["rows_copied"] for c in after.values()) == sum(_counts(standby, TENANT).values())


def test_a_broken_target_row_is_caught_naming_table_and_chunk(endpoints, clean_target, target_admin) -> None:
    run_id = _start(endpoints)
    copy_pending_chunks(endpoints.replica, endpoints.target, TMAP, run_id, TENANT, CHUNK_ROWS)
    rule_id = target_admin.execute(
        "UPDATE platform.rules SET threshold = threshold + 1 WHERE rule_id = "
        "(SELECT min(rule_id) FROM platform.rules) RETURNING rule_id").fetchone()[0]
    with endpoints.replica.connect(autocommit=True) as r, endpoints.target.connect() as t:
        mismatches = verify_chunks(r, t, TMAP, run_id, TENANT)
        owner = next(c for c in ledger.run_chunks(t, run_id, "postgres") if c.table_name == "rules"
                     and (c.bounds["lower"] is None or c.bounds["lower"][0] < rule_id)
                     and (c.bounds["upper"] is None or rule_id <= c.bounds["upper"][0]))
    assert [(m.table, m.chunk_id) for m in mismatches] == [("platform.rules", owner.chunk_id)]
    assert "platform.rules chunk " + owner.chunk_id in str(mismatches[0])


def test_a_copy_that_lands_different_rows_rolls_back_and_names_table_and_chunk(
    endpoints, clean_target, target_admin
) -> None:
    # A target-side trigger that fires even in replica mode corrupts what lands: the in-transaction
    # comparison must refuse the chunk and leave nothing of it.
    target_admin.execute(
        "CREATE FUNCTION platform.tm_test_corrupt() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN NEW.title := NEW.title || '!'; RETURN NEW; END $$")
    target_admin.execute("CREATE TRIGGER tm_test_corrupt BEFORE INSERT ON platform.dashboards "
                         "FOR EACH ROW EXECUTE FUNCTION platform.tm_test_corrupt()")
    target_admin.execute("ALTER TABLE platform.dashboards ENABLE ALWAYS TRIGGER tm_test_corrupt")
    run_id = _start(endpoints)
    try:
        with pytest.raises(ChecksumMismatch, match=r"checksum mismatch in platform\.dashboards chunk pg:dashboards:0000"):
            copy_pending_chunks(endpoints.replica, endpoints.target, TMAP, run_id, TENANT, CHUNK_ROWS)
    finally:
        target_admin.execute("DROP TRIGGER tm_test_corrupt ON platform.dashboards")
        target_admin.execute("DROP FUNCTION platform.tm_test_corrupt()")
    row = _chunks(target_admin, run_id)["pg:dashboards:0000"]
    assert row["status"] == "failed" and "checksum mismatch" in row["last_error"]
    assert target_admin.execute("SELECT count(*) FROM platform.dashboards").fetchone() == (0,)
    # The backfill: a re-run copies only what is not done, and now succeeds.
    done = {cid for cid, c in _chunks(target_admin, run_id).items() if c["status"] == "done"}
    results = copy_pending_chunks(endpoints.replica, endpoints.target, TMAP, run_id, TENANT)
    assert {r.chunk_id for r in results if not r.skipped}.isdisjoint(done)
    assert {c["status"] for c in _chunks(target_admin, run_id).values()} == {"done"}


def test_schema_drift_is_refused_before_any_write(endpoints, clean_target, target_admin) -> None:
    run_id = _start(endpoints)
    target_admin.execute("ALTER TABLE platform.rules ADD COLUMN drifted integer")
    try:
        with pytest.raises(SchemaDrift, match=r"platform\.rules\.drifted: only on the target"):
            copy_pending_chunks(endpoints.replica, endpoints.target, TMAP, run_id, TENANT, CHUNK_ROWS)
    finally:
        target_admin.execute("ALTER TABLE platform.rules DROP COLUMN drifted")
    assert _chunks(target_admin, run_id) == {}, "nothing planned"
    assert sum(_counts(target_admin, TENANT, tenant_only=False).values()) == 0


def test_one_chunk_by_id_even_before_its_parents(endpoints, clean_target, target_admin, standby) -> None:
    run_id = _start(endpoints)
    with endpoints.replica.connect(autocommit=True) as r, endpoints.target.connect() as t:
        plan = planner.plan_postgres(r, t, TMAP, run_id, TENANT, CHUNK_ROWS)
        assert planner.plan_postgres(r, t, TMAP, run_id, TENANT, 7) == plan, "a stored plan is never replanned"
    # The target is verified over the chunk's key range, so a child needs no parent rows there.
    child = next(c for c in plan if c.table_name == "rule_actions")
    res = copy_chunk(endpoints.replica, endpoints.target, TMAP, run_id, TENANT, child.chunk_id)
    assert res.rows == chunk_checksum(standby, TMAP, child, TENANT)[0] > 0
    assert target_admin.execute("SELECT count(*) FROM platform.rule_actions").fetchone() == (res.rows,)
    chunks = _chunks(target_admin, run_id)
    assert [cid for cid, c in chunks.items() if c["status"] == "done"] == [child.chunk_id]
    assert copy_chunk(endpoints.replica, endpoints.target, TMAP, run_id, TENANT, child.chunk_id).skipped


# ------------------------------------------------------------------------------ ledger refusals


def test_second_live_run_for_the_tenant_is_refused(endpoints, clean_target) -> None:
    _start(endpoints)
    with pytest.raises(ledger.LedgerError, match="already has a live migration run"):
        _start(endpoints)


def test_resume_against_another_snapshot_is_refused(endpoints, clean_target) -> None:
    run_id = _start(endpoints)
    with endpoints.target.connect() as t:
        ledger.record_detach(t, run_id, "0/1000000", None)
        ledger.record_detach(t, run_id, "0/1000000", None)  # the same snapshot again is fine
        with pytest.raises(ledger.LedgerError, match="Refusing to mix snapshots"):
            ledger.record_detach(t, run_id, "0/2000000", None)
    # The replica is streaming (not detached): the copier refuses before touching anything.
    with pytest.raises(ledger.LedgerError, match="refusing to copy from another snapshot"):
        with ChunkCopier(endpoints.replica, endpoints.target, TMAP, run_id, TENANT):
            pass


def test_resume_with_another_context_is_refused(endpoints, clean_target) -> None:
    run_id = _start(endpoints)
    with endpoints.target.connect() as t, pytest.raises(ledger.LedgerError, match="refusing to resume"):
        ledger.start_run(t, run_id, TENANT, "another-source", {})
