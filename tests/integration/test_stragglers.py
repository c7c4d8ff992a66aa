"""Writes of the tenant that reach the shared platform after the flip (stragglers: clients that pin
the old DNS answer), on the real stack through the steps of the migration DAG in order:

- the drain lasts until they stop (beyond its nominal length), and copies them;
- a straggler that never stops fails the drain loudly, with the count and the newest write;
- a write after the drain ended fails ``gate_final`` with its key as evidence (Cassandra cell and
  relational change), and a clear of the drain brings it over so the gate passes.

Before the fix the drain lasted ``drain_seconds`` whatever arrived, and ``gate_final`` passed with
those writes missing on the target."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from helpers import admin, copy_on_the_snapshot

from tenant_migration import steps
from tenant_migration.cutover.drain import DrainNotQuiet
from tenant_migration.spec import MigrationSpec
from tenant_migration.validation.counts import GateFailed

pytestmark = pytest.mark.integration

TENANT = 6
FAST = {"lowered_ttl": 1, "max_ttl_wait_s": 0, "drain_seconds": 2, "drain_quiet_s": 3, "drain_max_s": 90}


def _spec(**over: Any) -> MigrationSpec:
    return MigrationSpec(**{"tenant_id": TENANT, **FAST, **over})


class Straggler:
    """A client of TENANT that kept the shared platform's answer: it writes datapoints of one of the
    tenant's devices to the shared cluster and renames one of its users on the shared primary."""

    def __init__(self, topo, endpoints) -> None:
        self.endpoints = endpoints
        with admin(topo, "primary") as p:
            self.device, self.prop = p.execute(
                "SELECT d.device_id, p.property_id FROM platform.devices d JOIN platform.properties p USING (device_id) "
                "WHERE d.tenant_id = %s ORDER BY 1, 2 LIMIT 1", (TENANT,)).fetchone()
            self.user = p.execute("SELECT user_id FROM platform.users WHERE tenant_id = %s ORDER BY 1 LIMIT 1",
                                  (TENANT,)).fetchone()[0]
        self.written: list[datetime] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def write(self) -> datetime:
        ts = datetime.now(UTC)
        with self.endpoints.cassandra_source.session() as src:
            src.execute("INSERT INTO telemetry.datapoints (device_id, property_id, day, ts, value, quality) "
                        "VALUES (%s, %s, %s, %s, %s, 1)", (self.device, self.prop, ts.date(), ts, 42.0))
        with self.endpoints.source_primary.connect(autocommit=True) as app:
            app.execute("UPDATE platform.users SET display_name = %s, updated_at = clock_timestamp() WHERE user_id = %s",
                        (f"straggler {uuid.uuid4().hex[:6]}", self.user))
        self.written.append(ts)
        return ts

    def start(self, every: float, for_seconds: float | None) -> None:
        def loop() -> None:
            end = time.monotonic() + (for_seconds if for_seconds is not None else 1e9)
            while not self._stop.is_set() and time.monotonic() < end:
                self.write()
                self._stop.wait(every)

        self._stop.clear()
        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def on_target(self, topo) -> tuple[set[datetime], str]:
        with self.endpoints.cassandra_target.session() as dst:
            rows = dst.execute("SELECT ts FROM telemetry.datapoints WHERE device_id = %s AND property_id = %s AND day = %s",
                               (self.device, self.prop, datetime.now(UTC).date())).all()
        with admin(topo, "target") as t:
            name = t.execute("SELECT display_name FROM platform.users WHERE user_id = %s", (self.user,)).fetchone()[0]
        return {r[0].replace(tzinfo=UTC) for r in rows}, name

    def source_name(self, topo) -> str:
        with admin(topo, "primary") as p:
            return p.execute("SELECT display_name FROM platform.users WHERE user_id = %s", (self.user,)).fetchone()[0]


def _ms(ts: datetime) -> datetime:
    return ts.replace(microsecond=ts.microsecond // 1000 * 1000)


@pytest.fixture
def flipped(topo, tiny_dataset, endpoints, reports):
    """TENANT migrated through the steps up to the flip (slot, detach, copy, catch-up, suspension)."""
    from tenant_migration.sample import platform

    platform.demo_reset(topo)
    spec = _spec()
    run_id = f"strag/{uuid.uuid4().hex[:8]}"
    pre = steps.preflight(endpoints, spec, run_id)
    slot = steps.create_cdc_slot(endpoints, spec, run_id)
    try:
        copy_on_the_snapshot(endpoints, spec, run_id, slot["consistent_lsn"])
        steps.catch_up_postgres(endpoints, spec, run_id)
        steps.catch_up_cassandra(endpoints, spec, run_id)
        steps.suspend_registrations(endpoints, spec, run_id)
        steps.final_catch_up(endpoints, spec, run_id)
        steps.lower_dns_ttl(endpoints, spec, run_id, pre["slug"])
        flip = steps.flip_dns(endpoints, spec, run_id, pre["slug"])
        yield spec, run_id, pre["slug"], flip
    finally:
        steps.resume_registrations(endpoints, spec, run_id, keep_for_resume=False)
        steps.drop_cdc_slot(endpoints, spec, run_id, keep_for_resume=False)


def _event(conn, run_id: str, step: str, kind: str) -> dict:
    return conn.execute("SELECT detail FROM tm_control.events WHERE run_id = %s AND step = %s AND kind = %s "
                        "ORDER BY event_id DESC LIMIT 1", (run_id, step, kind)).fetchone()[0]


def test_stragglers_after_the_flip_are_drained_or_fail_loudly_never_lost(topo, endpoints, flipped,
                                                                        target_admin) -> None:
    spec, run_id, slug, _ = flipped
    straggler = Straggler(topo, endpoints)

    # 1. A straggler writes for 8 s after the flip: the drain (2 s nominal) waits until it stopped.
    straggler.start(every=0.4, for_seconds=8)
    began = time.monotonic()
    try:
        drained = steps.drain_stragglers(endpoints, spec, run_id)
    finally:
        straggler.stop()
    took = time.monotonic() - began
    assert took >= 8 + spec.drain_quiet_s * 0.9, f"the drain ended after {took:.1f}s while the straggler wrote 8 s"
    assert drained["late_cells"] > 0 and drained["changes"] > 0 and drained["quiet_seconds"] >= spec.drain_quiet_s
    cells, name = straggler.on_target(topo)
    assert {_ms(t) for t in straggler.written} <= cells, "every straggler datapoint is on the target"
    assert name == straggler.source_name(topo), "the straggler's last rename is on the target"
    detail = _event(target_admin, run_id, "drain_stragglers", "finished")
    assert detail["newest_write"] is not None and detail["passes"] >= 3
    assert steps.gate_post_flip(endpoints, spec, run_id, slug, drained)["passed"]

    # 2. A straggler that never stops: the drain fails loudly at drain_max_s with what it saw.
    straggler.start(every=0.5, for_seconds=None)
    try:
        with pytest.raises(DrainNotQuiet, match=r"still reach the shared platform .* \(drain_max_s 10\): \d+ Cassandra "
                                                r"cells written there after the flip, \d+ relational changes drained, "
                                                r"newest write at 20\d\d-"):
            steps.drain_stragglers(endpoints, _spec(drain_max_s=10), run_id)
    finally:
        straggler.stop()
    assert _event(target_admin, run_id, "drain_not_quiet", "info")["late_cells"] > 0

    # 3. Drained (quiet now), then one more write after the drain ended: gate_final names it.
    steps.drain_stragglers(endpoints, spec, run_id)
    steps.resume_registrations(endpoints, spec, run_id)
    late = straggler.write()
    with pytest.raises(GateFailed, match=r"__after_flip_on_target") as exc:
        steps.gate_final(endpoints, spec, run_id)
    evidence = target_admin.execute("SELECT evidence FROM tm_control.gates WHERE run_id = %s AND gate = 'final' "
                                    "ORDER BY attempt DESC LIMIT 1", (run_id,)).fetchone()[0]
    failed = {c["name"]: c for c in evidence["checks"] if not c["success"]}
    assert set(failed) == {"cassandra:datapoints__after_flip_on_target", "postgres:change stream__after_flip_on_target"}
    offending = " | ".join(str(s) for c in failed.values() for s in c["details"]["sample"])
    assert f"'device_id': {straggler.device}" in offending and "value written at" in offending
    assert f"users UPDATE {{'user_id': '{straggler.user}'}}" in offending
    assert failed["cassandra:datapoints__after_flip_on_target"]["details"]["violations"] >= 1
    assert failed["postgres:change stream__after_flip_on_target"]["details"]["violations"] == 1
    assert str(straggler.device) in str(exc.value), "the task's message names the missing write"

    # The runbook's step: clear the drain (with downstream): it brings them over, the gate passes.
    steps.drain_stragglers(endpoints, spec, run_id)
    steps.resume_registrations(endpoints, spec, run_id)
    assert steps.gate_final(endpoints, spec, run_id)["passed"]
    cells, name = straggler.on_target(topo)
    assert _ms(late) in cells and name == straggler.source_name(topo)
    out = steps.report(endpoints, spec, run_id, flipped[3])
    summary = Path(out["summary"]).read_text()
    assert "after the flip" in summary, summary
