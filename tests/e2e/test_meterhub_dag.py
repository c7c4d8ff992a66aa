"""Issue 32, item 4: the second bundled platform (meterhub: text, uuid and composite keys, keys <= 0,
a self-referencing tree, three hops, NULL-tenant rows, a ~1 MB text and a bytea, identities and a
sequence; in Cassandra a text+uuid partition key, a static column, set/list/map, a partition
larger than a driver page, TTLs and explicit write times) migrates one org through the real DAG
while live changes run on the source -- inserts, updates and deletes on its tables, new meters
writing readings, NULL-tenant rows, other orgs' changes -- with registrations switched by its
admin API over HTTP and the replica detached by promoting a standby of the run's own. Then every
row and every cell (value, WRITETIME, TTL) of the org is compared on source and target, and no row
of another org and no NULL-tenant row is on the target."""

from __future__ import annotations

import importlib
import random
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from helpers import admin, parse_dag
from psycopg import sql

from tenant_migration.cutover import dns
from tenant_migration.sample.meterhub import PROFILE, PROFILES, generate
from tenant_migration.sample.meterhub import platform as meterhub
from tenant_migration.tenant_map import load_tenant_map

pytestmark = pytest.mark.e2e

ORG, OTHER = 2, 3
TMAP = load_tenant_map(PROFILE.parent.parent / "tenant_map.yaml")
FAST = {"require_approval": False, "max_ttl_wait_s": 1, "drain_seconds": 3, "drain_quiet_s": 2}


@pytest.fixture
def meterhub_dag(topo, monkeypatch: pytest.MonkeyPatch):
    from tenant_migration import params

    monkeypatch.setenv("TM_PROFILES_DIR", str(PROFILES))
    importlib.reload(params)
    meterhub.load_data(topo, "tiny", 7, force=True)
    meterhub.demo_reset(topo)
    yield parse_dag("tenant_migration")
    monkeypatch.undo()
    importlib.reload(params)


class LiveChanges(threading.Thread):
    """The platform keeps working while the org migrates: until the org's ingest name resolves to
    its dedicated deployment, the org's rows change on the source (inserts, updates, deletes), a
    new meter is installed and writes readings, other orgs and NULL-tenant templates change too."""

    def __init__(self, topo, endpoints) -> None:
        super().__init__(daemon=True)
        self.topo, self.ep = topo, endpoints
        self.stop, self.counts, self.error = threading.Event(), dict.fromkeys(
            ("insert", "update", "delete", "readings", "other", "nobody"), 0), None
        self.rng = random.Random(32)
        self.switch_seen: set[bool] = set()  # the org's registrations as the admin API told them

    def registrations_open(self) -> bool:
        import requests

        conn = meterhub.connections(self.topo)[meterhub.ADMIN_CONN]
        answer = requests.get(f"http://{conn['host']}:{conn['port']}/tenants/{ORG}/registrations",
                              auth=(conn["login"], conn["password"]), headers=conn["extra"]["headers"], timeout=5)
        answer.raise_for_status()
        return bool(answer.json()["data"]["open"])

    def flipped(self) -> bool:
        r53 = self.ep.aws.client("route53")
        zid = dns.zone_id(r53, meterhub.ZONE)
        return ".vpc-ingest." in dns.resolve(r53, zid, f"borealis-power.ingest.{meterhub.ZONE}")[1]

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:  # shown by the test
            self.error = exc

    def _run(self) -> None:
        with admin(self.topo, "primary") as pg, self.ep.cassandra_source.session() as cql:
            reading = cql.prepare("INSERT INTO hub_metrics.readings (site_key, meter_uid, ts, kwh, flags, attrs) "
                                  "VALUES (?, ?, ?, ?, ?, ?) USING TIMESTAMP ? AND TTL ?")
            site_id, site_key = pg.execute("SELECT site_id, site_key FROM hub.sites WHERE org_id = %s AND "
                                           "parent_site_id IS NOT NULL ORDER BY site_id DESC LIMIT 1", (ORG,)).fetchone()
            meters = [r[0] for r in pg.execute("SELECT m.meter_uid FROM hub.meters m JOIN hub.sites s USING (site_id) "
                                               "WHERE s.org_id = %s", (ORG,))]
            i = 0
            while not self.stop.is_set() and not self.flipped():
                i += 1
                with pg.transaction():
                    uid = uuid.UUID(int=self.rng.getrandbits(128), version=4)
                    pg.execute("INSERT INTO hub.meters VALUES (%s, %s, %s, %s, 'EV-9', 1, now(), NULL)",
                               (uid, site_id, site_key, f"LIVE-{uid.hex[:10]}"))
                    pg.execute("INSERT INTO hub.meter_channels (meter_uid, channel, unit) VALUES (%s, 0, 'kWh')", (uid,))
                    self.counts["insert"] += 2
                    meters.append(uid)
                pg.execute("UPDATE hub.org_members SET roles = roles || %s::text WHERE org_id = %s AND email = %s",
                           (f"r{i}", ORG, "user1@borealis-power.example"))
                pg.execute("UPDATE hub.meters SET config = jsonb_set(coalesce(config, '{}'), '{live}', to_jsonb(%s::int)) "
                           "WHERE meter_uid = %s", (i, meters[i % len(meters)]))
                self.counts["update"] += 2
                gone = pg.execute("DELETE FROM hub.channel_alarms WHERE alarm_id = (SELECT a.alarm_id FROM "
                                  "hub.channel_alarms a JOIN hub.meter_channels c USING (channel_id) JOIN hub.meters m "
                                  "USING (meter_uid) JOIN hub.sites s USING (site_id) WHERE s.org_id = %s ORDER BY "
                                  "a.alarm_id LIMIT 1)", (ORG,)).rowcount
                self.counts["delete"] += gone
                pg.execute("INSERT INTO hub.invoices (org_id, amount, issued_at, lines) VALUES (%s, 1.50, now(), '[]')",
                           (OTHER,))
                self.counts["other"] += 1
                pg.execute("UPDATE hub.documents SET updated_at = now(), body = body || '.' WHERE org_id IS NULL AND "
                           "doc_path = 'templates/onboarding.txt'")
                pg.execute("INSERT INTO hub.documents VALUES (%s, NULL, 'a template', NULL, NULL, now())",
                           (f"templates/live-{i}.txt",))
                pg.execute("INSERT INTO hub.documents VALUES (%s, %s, %s, %s, %s, now())",
                           (f"borealis-power/live-{i}.bin", ORG, None, self.rng.randbytes(512),
                            '{"live": true, "n": null}'))
                self.counts["nobody"] += 2
                self.counts["insert"] += 1
                now = datetime.now(UTC)
                for uid in meters[-3:]:
                    cql.execute(reading, (site_key, uid, now, float(i), {"live"}, {"src": "live"},
                                          int(now.timestamp() * 1_000_000), 86_400))
                    self.counts["readings"] += 1
                self.switch_seen.add(self.registrations_open())
                time.sleep(0.2)


def _rows(conn: psycopg.Connection, table: str) -> list[tuple[Any, ...]]:
    cols = [r[0] for r in conn.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = 'hub' "
                                       "AND table_name = %s ORDER BY ordinal_position", (table,))]
    q = sql.SQL("SELECT {} FROM ({}) AS r ORDER BY {}").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in cols), TMAP.select_tenant_rows(table, cols),
        sql.SQL(", ").join(sql.Identifier(c) for c in TMAP.tables[table].key))
    return [tuple(r) for r in conn.execute(q, {"tenant_id": ORG})]


def _cells(session, site_meters: list[tuple[str, uuid.UUID]], days: list) -> dict[tuple, tuple]:
    """Every cell of these meters: key -> (values, write times and TTLs; the monotonic seconds at
    which the partition's read began and ended, to turn TTLs into expiries)."""
    out: dict[tuple, tuple] = {}
    q = session.prepare("SELECT ts, kwh, WRITETIME(kwh), TTL(kwh), flags, WRITETIME(flags), TTL(flags), phases, "
                        "attrs, WRITETIME(attrs), meter_label, WRITETIME(meter_label) FROM hub_metrics.readings "
                        "WHERE site_key = ? AND meter_uid = ?")
    q.fetch_size = 1000  # the big partition spans pages
    for key, uid in site_meters:
        t0 = time.monotonic()
        rows = list(session.execute(q, (key, uid)))
        t1 = time.monotonic()
        for r in rows:
            out[("readings", key, uid, r[0])] = (tuple(r[1:]), t0, t1)
    r_q = session.prepare("SELECT channel, total, peak, WRITETIME(total), TTL(total) FROM hub_metrics.daily_rollups "
                          "WHERE meter_uid = ? AND day = ?")
    for _, uid in site_meters:
        for day in days:
            t0 = time.monotonic()
            rows = list(session.execute(r_q, (uid, day)))
            t1 = time.monotonic()
            for r in rows:
                out[("rollups", uid, day, r[0])] = (tuple(r[1:]), t0, t1)
    return out


def _ttl_ok(a: Any, b: Any, src: tuple, dst: tuple) -> bool:
    """The target's cell expires no later than the source's (TTLs are whole seconds, read between
    each side's t0 and t1) and at most 30 s earlier (the copy's lag); both or neither expire."""
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_ttl_ok(x, y, src, dst) for x, y in zip(a, b, strict=True))
    if a is None or b is None:
        return a is None and b is None
    latest_src, earliest_dst = a + 1 + src[2], b + dst[1]
    return earliest_dst <= latest_src and (a + src[1]) - (b + 1 + dst[2]) <= 30


def test_meterhub_migrates_an_org_under_live_changes_with_every_cell_equal(meterhub_dag, topo, endpoints,
                                                                           reports) -> None:
    live = LiveChanges(topo, endpoints)
    live.start()
    started = time.monotonic()
    try:
        dagrun = meterhub_dag.test(run_conf={"tenant_id": ORG, "platform": "meterhub", **FAST})
    finally:
        live.stop.set()
        live.join()
    wall = time.monotonic() - started
    states = {ti.task_id: str(ti.state) for ti in dagrun.get_task_instances()}
    assert live.error is None, live.error
    assert str(dagrun.state) == "success", states
    assert live.counts["insert"] > 0 and live.counts["readings"] > 0, live.counts
    assert False in live.switch_seen, "the admin API never had the org's registrations suspended"
    assert live.registrations_open(), "registrations are still suspended after the run"
    with admin(topo, "target") as tconn:
        standby = [r[0] for r in tconn.execute(
            "SELECT detail->>'state' FROM tm_control.events WHERE run_id = %s AND step = 'run_standby' ORDER BY "
            "event_id", (f"{dagrun.dag_id}/{dagrun.run_id}",))]
    assert standby == ["made", "dropped"], f"the run's own standby (replica mode promote): {standby}"
    with admin(topo, "standby") as src, admin(topo, "target") as dst:
        compared, tenant_rows = 0, {}
        for table in TMAP.load_order():
            a, b = _rows(src, table), _rows(dst, table)
            assert a == b, f"hub.{table}: {len(a)} rows on the source, {len(b)} on the target"
            compared += len(a)
            tenant_rows[table] = len(b)
        totals = {t: dst.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("hub", t))).fetchone()[0]
                  for t in TMAP.load_order()}
        strays = {t: n - tenant_rows[t] for t, n in totals.items() if n != tenant_rows[t]}
        assert not strays, f"rows of another org or of nobody reached the target: {strays}"
        assert dst.execute("SELECT count(*) FROM hub.sites WHERE site_id <= 0 AND org_id = %s", (ORG,)).fetchone()[0] \
            == 4, "the org's keys -3, -2, -1 and 0 were migrated"
        for table in TMAP.shared_tables:  # the platform's own reference data: copied whole
            assert _all(src, table) == _all(dst, table), f"shared hub.{table} differs"
        site_meters = [(r[0], r[1]) for r in src.execute(
            "SELECT m.site_key, m.meter_uid FROM hub.meters m JOIN hub.sites s USING (site_id) WHERE s.org_id = %s",
            (ORG,))]
    days = [(datetime.now(UTC) - timedelta(days=d)).date() for d in range(generate.PRESETS["tiny"].rollup_days + 1)]
    with endpoints.cassandra_source.session() as s, endpoints.cassandra_target.session() as t:
        a, b = _cells(s, site_meters, days), _cells(t, site_meters, days)
        assert set(a) == set(b), f"{len(set(a) - set(b))} cells only on the source, {len(set(b) - set(a))} on the target"
        mismatched = [k for k in a if not _equal(a[k], b[k])]
        assert not mismatched, f"{len(mismatched)} rows differ, e.g. {mismatched[:3]}: {a[mismatched[0]][0]} / {b[mismatched[0]][0]}"
        for table, kind in (("readings", "readings"), ("daily_rollups", "rollups")):
            on_target = t.execute(f"SELECT count(*) FROM hub_metrics.{table}", timeout=60).one()[0]
            ours = sum(1 for k in b if k[0] == kind)
            assert on_target == ours, f"{on_target - ours} rows of hub_metrics.{table} on the target are not the org's"
    big = max(sum(1 for k in a if k[0] == "readings" and k[2] == uid) for _, uid in site_meters)
    assert big > 5_000, "a partition larger than a driver page was compared"
    print(f"\n[meterhub] DAG wall {wall:.1f}s; rows compared {compared}; Cassandra rows compared {len(a)} (largest "
          f"partition {big}); mismatches 0; live changes {live.counts}")


def _all(conn: psycopg.Connection, table: str) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in conn.execute(sql.SQL("SELECT * FROM {} ORDER BY 1").format(sql.Identifier("hub", table)))]


def _equal(a: tuple, b: tuple) -> bool:
    """Values and write times equal; each TTL on the target expiring no later than the source's,
    and earlier by at most the copy's lag."""
    va, vb = a[0], b[0]
    if len(va) == 11:  # readings: kwh wt ttl | flags wt ttl | phases | attrs wt | label wt
        same = [0, 1, 3, 4, 6, 7, 8, 9, 10]
        return all(va[i] == vb[i] for i in same) and _ttl_ok(va[2], vb[2], a, b) and _ttl_ok(va[5], vb[5], a, b)
    return va[:3] == vb[:3] and _ttl_ok(va[3], vb[3], a, b)
