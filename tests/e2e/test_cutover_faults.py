"""Writes after the flip that nobody copies, tried as the on-call engineer would: a real Airflow
(``airflow standalone``), the migration triggered through the REST API with the form's conf, and a
simulated fleet of the tenant writing through its DNS records the whole run.

(a) The DNS control plane (the moto server) goes down while the TTL wait before the flip runs, so
    ``flip_dns`` fails; it comes back empty and is re-seeded with the tenant's records on the shared
    platform at a long TTL. The runbook's clear (only failed, with downstream) resumes the run:
    ``flip_dns`` suspends registrations again (the teardown had resumed them), lowers the TTL again
    and waits it out again; the clients that fetched the long-TTL answer keep writing to the shared
    platform after the flip, and the drain waits for them.
(b) Some clients ignore TTLs: they keep the shared platform's answer until 15 s into the drain,
    far past its nominal 3 s + 4 s quiet; the drain waits until they stop.

Both: the run succeeds and the fleet's journal shows every acknowledged write on the target.
Before the fix both runs succeeded too, with acknowledged writes missing on the target.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from fleet_run import FleetRun, check_nothing_lost, fleet_config, prepare
from helpers import admin, unpaused_standalone

from tenant_migration.sample import aws, data
from tenant_migration.stack import moto
from tenant_migration.stack.airflow_rest import AirflowRest

pytestmark = pytest.mark.e2e

DAG = "tenant_migration"
TENANT = 4
NORMAL_TTL = 4  # the records' TTL before the run (what the TTL wait waits out)
LONG_TTL = 20  # the TTL the control plane comes back with in (a)
PINNED_INTO_DRAIN = 15  # (b): how long into the drain the clients that ignore TTLs keep the shared platform
FORM = {"tenant_id": TENANT, "require_approval": False, "lowered_ttl": 2, "max_ttl_wait_s": NORMAL_TTL,
        "drain_seconds": 3, "drain_quiet_s": 4, "drain_max_s": 240, "load_rate": 0,
        "min_task_seconds": 0, "max_tasks": 2}


@pytest.fixture(scope="module")
def airflow(topo, tmp_path_factory) -> Iterator[AirflowRest]:
    yield from unpaused_standalone(topo, tmp_path_factory.mktemp("airflow") / "standalone.log", DAG)


def _states(api: AirflowRest, run_id: str) -> dict[str, str]:
    return {ti["task_id"]: str(ti["state"]) for ti in api.task_instances(DAG, run_id) if ti["map_index"] == -1}


def _wait_task(api: AirflowRest, run_id: str, task: str, states: set[str], timeout: float = 900) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = _states(api, run_id).get(task)
        if state in states:
            return state
        time.sleep(0.5)
    raise AssertionError(f"{task} never reached {states} within {timeout}s: {_states(api, run_id)}")


def _ledger(topo, run_id: str) -> tuple[str, list[tuple[str, str, dict]]]:
    key = f"{DAG}/{run_id}"
    with admin(topo, "target") as t:
        status = t.execute("SELECT status FROM tm_control.runs WHERE run_id = %s", (key,)).fetchone()[0]
        events = [(r[0], r[1], r[2]) for r in t.execute(
            "SELECT step, kind, detail FROM tm_control.events WHERE run_id = %s ORDER BY event_id", (key,))]
    return str(status), events


def test_a_control_plane_outage_during_the_flip_loses_no_write(airflow, topo, endpoints, tiny_dataset,
                                                              tmp_path) -> None:
    slug = prepare(topo, endpoints, TENANT, NORMAL_TTL)
    with FleetRun(endpoints, fleet_config(TENANT, slug), tmp_path / "journal.jsonl") as fleet:
        run_id = airflow.trigger(DAG, airflow.form_conf(DAG, **FORM))
        _wait_task(airflow, run_id, "go.lower_dns_ttl", {"running"})
        time.sleep(1)  # the TTL is lowered; the task waits out the old one
        moto.down(topo)  # the DNS control plane fails: flip_dns cannot reach it
        assert _wait_task(airflow, run_id, "go.flip_dns", {"failed", "success"}) == "failed"
        assert airflow.wait_run(DAG, run_id) == "failed"
        first = _states(airflow, run_id)
        # The teardown resumed registrations (the tenant can register while nobody knows how long
        # the outage lasts) and says so in red; the slot is kept for the resume.
        assert first["go.resume_registrations"] == "failed" and first["drop_cdc_slot"] == "failed", first

        # The control plane comes back empty; the platform's records are restored on the shared
        # platform at their long TTL. Clients fetch that answer from now on.
        moto.up(topo)
        r53 = endpoints.aws.client("route53")
        aws.seed_dns(r53, list(data.TENANT_SLUGS), reset=False, ttl=LONG_TTL)
        aws.seed_rds(endpoints.aws.client("rds"))
        time.sleep(3)

        # The runbook's clear: only failed, with downstream, from flip_dns.
        airflow.call("POST", f"/dags/{DAG}/clearTaskInstances", {
            "dry_run": False, "dag_run_id": run_id, "task_ids": ["go.flip_dns"], "only_failed": True,
            "include_downstream": True, "reset_dag_runs": True})
        assert airflow.wait_run(DAG, run_id) == "success", {k: v for k, v in _states(airflow, run_id).items()
                                                            if v != "success"}
    status, events = _ledger(topo, run_id)
    assert status == "succeeded"
    lowered = [d for s, k, d in events if s == "dns_ttl_lowered"]
    assert [d["by"] for d in lowered] == ["lower_dns_ttl", "flip_dns"], lowered
    assert set(lowered[1]["found_above"].values()) == {LONG_TTL}, "the flip found the long TTL and lowered again"
    suspended = [d.get("by") for s, k, d in events if s == "registrations_suspended"]
    assert suspended == [None, "flip_dns"], "the flip suspended registrations again before flipping"
    drain = next(d for s, k, d in reversed(events) if s == "drain_stragglers" and k == "finished")
    print("drain:", {k: drain[k] for k in ("seconds", "quiet_seconds", "passes", "late_cells", "changes",
                                            "newest_write")})
    assert drain["quiet_seconds"] >= FORM["drain_quiet_s"]
    _, rep = check_nothing_lost(fleet, endpoints, f"{DAG}/{run_id}", tmp_path)
    assert rep.stragglers["after_drain"] == 0, rep.stragglers


def test_clients_that_ignore_ttls_are_waited_for(airflow, topo, endpoints, tiny_dataset, tmp_path) -> None:
    slug = prepare(topo, endpoints, TENANT, NORMAL_TTL)
    cfg = fleet_config(TENANT, slug, pin_seconds=3600)
    fleet_run = FleetRun(endpoints, cfg, tmp_path / "journal.jsonl")
    # The DNS caches of two active devices (writing twice a second each) ignore TTLs: they never
    # re-resolve by themselves. (A straggler writing a few times an hour needs a quiet window
    # longer than its interval; gate_final catches what a shorter one lets through.)
    fleet_run.fleet.resolver.pinned = frozenset(f"dev{d % cfg.dns_clients}" for d in fleet_run.fleet.active[:2])
    with fleet_run as fleet:
        run_id = airflow.trigger(DAG, airflow.form_conf(DAG, **FORM))
        _wait_task(airflow, run_id, "go.drain_stragglers", {"running"})
        time.sleep(PINNED_INTO_DRAIN)  # far past the drain's nominal drain_seconds + drain_quiet_s
        fleet.fleet.resolver.release_pins()  # the pinned devices restart and resolve again
        assert airflow.wait_run(DAG, run_id) == "success", {k: v for k, v in _states(airflow, run_id).items()
                                                            if v != "success"}
        assert _states(airflow, run_id)["go.drain_stragglers"] == "success"
    status, events = _ledger(topo, run_id)
    assert status == "succeeded"
    drain = next(d for s, k, d in reversed(events) if s == "drain_stragglers" and k == "finished")
    print("drain:", {k: drain[k] for k in ("seconds", "quiet_seconds", "passes", "late_cells", "changes",
                                            "newest_write")})
    assert drain["late_cells"] > 0, "the pinned clients wrote to the shared platform after the flip"
    assert drain["seconds"] >= PINNED_INTO_DRAIN + FORM["drain_quiet_s"], "the drain waited for the pinned clients"
    _, rep = check_nothing_lost(fleet, endpoints, f"{DAG}/{run_id}", tmp_path)
    assert rep.stragglers["after_drain"] == 0, rep.stragglers


DEFERRED_TTL = 20  # the records' TTL before the run: the TTL wait is that long, in the triggerer


def test_the_ttl_wait_is_deferred_and_holds_no_slot(airflow, topo, endpoints, tiny_dataset, tmp_path) -> None:
    """Waiting out the old TTL hands the wait to the triggerer: the task is ``deferred``, its pool
    slot free, and it ends at the deadline the ledger recorded when the TTL was lowered."""
    slug = prepare(topo, endpoints, TENANT, DEFERRED_TTL)
    with FleetRun(endpoints, fleet_config(TENANT, slug), tmp_path / "journal.jsonl") as fleet:
        run_id = airflow.trigger(DAG, airflow.form_conf(DAG, **{**FORM, "max_ttl_wait_s": DEFERRED_TTL}))
        assert _wait_task(airflow, run_id, "go.lower_dns_ttl", {"deferred", "success", "failed"}) == "deferred"
        pool = airflow.call("GET", "/pools/default_pool")
        running = sorted(k for k, v in _states(airflow, run_id).items() if v == "running")
        assert _states(airflow, run_id)["go.lower_dns_ttl"] == "deferred"
        assert airflow.wait_run(DAG, run_id) == "success", {k: v for k, v in _states(airflow, run_id).items()
                                                            if v != "success"}
    print(f"during the TTL wait: default_pool {pool}; running: {running}")
    assert pool["deferred_slots"] >= 1 and not pool["include_deferred"]
    assert pool["occupied_slots"] == pool["running_slots"] + pool["queued_slots"], pool  # the wait holds no slot
    ti = airflow.call("GET", f"/dags/{DAG}/dagRuns/{run_id}/taskInstances/go.lower_dns_ttl")
    with admin(topo, "target") as t:
        lowered = t.execute("SELECT at, detail FROM tm_control.events WHERE run_id = %s AND step = 'dns_ttl_lowered' "
                            "ORDER BY event_id", (f"{DAG}/{run_id}",)).fetchall()
    assert len(lowered) == 1, lowered  # lowered once; the flip found it done and waited nothing more
    at, detail = lowered[0]
    deadline = at + timedelta(seconds=float(detail["wait_s"]))
    ended = datetime.fromisoformat(ti["end_date"])
    assert float(detail["wait_s"]) == DEFERRED_TTL and ended >= deadline, (ended, deadline)
    print(f"TTL lowered at {at.isoformat()}, deadline {deadline.isoformat()}, the deferred task ended "
          f"{(ended - deadline).total_seconds():.2f} s after it (try {ti['try_number']})")
    check_nothing_lost(fleet, endpoints, f"{DAG}/{run_id}", tmp_path)
