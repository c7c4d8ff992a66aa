"""Devices born after the detach: their Cassandra partitions are planned from the rows the change
stream brings, copied by the catch-up, and compared by the gates (the steps of the migration DAG,
in order, on the real stack). Before ``plan_late_partitions`` the catch-up re-read only the
partitions planned on the frozen replica: such a device's datapoints never reached the target,
and ``gate_catch_up`` passed."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from helpers import admin, copy_on_the_snapshot

from tenant_migration import ledger, steps
from tenant_migration.sample import SAMPLE_MAP
from tenant_migration.spec import MigrationSpec
from tenant_migration.tenant_map import load_tenant_map
from tenant_migration.validation.counts import GateFailed

pytestmark = pytest.mark.integration

TENANT = 2


def _new_device(topo, endpoints, offset: int, points: int) -> dict[str, Any]:
    """A device and a property of TENANT created on the shared primary now, and ``points``
    datapoints (today and yesterday) plus its latest value and a connection event written to the
    shared cluster, as a registering device does."""
    with admin(topo, "primary") as p:
        model = p.execute("SELECT model_id FROM platform.devices WHERE tenant_id = %s LIMIT 1", (TENANT,)).fetchone()[0]
        dev = p.execute("SELECT max(device_id) FROM platform.devices").fetchone()[0] + offset
        prop = p.execute("SELECT max(property_id) FROM platform.properties").fetchone()[0] + offset
        p.execute("INSERT INTO platform.devices (device_id, tenant_id, serial, model_id, name) VALUES (%s, %s, %s, %s, %s)",
                  (dev, TENANT, f"late-{uuid.uuid4().hex[:10]}", model, "born after the detach"))
        p.execute("INSERT INTO platform.properties (property_id, device_id, name, data_type) VALUES (%s, %s, 'temp', 'float')",
                  (prop, dev))
    now = datetime.now(UTC).replace(microsecond=0)
    days = [now.date(), now.date() - timedelta(days=1)]
    with endpoints.cassandra_source.session() as src:
        for i in range(points):
            ts = now - timedelta(days=i % 2, seconds=i)
            src.execute("INSERT INTO telemetry.datapoints (device_id, property_id, day, ts, value, quality) "
                        "VALUES (%s, %s, %s, %s, %s, 1)", (dev, prop, ts.date(), ts, float(i)))
        src.execute("INSERT INTO telemetry.latest_values (device_id, property_id, ts, value) VALUES (%s, %s, %s, 1.0)",
                    (dev, prop, now))
        src.execute("INSERT INTO telemetry.connection_events (device_id, day, ts, event) VALUES (%s, %s, %s, 'connect')",
                    (dev, now.date(), now))
    return {"device": dev, "property": prop, "days": days, "points": points}


def _drop_device(topo, endpoints, d: dict[str, Any]) -> None:
    with admin(topo, "primary") as p:
        p.execute("DELETE FROM platform.properties WHERE property_id = %s", (d["property"],))
        p.execute("DELETE FROM platform.devices WHERE device_id = %s", (d["device"],))
    with endpoints.cassandra_source.session() as src:
        for day in d["days"]:
            src.execute("DELETE FROM telemetry.datapoints WHERE device_id = %s AND property_id = %s AND day = %s",
                        (d["device"], d["property"], day))
            src.execute("DELETE FROM telemetry.connection_events WHERE device_id = %s AND day = %s", (d["device"], day))
        src.execute("DELETE FROM telemetry.latest_values WHERE device_id = %s", (d["device"],))


def _on_target(endpoints, d: dict[str, Any]) -> int:
    with endpoints.cassandra_target.session() as dst:
        return sum(len(dst.execute("SELECT ts FROM telemetry.datapoints WHERE device_id = %s AND property_id = %s "
                                   "AND day = %s", (d["device"], d["property"], day)).all()) for day in d["days"])


def test_devices_created_after_the_detach_are_planned_copied_and_gated(topo, tiny_dataset, endpoints, reports,
                                                                      target_admin) -> None:
    from tenant_migration.sample import platform

    platform.demo_reset(topo)
    spec = MigrationSpec(tenant_id=TENANT)  # the whole retention window, the default
    run_id = f"late/{uuid.uuid4().hex[:8]}"
    steps.preflight(endpoints, spec, run_id)
    slot = steps.create_cdc_slot(endpoints, spec, run_id)
    born: list[dict[str, Any]] = []
    try:
        copy_on_the_snapshot(endpoints, spec, run_id, slot["consistent_lsn"])
        born.append(_new_device(topo, endpoints, 1000, points=6))  # after the detach, before the catch-up
        steps.catch_up_postgres(endpoints, spec, run_id)
        out = steps.catch_up_cassandra(endpoints, spec, run_id)
        assert _on_target(endpoints, born[0]) == 6
        with endpoints.target.connect() as t:
            late = [c for c in ledger.run_chunks(t, run_id, "cassandra") if c.bounds.get("late")]
        assert {c.table_name for c in late} == {"datapoints", "latest_values", "connection_events"}
        assert {tuple(b) for c in late if c.table_name == "datapoints" for b in c.bounds["bases"]} == {
            (born[0]["device"], born[0]["property"])}
        with target_admin.cursor() as cur:
            cur.execute("SELECT detail FROM tm_control.events WHERE run_id = %s AND step = 'catch_up_cassandra' "
                        "AND kind = 'finished'", (run_id,))
            assert cur.fetchone()[0]["late_partitions"]["planned"] == len(late) == out["late_partitions"]["planned"]

        # Another device born after the catch-up: the gate's own catch-up brings its rows, and its
        # partitions are planned and copied before the gate measures.
        born.append(_new_device(topo, endpoints, 2000, points=4))
        assert steps.gate_catch_up(endpoints, spec, run_id)["passed"]
        assert _on_target(endpoints, born[1]) == 4
        evidence = target_admin.execute("SELECT evidence FROM tm_control.gates WHERE run_id = %s AND gate = 'catch_up' "
                                        "ORDER BY attempt DESC LIMIT 1", (run_id,)).fetchone()[0]
        planned = {c["name"]: c["success"] for c in evidence["checks"] if c["name"].endswith("__every_row_planned")}
        assert planned and all(planned.values()), planned
        with endpoints.target.connect() as t:
            frame = steps.late_frame(endpoints, t, load_tenant_map(SAMPLE_MAP), run_id)  # what post_flip and final compare
        assert (frame["source_rows"] == frame["target_rows"]).all() and frame["source_rows"].sum() >= 10 + 2 * 2
        assert (frame["source_checksum"] == frame["target_checksum"]).all()

        # Break on purpose: a late device's datapoints of today gone from the target; the gate names
        # its chunk. (The first device's: the catch-up gates compare the cells written before the last
        # Cassandra catch-up began; the second device's later cells are compared by post_flip and final.)
        with endpoints.cassandra_target.session() as dst:
            dst.execute("DELETE FROM telemetry.datapoints WHERE device_id = %s AND property_id = %s AND day = %s",
                        (born[0]["device"], born[0]["property"], born[0]["days"][0]))
        with endpoints.target.connect() as t:
            late_ids = {c.chunk_id for c in ledger.run_chunks(t, run_id, "cassandra") if c.bounds.get("late")
                        and c.table_name == "datapoints" and [born[0]["device"], born[0]["property"]] in c.bounds["bases"]}
        with pytest.raises(GateFailed) as failed:
            steps.gate_catch_up(endpoints, spec, run_id)
        assert "recent_buckets.datapoints" in str(failed.value) and "target '(no row)'" in str(failed.value)
        assert any(i in str(failed.value) for i in late_ids), (late_ids, str(failed.value))
        with endpoints.target.connect() as t:  # and what post_flip and final compare sees it too
            frame = steps.late_frame(endpoints, t, load_tenant_map(SAMPLE_MAP), run_id)
        assert set(frame[frame["source_rows"] != frame["target_rows"]]["unit"]) <= late_ids
        assert (frame["source_rows"] != frame["target_rows"]).any()
    finally:
        for d in born:
            _drop_device(topo, endpoints, d)
        steps.drop_cdc_slot(endpoints, spec, run_id, keep_for_resume=False)
        with endpoints.target.connect() as t:
            ledger.finish_run(t, run_id, "aborted")
