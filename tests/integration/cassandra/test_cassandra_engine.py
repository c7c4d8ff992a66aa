"""The Cassandra engine against the real source and target nodes at tiny scale: WRITETIME/TTL
carried, last-write-wins on re-copy, SIGKILL mid-chunk and resume, a broken cell caught by the
fingerprints naming its partition, other tenants never copied, catch-up, drain and warm-up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tenant_migration import ledger
from tenant_migration.cassandra import catchup, fingerprint, plan, warmup
from tenant_migration.cassandra.copy import CopyOptions, copy_pending
from tenant_migration.cassandra.plan import ReadGroup
from tenant_migration.endpoints import Endpoints
from tenant_migration.sample import SAMPLE_MAP, data
from tenant_migration.sample.expected import expected_counts
from tenant_migration.tenant_map import load_tenant_map

pytestmark = pytest.mark.integration

TMAP = load_tenant_map(SAMPLE_MAP)
TENANT = 2  # small, non-empty in the tiny preset
OTHER_TENANTS = (3, 4, 6)
TABLES = tuple(TMAP.cassandra_tables)


def _truncate_target(ep: Endpoints) -> None:
    with ep.cassandra_target.session() as dst:
        for t in TABLES:
            dst.execute(f"TRUNCATE telemetry.{t}", timeout=60)


class Run:
    """A ledger run of the Cassandra engine alone, with its plan."""

    def __init__(self, ep: Endpoints, tenant_id: int = TENANT, devices_per_chunk: int = 16) -> None:
        self.ep = ep
        self.tenant_id = tenant_id
        self.run_id = f"it-cql/{uuid.uuid4().hex[:10]}"
        with ep.target.connect() as t, ep.replica.connect(autocommit=True) as r, ep.cassandra_source.session() as s:
            ledger.ensure_schema(t)
            with t.transaction():
                t.execute("UPDATE tm_control.runs SET status = 'aborted' WHERE tenant_id = %s AND status = 'running'",
                          (tenant_id,))
            ledger.start_run(t, self.run_id, tenant_id, "it-cql", {})
            self.chunks = plan.plan_tenant(r, TMAP, tenant_id, datetime.now(UTC).date(),
                                           plan.PlanOptions(days=4, devices_per_chunk=devices_per_chunk), session=s)
            ledger.plan_chunks(t, self.run_id, self.chunks)

    def copy(self, **opts: Any) -> Any:
        return copy_pending(self.ep, self.run_id, TMAP, CopyOptions(**opts))

    def fingerprints(self) -> fingerprint.FingerprintReport:
        with self.ep.cassandra_source.session() as s, self.ep.cassandra_target.session() as d:
            return fingerprint.fingerprint_chunks(s, d, TMAP, self.chunks)

    def close(self) -> None:
        with self.ep.target.connect() as t:
            ledger.finish_run(t, self.run_id, "aborted")


@pytest.fixture
def fresh(tiny_dataset: dict, endpoints: Endpoints) -> Iterator[Run]:
    _truncate_target(endpoints)
    run = Run(endpoints)
    yield run
    run.close()


@pytest.fixture
def copied(fresh: Run) -> Run:
    report = fresh.copy(batch_rows=20)
    assert not report.chunks_failed
    return fresh


def _tenant_pairs(ep: Endpoints, tenant_id: int) -> list[tuple[int, int]]:
    with ep.replica.connect(autocommit=True) as r:
        return r.execute("SELECT p.device_id, p.property_id FROM platform.properties p JOIN platform.devices d "
                         "USING (device_id) WHERE d.tenant_id = %s ORDER BY 1, 2", (tenant_id,)).fetchall()


def _some_datapoint_partition(ep: Endpoints, day: Any) -> tuple[int, int]:
    with ep.cassandra_source.session() as src:
        for dev, prop in _tenant_pairs(ep, TENANT):
            if src.execute("SELECT ts FROM telemetry.datapoints WHERE device_id = %s AND property_id = %s AND day = %s "
                           "LIMIT 1", (dev, prop, day)).one() is not None:
                return dev, prop
    raise AssertionError("the tenant has no datapoints")


YESTERDAY = datetime.now(UTC).date() - timedelta(days=1)
DP_META = ("SELECT ts, value, quality, WRITETIME(value), WRITETIME(quality), TTL(value), TTL(quality) "
           "FROM telemetry.datapoints WHERE device_id = %s AND property_id = %s AND day = %s")


def test_copy_moves_exactly_the_tenants_rows(copied: Run, endpoints: Endpoints) -> None:
    expected = expected_counts(data.PRESETS["tiny"], 7)[TENANT]
    with endpoints.cassandra_target.session() as dst:
        for t in TABLES:
            assert dst.execute(f"SELECT count(*) FROM telemetry.{t}").one()[0] == expected[t], t
    with endpoints.target.connect() as t:
        rows = [r for r in ledger.chunk_rows(t, copied.run_id) if r["engine"] == "cassandra"]
    assert rows and all(r["status"] == "done" for r in rows)
    assert sum(r["rows_copied"] for r in rows) == sum(expected[t] for t in TABLES)


def test_writetime_and_ttl_survive_the_copy(copied: Run, endpoints: Endpoints) -> None:
    dev, prop = _some_datapoint_partition(endpoints, YESTERDAY)
    with endpoints.cassandra_source.session() as src, endpoints.cassandra_target.session() as dst:
        s_rows = sorted(src.execute(DP_META, (dev, prop, YESTERDAY)))
        d_rows = sorted(dst.execute(DP_META, (dev, prop, YESTERDAY)))
    assert len(s_rows) == len(d_rows) > 0
    for s, d in zip(s_rows, d_rows, strict=True):
        assert d[:5] == s[:5]  # ts, value, quality and both WRITETIMEs
        assert d[3] == int(s[0].replace(tzinfo=UTC).timestamp() * 1_000_000)  # the generator's writetime = ts
        for i in (5, 6):  # remaining TTL carried, never extended (read on the source first)
            assert s[i] is not None and d[i] is not None
            assert s[i] - 120 <= d[i] <= s[i]


def test_a_value_written_on_the_target_after_the_copy_survives_a_recopy(copied: Run, endpoints: Endpoints) -> None:
    dev, prop = _some_datapoint_partition(endpoints, YESTERDAY)
    with endpoints.cassandra_target.session() as dst:
        ts = dst.execute("SELECT ts FROM telemetry.datapoints WHERE device_id = %s AND property_id = %s AND day = %s "
                         "LIMIT 1", (dev, prop, YESTERDAY)).one()[0]
        newer = int(time.time() * 1_000_000)
        dst.execute("UPDATE telemetry.datapoints USING TIMESTAMP %s SET value = %s WHERE device_id = %s AND "
                    "property_id = %s AND day = %s AND ts = %s", (newer, -4242.0, dev, prop, YESTERDAY, ts))
    again = Run(endpoints)  # a second run re-copies every chunk
    try:
        assert again.copy().rows > 0
        with endpoints.cassandra_source.session() as s, endpoints.cassandra_target.session() as d:
            catchup.catch_up(s, d, TMAP, again.chunks, datetime.now(UTC), max_passes=1)
    finally:
        again.close()
    with endpoints.cassandra_target.session() as dst:
        row = dst.execute("SELECT value, WRITETIME(value) FROM telemetry.datapoints WHERE device_id = %s AND "
                          "property_id = %s AND day = %s AND ts = %s", (dev, prop, YESTERDAY, ts)).one()
    assert (row[0], row[1]) == (-4242.0, newer)


def test_sigkill_mid_chunk_then_resume_gives_the_same_final_state(tiny_dataset: dict, endpoints: Endpoints) -> None:
    _truncate_target(endpoints)
    fresh = Run(endpoints, devices_per_chunk=2)  # many small chunks, copied slowly: easy to kill inside one
    try:
        _kill_and_resume(fresh, endpoints)
    finally:
        fresh.close()


def _kill_and_resume(fresh: Run, endpoints: Endpoints) -> None:
    code = (
        "from tenant_migration.cassandra.copy import CopyOptions, copy_pending\n"
        "from tenant_migration.endpoints import Endpoints\n"
        "from tenant_migration.stack.topology import default_topology\n"
        "from tenant_migration.sample import SAMPLE_MAP\n"
        "from tenant_migration.tenant_map import load_tenant_map\n"
        "ep = Endpoints.from_file(default_topology().state_dir / 'connections.json')\n"
        f"copy_pending(ep, {fresh.run_id!r}, load_tenant_map(SAMPLE_MAP), CopyOptions(rows_per_second=40, fetch_size=20))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=os.environ.copy())
    try:
        deadline = time.monotonic() + 240
        while True:  # wait until the copier is inside a chunk, with some chunks already done
            with endpoints.target.connect() as t:
                states = {r["status"] for r in ledger.chunk_rows(t, fresh.run_id)}
                done = sum(r["status"] == "done" for r in ledger.chunk_rows(t, fresh.run_id))
            if "running" in states and done >= 1:
                break
            assert proc.poll() is None, "the copier finished before it could be killed"
            assert time.monotonic() < deadline, "the copier never started a chunk"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    with endpoints.target.connect() as t:
        left = ledger.pending_chunks(t, fresh.run_id, "cassandra")
    assert left and len(left) < len(fresh.chunks)
    assert not fresh.fingerprints().match  # interrupted: the target is incomplete
    report = fresh.copy()
    assert sorted(report.chunks_done) == sorted(c.chunk_id for c in left)
    fp = fresh.fingerprints()
    assert fp.match, fp.mismatched_partitions()[:5]
    expected = expected_counts(data.PRESETS["tiny"], 7)[TENANT]
    assert sum(c.target_rows for c in fp.chunks) == sum(expected[t] for t in TABLES)


def _break(kind: str, dst: Any, dev: int, prop: int, ts: Any) -> None:
    key = (dev, prop, YESTERDAY, ts)
    where = "WHERE device_id = %s AND property_id = %s AND day = %s AND ts = %s"
    wt = dst.execute(f"SELECT WRITETIME(value) FROM telemetry.datapoints {where}", key).one()[0]
    if kind == "value":
        dst.execute(f"UPDATE telemetry.datapoints USING TIMESTAMP %s SET value = %s {where}", (wt, 1e9, *key))
    elif kind == "writetime":
        dst.execute(f"UPDATE telemetry.datapoints USING TIMESTAMP %s SET quality = 0 {where}", (wt + 1, *key))
    elif kind == "missing row":
        dst.execute(f"DELETE FROM telemetry.datapoints USING TIMESTAMP %s {where}", (wt + 1, *key))
    elif kind == "extra row":
        dst.execute("INSERT INTO telemetry.datapoints (device_id, property_id, day, ts, value) VALUES (%s, %s, %s, %s, "
                    "1.0) USING TIMESTAMP %s", (dev, prop, YESTERDAY, datetime.now(UTC), wt))


@pytest.mark.parametrize("kind", [
    pytest.param("value", id="a changed value with the same writetime"),
    pytest.param("writetime", id="a cell rewritten with a newer writetime"),
    pytest.param("missing row", id="a row deleted on the target"),
    pytest.param("extra row", id="a row only on the target"),
])
def test_a_broken_cell_fails_the_fingerprint_naming_the_partition(copied: Run, endpoints: Endpoints,
                                                                  kind: str) -> None:
    assert copied.fingerprints().match
    dev, prop = _some_datapoint_partition(endpoints, YESTERDAY)
    with endpoints.cassandra_target.session() as dst:
        ts = dst.execute("SELECT ts FROM telemetry.datapoints WHERE device_id = %s AND property_id = %s AND day = %s "
                         "LIMIT 1", (dev, prop, YESTERDAY)).one()[0]
        _break(kind, dst, dev, prop, ts)
    report = copied.fingerprints()
    label = f"datapoints(device_id={dev}, property_id={prop}, day={YESTERDAY})"
    assert not report.match
    assert report.mismatched_partitions() == [label]
    bad = [r for r in report.records() if not r["match"]]
    assert len(bad) == 1 and bad[0]["table"] == "datapoints" and bad[0]["mismatched_partitions"] == 1
    assert report.partitions[0]["partition"] == label


def test_other_tenants_partitions_never_reach_the_target(copied: Run, endpoints: Endpoints) -> None:
    with endpoints.replica.connect(autocommit=True) as r:
        others = r.execute("SELECT device_id, tenant_id FROM platform.devices WHERE tenant_id = ANY(%s) "
                           "ORDER BY device_id", (list(OTHER_TENANTS),)).fetchall()
    with endpoints.cassandra_source.session() as src, endpoints.cassandra_target.session() as dst:
        checked = 0
        for dev, _tenant in others:
            if src.execute("SELECT device_id FROM telemetry.latest_values WHERE device_id = %s LIMIT 1",
                           (dev,)).one() is None:
                continue
            checked += 1
            assert dst.execute("SELECT device_id FROM telemetry.latest_values WHERE device_id = %s LIMIT 1",
                               (dev,)).one() is None
            assert dst.execute("SELECT device_id FROM telemetry.connection_events WHERE device_id = %s AND day = %s",
                               (dev, YESTERDAY)).one() is None
        assert checked >= 3, "the other tenants have too few devices with telemetry to check"


def test_catch_up_copies_late_writes_and_converges(copied: Run, endpoints: Endpoints) -> None:
    dev, prop = _some_datapoint_partition(endpoints, YESTERDAY)
    today = datetime.now(UTC).date()
    now = datetime.now(UTC).replace(microsecond=0)
    wt = int(now.timestamp() * 1_000_000)
    with endpoints.cassandra_source.session() as src:
        src.execute("INSERT INTO telemetry.datapoints (device_id, property_id, day, ts, value, quality) "
                    "VALUES (%s, %s, %s, %s, 7.5, 0) USING TIMESTAMP %s AND TTL 3600", (dev, prop, today, now, wt))
    try:
        with endpoints.cassandra_source.session() as s, endpoints.cassandra_target.session() as d:
            passes = catchup.catch_up(s, d, TMAP, copied.chunks, now - timedelta(minutes=1),
                                      safety_margin=timedelta(minutes=5))
            drained = catchup.drain_stragglers(s, d, TMAP, copied.chunks, now, duration=timedelta(0),
                                               poll_interval=timedelta(seconds=1))
            row = d.execute("SELECT value, WRITETIME(value), TTL(value) FROM telemetry.datapoints WHERE device_id = %s "
                            "AND property_id = %s AND day = %s AND ts = %s", (dev, prop, today, now)).one()
            hot = warmup.warm_up(d, TMAP, copied.chunks, sample=20)
    finally:
        with endpoints.cassandra_source.session() as src:
            src.execute("DELETE FROM telemetry.datapoints WHERE device_id = %s AND property_id = %s AND day = %s "
                        "AND ts = %s", (dev, prop, today, now))
    assert passes[-1].converged and passes[0].rows >= 1
    assert today.isoformat() in passes[0].days
    assert row is not None and row[0] == 7.5 and row[1] == wt and 0 < row[2] <= 3600
    assert len(drained) == 1 and drained[0].rows >= 1
    assert hot.hot_partitions > 0 and hot.warmed_rows > 0 and hot.before.reads > 0 and hot.after.reads > 0


def test_every_spelling_of_sha256_hashes_alike_and_sixteen_in_flight_equal_one_at_a_time(copied: Run,
                                                                                          endpoints: Endpoints) -> None:
    """``mask_hash`` keeps one digest per algorithm *name* on a node, and the JDK resolves SHA-256's
    25 spellings alike: a partition's digest is the same under each, and a read that gives every
    request in flight its own spelling comes out exactly as the same read one request at a time,
    every time -- equal on both sides of a sound copy, and to the target's one-spelling scan."""
    from dataclasses import replace

    from tenant_migration.cassandra.copy import table_shape

    opts = CopyOptions()
    with endpoints.cassandra_sessions() as (src, dst):
        shape = table_shape(src, "telemetry", "datapoints")
        members = [c for c in copied.chunks if c.table_name == "datapoints"]
        groups = [g for r in fingerprint._reads(members, shape, "day", opts, None) for g in r.groups]
        serial = fingerprint.aggregate_prints(src, shape, groups, replace(opts, read_concurrency=1))
        assert sum(p.rows for p in serial.values()) > 0
        one = sorted(serial, key=repr)[0]
        alike = {tuple(fingerprint.aggregate_prints(src, shape, [ReadGroup(tuple([v] for v in fingerprint._plain(one)))],
                                                    opts, (spelling,)).values()) for spelling in fingerprint.SHA256}
        assert alike == {(serial[one],)}
        for _ in range(3):
            assert fingerprint.aggregate_prints(src, shape, groups, replace(opts, read_concurrency=16)) == serial
        plain = {fingerprint._plain(k): v[:2] for k, v in serial.items()}
        assert {fingerprint._plain(k): v[:2] for k, v in fingerprint.aggregate_prints(dst, shape, groups).items()} == plain
        scanned = fingerprint.scan_prints(dst, shape, fingerprint._planned(groups))
        assert {fingerprint._plain(k): v[:2] for k, v in scanned.items()} == plain


def test_the_probe_finds_exactly_the_partitions_holding_rows_and_aggregates_only_those(copied: Run,
                                                                                      endpoints: Endpoints,
                                                                                      monkeypatch) -> None:
    """``aggregate_prints`` first finds the planned partitions holding rows (``SELECT DISTINCT``),
    then hashes those only: the same prints as hashing every planned partition, and the aggregate
    reads ask for fewer partitions than planned, of the devices holding rows only."""
    from tenant_migration.cassandra import copy as cql_copy
    from tenant_migration.cassandra import prints
    from tenant_migration.cassandra.copy import table_shape

    opts = CopyOptions()
    with endpoints.cassandra_sessions() as (src, _):
        shape = table_shape(src, "telemetry", "datapoints")
        members = [c for c in copied.chunks if c.table_name == "datapoints"]
        groups = [g for r in fingerprint._reads(members, shape, "day", opts, None) for g in r.groups]
        planned = fingerprint._planned(groups)
        everything = fingerprint.aggregate_prints(src, shape, groups, opts, probe=False)
        present = fingerprint.present_partitions(src, shape, fingerprint._sorted_merge(groups), planned, opts)
        assert present == {fingerprint._plain(k) for k in everything}
        assert 0 < len(present) < len(planned)  # the plan's day buckets are not all filled

        read: list[ReadGroup] = []
        real = cql_copy.iter_pages

        def spy(session, stmt, groups, **kwargs):
            groups = list(groups)
            if isinstance(stmt, tuple):  # the aggregate's spelled statements (the probe has one)
                read.extend(groups)
            return real(session, stmt, groups, **kwargs)
        monkeypatch.setattr(prints, "iter_pages", spy)  # the module that reads
        assert fingerprint.aggregate_prints(src, shape, groups, opts) == everything
        asked = {p for g in read for p in g.partitions()}
        assert present <= asked and len(asked) < len(planned)
        assert {p[0] for p in asked} == {p[0] for p in present}  # no device without rows is hashed
