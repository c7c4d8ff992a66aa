"""What the operator and the on-call engineer see of a run, in a real ``airflow standalone``: the run
note naming the tenant, each task log's first line, the extra links of a gate and of a copy batch
opening their evidence through the authenticated plugin, and the alerts a local webhook receiver
gets when a gate is broken on purpose and the run overruns its time budget.

The gate is broken for a real reason: a rogue ``ENABLE ALWAYS`` trigger on the target (a deployment
script's leftover) rewrites one device of the tenant when one of the device's properties is loaded.
Every chunk's own checksum still matches (the device's chunk was copied, checked and committed
before), so the copy succeeds and ``gate_post_copy``, which compares every table again, fails with
the device as evidence. The run's time budget is spent by moving the ledger's start of the run two
hours back once the preflight registered it: the next task's watch pages once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from collections.abc import Iterator

import httpx
import pytest
from helpers import WebhookReceiver, admin, rogue_trigger, unpaused_standalone

from tenant_migration import alerts
from tenant_migration.sample import data
from tenant_migration.stack.airflow_env import load_secrets
from tenant_migration.stack.airflow_rest import AirflowRest

pytestmark = pytest.mark.e2e

DAG = "tenant_migration"
TENANT = 3
SECRET = "e2e-webhook-secret-9f2"
FORM = {"tenant_id": TENANT, "chunk_rows": 100, "max_tasks": 1, "min_task_seconds": 0, "require_approval": False,
        "max_ttl_wait_s": 1, "drain_seconds": 3, "drain_quiet_s": 2, "load_rate": 100, "load_seconds": 2,
        "load_max_p99_ms": 2000, "load_min_rate_pct": 50, "time_budget_minutes": 60}


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as r:
        yield r


@pytest.fixture(scope="module")
def airflow(topo, receiver, tmp_path_factory) -> Iterator[AirflowRest]:
    """The standalone with ``tm_alerts`` pointing at the receiver (as a deployment sets it)."""
    yield from unpaused_standalone(topo, tmp_path_factory.mktemp("airflow") / "standalone.log", DAG,
                                   env={"AIRFLOW_CONN_TM_ALERTS": json.dumps(receiver.connection(SECRET))})


@pytest.fixture
def broken_gate(topo, tiny_dataset) -> Iterator[int]:
    """The rogue trigger: loading the tenant's newest property rewrites that property's device."""
    from tenant_migration.sample import platform

    platform.demo_reset(topo)
    with admin(topo, "primary") as p:
        prop, device = p.execute("SELECT p.property_id, p.device_id FROM platform.properties p JOIN platform.devices d "
                                 "USING (device_id) WHERE d.tenant_id = %s ORDER BY p.property_id DESC LIMIT 1",
                                 (TENANT,)).fetchone()
    with rogue_trigger(topo, "tm_test_rogue_device", "platform.properties", f"NEW.property_id = {int(prop)}",
                       "UPDATE platform.devices SET name = name || ' (rewritten)' WHERE device_id = NEW.device_id;",
                       timing="AFTER"):
        yield int(device)


def _spend_the_budget(topo, run_key: str, timeout: float = 300) -> None:
    """Once the preflight registered the run: its ledger start two hours back."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with admin(topo, "target") as t:
            if t.execute("UPDATE tm_control.runs SET started_at = started_at - interval '2 hours' WHERE run_id = %s",
                         (run_key,)).rowcount:
                return
        time.sleep(0.5)
    raise AssertionError(f"the preflight never registered {run_key}")


def _log(api: AirflowRest, run_id: str, task_id: str, map_index: int = -1) -> str:
    ti = api.call("GET", f"/dags/{DAG}/dagRuns/{run_id}/taskInstances/{task_id}" +
                  (f"/{map_index}" if map_index >= 0 else ""))
    path = f"/dags/{DAG}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{ti['try_number']}?map_index={map_index}"
    resp = httpx.get(f"{api.base}/api/v2{path}", headers={"Authorization": f"Bearer {api.token}",
                                                          "Accept": "application/json"}, timeout=60)
    assert resp.status_code == 200, resp.text[:500]
    content = resp.json()["content"]
    return "\n".join(e.get("event", "") if isinstance(e, dict) else str(e) for e in content)


def _give_up(api: AirflowRest, endpoints, topo, run_id: str) -> None:
    """The runbook's *Abort*: mark the ledger run aborted, clear the held teardowns; they release the
    replica and drop the run's slot (a failed run keeps both for a resume, ADR 7)."""
    from tenant_migration.abort import abort_run
    from tenant_migration.postgres.cdc import slot_name_for

    api.wait_run(DAG, run_id)
    with admin(topo, "target") as t:
        if t.execute("SELECT 1 FROM tm_control.runs WHERE run_id = %s", (f"{DAG}/{run_id}",)).fetchone() is None:
            return  # the preflight never registered it: nothing is held (the test's failure says why)
    abort_run(endpoints, f"{DAG}/{run_id}")
    api.call("POST", f"/dags/{DAG}/clearTaskInstances", {
        "dry_run": False, "dag_run_id": run_id, "task_ids": ["ready.reattach_replica", "drop_cdc_slot"],
        "only_failed": True, "reset_dag_runs": True})
    api.wait_run(DAG, run_id)
    with admin(topo, "primary") as p, admin(topo, "standby") as s:
        slots = p.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s",
                          (slot_name_for(f"{DAG}/{run_id}"),)).fetchone()[0]
        replay = s.execute("SELECT pg_get_wal_replay_pause_state()").fetchone()[0]
    assert (slots, replay) == (0, "not paused"), (slots, replay)


def test_the_operator_sees_the_tenant_the_evidence_and_gets_paged(airflow, receiver, broken_gate, topo,
                                                                  endpoints) -> None:
    run_id = airflow.trigger(DAG, airflow.form_conf(DAG, **FORM))
    try:
        _the_operator_sees(airflow, receiver, broken_gate, topo, run_id)
    finally:
        _give_up(airflow, endpoints, topo, run_id)


def _the_operator_sees(airflow: AirflowRest, receiver: WebhookReceiver, broken_gate: int, topo, run_id: str) -> None:
    slug = data.TENANT_SLUGS[TENANT - 1]
    _spend_the_budget(topo, f"{DAG}/{run_id}")
    assert airflow.wait_run(DAG, run_id) == "failed"
    states = {(ti["task_id"], ti["map_index"]): ti["state"] for ti in airflow.task_instances(DAG, run_id)}
    assert states[("ready.gate_post_copy", -1)] == "failed", states

    # 1. The run's note, set by the preflight through the REST API as the least-privilege user.
    note = airflow.call("GET", f"/dags/{DAG}/dagRuns/{run_id}")["note"]
    assert note.splitlines()[0] == f"tenant {TENANT} ({slug}) | platform sample", note
    # ... and each task's log begins with whose migration it is.
    first = _log(airflow, run_id, "ready.copy_postgres_batch", 0)
    assert re.search(rf"tenant {TENANT} \({slug}\) \| platform sample \| phase ready \| task "
                     rf"ready\.copy_postgres_batch\[0\] \| run {DAG}/{re.escape(run_id)}", first), first[:3000]

    # 2. The alerts: the gate, the held teardowns, the budget; signed, named, no secret.
    got = receiver.received
    bodies = [json.loads(r["body"]) for r in got]
    for r in got:
        want = "sha256=" + hmac.new(SECRET.encode(), r["body"], hashlib.sha256).hexdigest()
        assert r["headers"][alerts.SIGNATURE_HEADER] == want and r["path"] == "/hooks/migration"
    secrets = [SECRET, *load_secrets(topo).values()]
    assert not [s for s in secrets for r in got if s.encode() in r["body"]]
    kinds = sorted((b["kind"], b["task"]) for b in bodies)
    gate = [b for b in bodies if b["kind"] == "gate_failed"]
    assert [b["task"] for b in gate] == ["ready.gate_post_copy"], kinds
    assert gate[0]["tenant_id"] == TENANT and gate[0]["slug"] == slug and gate[0]["platform"] == "sample"
    assert "post_copy" in gate[0]["reason"] and "devices" in gate[0]["reason"], gate[0]
    assert gate[0]["runbook"].startswith("`preflight`, gates, `load_check` -> yes")
    assert [b["kind"] for b in bodies].count("over_budget") == 1, kinds
    held = {b["task"] for b in bodies if b["kind"] == "held"}
    assert held <= {"ready.reattach_replica", "drop_cdc_slot", "teardown.resume_registrations",
                    "resume_registrations"} and "ready.reattach_replica" in held, kinds
    assert not [b for b in bodies if b["kind"] == "task_failed"], kinds  # nothing else failed

    # 3. The extra links open the evidence through the plugin, behind Airflow's auth.
    auth = {"Authorization": f"Bearer {airflow.token}"}
    links = airflow.call("GET", f"/dags/{DAG}/dagRuns/{run_id}/taskInstances/ready.gate_post_copy/links")
    url = links["extra_links"]["Gate evidence"]
    assert gate[0]["evidence"] == url and gate[0]["text"].endswith(f"| open: {url}")  # the page from the pager
    assert httpx.get(url, timeout=30).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer not-a-token"}, timeout=30).status_code in (401, 403)
    hop = httpx.get(url, headers=auth, timeout=30)
    assert hop.status_code == 302, hop.text[:500]
    docs = httpx.get(hop.headers["location"], headers=auth, timeout=30)
    assert docs.status_code == 200 and "text/html" in docs.headers["content-type"]
    assert "post_copy" in docs.text and str(broken_gate) in docs.text, docs.text[:500]
    listed = httpx.get(url + "&list=1", headers=auth, timeout=30)
    assert listed.status_code == 200 and "failed" in listed.text and "post_copy" in listed.text
    outside = hop.headers["location"].split("/reports/")[0] + "/reports/tenant_migration/../../secrets.json"
    assert httpx.get(outside, headers=auth, timeout=30).status_code == 404

    batch_links = airflow.call("GET", f"/dags/{DAG}/dagRuns/{run_id}/taskInstances/ready.copy_postgres_batch/links"
                                      "?map_index=0")
    page = httpx.get(batch_links["extra_links"]["Chunks of this batch"], headers=auth, timeout=30)
    assert page.status_code == 200 and "the batch that begins with pg:" in page.text, page.text[:500]
    with admin(topo, "target") as t:
        done = t.execute("SELECT count(*) FROM tm_control.chunks WHERE run_id = %s AND engine = 'postgres' "
                         "AND status = 'done'", (f"{DAG}/{run_id}",)).fetchone()[0]
    assert f"{done} of {done} done" in page.text
    # What the operator saw, for the record (``pytest -s``).
    print("run note:", note, "\nlinks:", url, "->", hop.headers["location"], "|", page.url)
    print("alerts received:\n" + "\n".join(b["text"] for b in bodies))
