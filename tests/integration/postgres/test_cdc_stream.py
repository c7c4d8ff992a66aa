"""Change capture against the real primary, standby and target: the seam between the detached
replica's snapshot and the logical stream is exact, the stream is filtered to one tenant, a restart
resumes without loss or duplication, and the slot never outlives the run."""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from helpers import admin
from psycopg import sql

from tenant_migration import ledger
from tenant_migration.endpoints import Endpoints, PgEndpoint
from tenant_migration.postgres import cdc
from tenant_migration.postgres.copy import copy_pending_chunks
from tenant_migration.replica import LocalReplicaController
from tenant_migration.sample import SAMPLE_MAP
from tenant_migration.stack.topology import Topology
from tenant_migration.tenant_map import TenantMap, load_tenant_map

pytestmark = pytest.mark.integration

TENANT, OTHER = 3, 4


def cdc_endpoint(topo: Topology, ep: Endpoints) -> PgEndpoint:
    """migration_reader on the PRIMARY (what a `tm_source_cdc` connection would hold)."""
    return PgEndpoint(topo.pg_primary.host, topo.pg_primary.port, ep.replica.user, ep.replica.password, ep.replica.dbname)


def tenant_rows(conn: psycopg.Connection, tmap: TenantMap, tenant_id: int | None) -> dict[str, list[str]]:
    """Every row (text form) per table: the tenant's on the source, all of them on the target."""
    out = {}
    for table in tmap.load_order():
        where = tmap.tenant_predicate(table) if tenant_id is not None else sql.SQL("true")
        q = sql.SQL("SELECT t::text FROM {} AS t WHERE {} ORDER BY 1").format(tmap.qualified(table), where)
        out[table] = [r[0] for r in conn.execute(q, {"tenant_id": tenant_id}).fetchall()]
    return out


@dataclass
class Seam:
    tmap: TenantMap
    run_id: str
    slot: str
    detach_lsn: str
    source: psycopg.Connection  # migration_reader on the primary, autocommit
    target: psycopg.Connection  # migration_writer on the target
    app: psycopg.Connection  # platform_app on the primary, autocommit
    primary_admin: psycopg.Connection

    def catch_up(self, **kw: object) -> cdc.CatchUpReport:
        return cdc.catch_up(self.source, self.target, self.tmap, TENANT, self.run_id, self.slot, self.detach_lsn,
                            max_lag_bytes=1 << 20, timeout=120, **kw)  # type: ignore[arg-type]

    def assert_target_equals_source(self) -> None:
        assert tenant_rows(self.target, self.tmap, None) == tenant_rows(self.primary_admin, self.tmap, TENANT)


def _reset_target(topo: Topology, tmap: TenantMap) -> None:
    with admin(topo, "target") as conn:
        conn.execute(sql.SQL("TRUNCATE {} CASCADE").format(
            sql.SQL(", ").join(tmap.qualified(t) for t in tmap.tables)))


def open_seam(topo: Topology, endpoints: Endpoints, racing_writes: bool = False) -> Iterator[Seam]:
    tmap = load_tenant_map(SAMPLE_MAP)
    _reset_target(topo, tmap)
    run_id = f"cdc-test-{uuid.uuid4().hex[:8]}"
    slot = cdc.slot_name_for(run_id)
    source = cdc_endpoint(topo, endpoints).connect(autocommit=True)
    app = endpoints.source_primary.connect(autocommit=True)
    stop = threading.Event()
    racer = threading.Thread(target=_update_loop, args=(endpoints.source_primary, stop), daemon=True)
    if racing_writes:
        racer.start()
    try:
        info = cdc.create_slot(source, slot)
        detached = LocalReplicaController(endpoints.replica_control, min_lsn=info.consistent_lsn).detach()
        assert detached.lsn is not None
        # The copy phase, through the real engine: a ledger run bound to the detach point.
        with endpoints.target.connect() as tconn:
            ledger.start_run(tconn, run_id, TENANT, "cdc-test", {"tenant_id": TENANT})
            ledger.record_detach(tconn, run_id, detached.lsn, detached.commit_time)
        copy_pending_chunks(endpoints.replica, endpoints.target, tmap, run_id, TENANT)
        stop.set()
        if racing_writes:
            racer.join()
        with endpoints.target.connect() as target, admin(topo, "primary") as padmin:
            yield Seam(tmap, run_id, slot, detached.lsn, source, target, app, padmin)
    finally:
        stop.set()
        with endpoints.target.connect() as tconn:
            ledger.finish_run(tconn, run_id, "aborted")
        cdc.drop_slot(source, slot)
        LocalReplicaController(endpoints.replica_control).reattach()
        source.close()
        app.close()


def _update_loop(ep: PgEndpoint, stop: threading.Event) -> None:
    """Single-row updates of the tenant's devices, racing the slot creation and the detach."""
    with ep.connect(autocommit=True) as conn:
        ids = [r[0] for r in conn.execute("SELECT device_id FROM platform.devices WHERE tenant_id = %s", (TENANT,))]
        i = 0
        while not stop.is_set():
            conn.execute("UPDATE platform.devices SET name = %s WHERE device_id = %s", (f"race {i}", ids[i % len(ids)]))
            i += 1


@pytest.fixture(scope="module", autouse=True)
def _restore_source(topo: Topology) -> Iterator[None]:
    """These tests change the tenant's source rows on purpose: give the next tests the pristine
    tiny dataset back."""
    yield
    from tenant_migration.sample import platform

    platform.load_data(topo, "tiny", 7, force=True)


@pytest.fixture
def seam(topo: Topology, endpoints: Endpoints, tiny_dataset: dict) -> Iterator[Seam]:
    yield from open_seam(topo, endpoints)


def _new_id() -> int:
    return random.randint(10**14, 10**15)


def _joiner(app: psycopg.Connection, tenant_id: int) -> dict[str, object]:
    """A user and a device joining ``tenant_id``, with a property, rule, rule action and dashboard."""
    ids = {"user": uuid.uuid4(), "device": _new_id(), "property": _new_id(), "rule": _new_id(), "dash": _new_id()}
    with app.transaction():
        app.execute("INSERT INTO platform.users (user_id, tenant_id, email, display_name, role) VALUES (%s,%s,%s,'New','admin')",
                    (ids["user"], tenant_id, f"{ids['user']}@example.test"))
        app.execute("INSERT INTO platform.devices (device_id, tenant_id, serial, model_id, name) "
                    "SELECT %s, %s, %s, min(model_id), 'joined' FROM platform.device_models",
                    (ids["device"], tenant_id, f"SN-J-{ids['device']}"))
    with app.transaction():
        app.execute("INSERT INTO platform.properties (property_id, device_id, name, data_type) VALUES (%s,%s,'t','float')",
                    (ids["property"], ids["device"]))
        app.execute("INSERT INTO platform.rules (rule_id, property_id, expression, threshold) VALUES (%s,%s,'x > 1',1.5)",
                    (ids["rule"], ids["property"]))
        app.execute("INSERT INTO platform.rule_actions (rule_id, action_no, kind, target) VALUES (%s,1,'email','a''b')",
                    (ids["rule"],))
        app.execute("INSERT INTO platform.dashboards (dashboard_id, user_id, title, layout) VALUES (%s,%s,'It''s','{\"k\": [1]}')",
                    (ids["dash"], ids["user"]))
    return ids


def test_changes_after_detach_arrive_and_only_the_tenants(seam: Seam) -> None:
    app, tmap = seam.app, seam.tmap
    one = lambda q, *a: app.execute(q, a).fetchone()[0]  # noqa: E731
    dev = one("SELECT min(device_id) FROM platform.devices WHERE tenant_id = %s", TENANT)
    key = one("SELECT min(api_key_id::text) FROM platform.api_keys WHERE tenant_id = %s", TENANT)
    act = app.execute(sql.SQL("SELECT t.rule_id, t.action_no FROM platform.rule_actions t WHERE {} LIMIT 1").format(
        tmap.tenant_predicate("rule_actions")), {"tenant_id": TENANT}).fetchone()
    app.execute("UPDATE platform.devices SET name = 'renamed', mode = 'active' WHERE device_id = %s", (dev,))
    app.execute("DELETE FROM platform.api_keys WHERE api_key_id = %s", (key,))
    if act is not None:
        app.execute("DELETE FROM platform.rule_actions WHERE rule_id = %s AND action_no = %s", act)
    joined = _joiner(app, TENANT)
    foreign = _joiner(app, OTHER)
    other_dev = one("SELECT min(device_id) FROM platform.devices WHERE tenant_id = %s", OTHER)
    app.execute("UPDATE platform.devices SET name = 'not ours' WHERE device_id = %s", (other_dev,))

    report = seam.catch_up()

    assert report.converged
    assert report.changes_applied == 7 + (key is not None) + (act is not None)
    assert report.changes_filtered >= 7
    t = seam.target
    assert t.execute("SELECT name FROM platform.devices WHERE device_id = %s", (dev,)).fetchone() == ("renamed",)
    assert t.execute("SELECT 1 FROM platform.api_keys WHERE api_key_id = %s", (key,)).fetchone() is None
    assert t.execute("SELECT title FROM platform.dashboards WHERE dashboard_id = %s", (joined["dash"],)).fetchone() == ("It's",)
    assert t.execute("SELECT target FROM platform.rule_actions WHERE rule_id = %s", (joined["rule"],)).fetchone() == ("a'b",)
    assert t.execute("SELECT count(*) FROM platform.devices WHERE tenant_id <> %s", (TENANT,)).fetchone() == (0,)
    assert t.execute("SELECT count(*) FROM platform.rules WHERE rule_id = %s", (foreign["rule"],)).fetchone() == (0,)
    seam.assert_target_equals_source()


def test_device_moving_in_and_out_takes_its_subtree(seam: Seam) -> None:
    app = seam.app
    incoming = app.execute(
        "SELECT d.device_id FROM platform.devices d JOIN platform.properties p USING (device_id) "
        "WHERE d.tenant_id = %s LIMIT 1", (OTHER,)).fetchone()[0]
    outgoing = app.execute(
        "SELECT d.device_id FROM platform.devices d JOIN platform.properties p USING (device_id) "
        "WHERE d.tenant_id = %s LIMIT 1", (TENANT,)).fetchone()[0]
    app.execute("UPDATE platform.devices SET tenant_id = %s WHERE device_id = %s", (TENANT, incoming))
    app.execute("UPDATE platform.devices SET tenant_id = %s WHERE device_id = %s", (OTHER, outgoing))

    report = seam.catch_up()

    assert report.backfilled_rows > 0
    t = seam.target
    assert t.execute("SELECT count(*) FROM platform.properties WHERE device_id = %s", (incoming,)).fetchone()[0] > 0
    assert t.execute("SELECT count(*) FROM platform.properties WHERE device_id = %s", (outgoing,)).fetchone() == (0,)
    seam.assert_target_equals_source()


def test_restart_mid_stream_neither_loses_nor_doubles(seam: Seam) -> None:
    app = seam.app
    devs = [r[0] for r in app.execute("SELECT device_id FROM platform.devices WHERE tenant_id = %s", (TENANT,))]
    n = 30
    for i in range(n):  # n tenant transactions, interleaved with another tenant's
        app.execute("UPDATE platform.devices SET name = %s WHERE device_id = %s", (f"step {i}", devs[i % len(devs)]))
        app.execute("UPDATE platform.tenants SET name = name WHERE tenant_id = %s", (OTHER,))

    class Crash(Exception):
        pass

    seen: list[str] = []

    def crash_after_commit(txn: cdc.Transaction) -> None:
        seen.append(txn.commit_lsn)
        if len(seen) == 11:  # the 11th is committed on the target but the slot is not advanced
            raise Crash

    with pytest.raises(Crash):
        seam.catch_up(batch_changes=8, group_size=1, on_applied=crash_after_commit)
    mid = cdc.read_progress(seam.target, seam.run_id)
    assert mid is not None and mid.txns_applied == 11

    seam.catch_up(batch_changes=8)

    done = cdc.read_progress(seam.target, seam.run_id)
    assert done is not None
    assert done.txns_applied == n
    seam.assert_target_equals_source()


@pytest.mark.parametrize("how", [pytest.param("end", id="dropped after catch-up"),
                                 pytest.param("abort", id="dropped on abort")])
def test_slot_is_dropped(seam: Seam, how: str) -> None:
    if how == "end":
        seam.catch_up()
    else:
        with pytest.raises(cdc.CdcError):
            cdc.start_progress(seam.target, seam.run_id, seam.slot, TENANT, seam.detach_lsn)
            cdc.start_progress(seam.target, seam.run_id, "another_slot", TENANT, seam.detach_lsn)
    assert cdc.drop_slot(seam.source, seam.slot) is True
    assert cdc.drop_slot(seam.source, seam.slot) is False
    left = seam.source.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (seam.slot,)).fetchone()
    assert left == (0,)


def test_writes_racing_the_detach_fall_exactly_on_one_side(topo: Topology, endpoints: Endpoints, tiny_dataset: dict) -> None:
    for seam in open_seam(topo, endpoints, racing_writes=True):
        report = seam.catch_up()
        assert report.txns_applied > 0  # the racer kept writing after the detach point
        seam.assert_target_equals_source()
