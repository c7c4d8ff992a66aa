"""The walking-skeleton DAG end to end through ``dag.test()`` on the local stack (tiny dataset)."""

from __future__ import annotations

import logging
import re

import pytest
from helpers import admin, ledger_runs

from tenant_migration.cutover import dns
from tenant_migration.sample import data, dns_records
from tenant_migration.spec import MigrationSpec

pytestmark = pytest.mark.e2e

TENANT = 4
# The approval is answered "not needed" (rehearsal mode); TTL wait and drain kept short for tests.
FAST = {"require_approval": False, "max_ttl_wait_s": 1, "drain_seconds": 3, "drain_quiet_s": 2, "load_rate": 100, "load_seconds": 2,
       "load_max_p99_ms": 2000, "load_min_rate_pct": 50}  # the load check runs beside the whole stack on 2 shared cores




def _states(dagrun) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in dagrun.get_task_instances()}


def test_dag_migrates_a_tenant_end_to_end(dag, topo, endpoints, reports, caplog, capfd) -> None:
    # With the weighted shift as the form sends it (the direct flip runs end to end in test_zero_downtime).
    caplog.set_level(logging.INFO, logger="tenant_migration")
    capfd.readouterr()
    dagrun = dag.test(run_conf={"tenant_id": TENANT, **FAST, "dns_shift_percent_steps": "50,100",
                                "dns_shift_dwell_s": 1})
    states = _states(dagrun)
    assert str(dagrun.state) == "success", states
    assert states.pop("go.approve_flip") == "skipped"  # rehearsal mode: no human in the loop
    assert set(states.values()) == {"success"}, states
    with admin(topo, "target") as t:
        run = t.execute("SELECT status FROM tm_control.runs WHERE tenant_id = %s ORDER BY started_at DESC LIMIT 1",
                        (TENANT,)).fetchone()
        assert run == ("succeeded",)
        assert t.execute("SELECT count(*) FROM platform.devices WHERE tenant_id = %s", (TENANT,)).fetchone()[0] > 0
        assert t.execute("SELECT count(*) FROM platform.devices WHERE tenant_id <> %s", (TENANT,)).fetchone() == (0,)
        shift = t.execute("SELECT gate, passed FROM tm_control.gates WHERE gate LIKE 'dns_shift_%%' AND run_id = "
                          "(SELECT run_id FROM tm_control.runs WHERE tenant_id = %s ORDER BY started_at DESC LIMIT 1)",
                          (TENANT,)).fetchall()
        assert shift == [("dns_shift_50", True)], "the gate between the 50 % and 100 % steps ran and passed"
    with admin(topo, "standby") as s:
        assert s.execute("SELECT pg_get_wal_replay_pause_state()").fetchone() == ("not paused",)
    r53 = endpoints.aws.client("route53")
    zid = dns.zone_id(r53, MigrationSpec.dns_zone)
    slug = data.TENANT_SLUGS[TENANT - 1]
    for plan in dns.tenant_records(dns_records(), MigrationSpec.dns_zone, slug):
        assert dns.resolve(r53, zid, plan.name)[1] == plan.tenant_target
    summaries = list(reports.rglob("summary.txt"))
    assert summaries and "DNS answer before and after" in summaries[0].read_text()
    # Every task's log names whose migration it is: the slug once the preflight found it.
    out = capfd.readouterr()
    text = caplog.text + out.out + out.err
    run = rf"run tenant_migration/{re.escape(dagrun.run_id)}"
    assert re.search(rf"tenant {TENANT} \(slug not known yet\) \| platform \S+ \| phase ready \| task preflight \| {run}",
                     text), text[-3000:]
    for phase, task in (("ready", r"ready\.copy_cassandra_batch\[0\]"), ("set", r"set\.gate_catch_up"),
                        ("finish", "gate_final")):
        assert re.search(rf"tenant {TENANT} \({slug}\) \| platform \S+ \| phase {phase} \| task {task} \| {run}",
                         text), (task, text[-3000:])


def test_dag_refuses_an_unknown_tenant_and_writes_nothing(dag, topo, reports) -> None:
    with admin(topo, "target") as t:
        before = ledger_runs(t)
    dagrun = dag.test(run_conf={"tenant_id": 987654, **FAST})
    states = _states(dagrun)
    assert str(dagrun.state) == "failed"
    assert states["preflight"] == "failed"
    assert states["ready.detach_replica"] in {"upstream_failed", "None"}
    with admin(topo, "target") as t:
        assert ledger_runs(t) == before
        assert t.execute("SELECT count(*) FROM platform.tenants").fetchone() == (0,)


def test_dry_run_writes_nothing(dag, topo, reports) -> None:
    dagrun = dag.test(run_conf={"tenant_id": TENANT, "dry_run": True, **FAST})
    assert str(dagrun.state) == "success", _states(dagrun)
    with admin(topo, "target") as t:
        assert t.execute("SELECT count(*) FROM platform.devices").fetchone() == (0,)
