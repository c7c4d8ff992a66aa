"""The page's data (``live``) on the real ledger for the runs the browser test does not make: a
rehearsal in its critical window and a rollback's way back, beside a run of no DAG of the page.
The migration itself, in a browser, is ``tests/e2e/test_live_page.py``."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tenant_migration import ledger, live

pytestmark = pytest.mark.integration


@pytest.fixture
def runs(target_admin) -> Any:
    tag = uuid.uuid4().hex[:8]
    made = {"rehearsal": f"tenant_rehearsal/live-{tag}", "back": f"tenant_rollback/live-{tag}/back",
            "other": f"it/live-{tag}"}
    ledger.ensure_schema(target_admin)
    for i, run_id in enumerate(made.values()):
        ledger.start_run(target_admin, run_id, 4300 + i, "live-test", {"tenant_id": 4300 + i, "platform": "sample"})
    try:
        yield made
    finally:
        for run_id in made.values():
            ledger.finish_run(target_admin, run_id, "aborted")


def test_a_rehearsal_in_its_window_and_a_rollback_on_the_page(target_admin, runs) -> None:
    now = datetime.now(UTC)
    reh, back = runs["rehearsal"], runs["back"]
    ledger.record_event(target_admin, reh, "preflight", "finished", {"slug": "test-pool", "platform": "sample"})
    ledger.record_event(target_admin, reh, "registrations_suspended", "info",
                        {"suspended_until": (now + timedelta(minutes=10)).isoformat()})
    ledger.record_event(target_admin, back, "check_rollback", "info", {"slug": "acme-sensors"})
    ledger.plan_chunks(target_admin, back, [
        ledger.Chunk("back:00:devices", "postgres", "devices", {"planned_rows": 40}),
        ledger.Chunk("back:01:tenants", "postgres", "tenants", {"planned_rows": 1})])
    with target_admin.transaction():
        ledger.mark_chunk_done(target_admin, back, "back:00:devices", 40, 4000, "a", "a")

    listed = {r["run"]: r for r in live.runs(target_admin, limit=500)}
    assert runs["other"] not in listed  # not a run of the page's DAGs
    r, b = listed[reh], listed[back]
    assert (r["dag_id"], r["slug"], r["phase"], r["platform"], r["way_back"]) == \
        ("tenant_rehearsal", "test-pool", "go", "sample", False)
    assert (b["dag_id"], b["dag_run_id"], b["slug"], b["phase"], b["way_back"]) == \
        ("tenant_rollback", back.split("/")[1], "acme-sensors", "rollback", True)

    detail = live.run_detail(target_admin, reh, now=now + timedelta(minutes=2))
    assert detail is not None and detail["suspension"]["active"] is True
    assert 470 < detail["suspension"]["seconds_left"] <= 480
    ledger.record_event(target_admin, reh, "registrations_resumed", "info", {})
    sus = live.run_detail(target_admin, reh)["suspension"]
    assert sus["active"] is False and sus["resumed_at"] and sus["seconds_left"] is None

    way_back = live.run_detail(target_admin, back)
    (pg,) = way_back["stores"]
    assert (pg["chunks"], pg["chunks_done"], pg["planned"], pg["done"], pg["rows_done"]) == (2, 1, 41.0, 40.0, 40)
    assert pg["rate"] == round(40 / live.RATE_WINDOW_S, 3) and pg["eta_s"] == round(1 / pg["rate"], 1)
    assert way_back["copy_series"]["postgres"][-1][1] > 0 and way_back["suspension"] is None


def test_dns_mid_shift_shows_each_records_answers_and_weights(topo, endpoints, tiny_dataset) -> None:
    """Route53 (moto) half-way through a weighted shift: the page says both answers with their
    weights and 50 % to the dedicated deployment; at the end, one answer, 100 %."""
    from types import SimpleNamespace

    from tenant_migration.cutover import dns
    from tenant_migration.flows.common import dns_plans, profile_of
    from tenant_migration.sample import data

    slug = data.TENANT_SLUGS[1]
    spec = {"platform": "sample", "dns_zone": "iot.example.test.", "target_endpoint_prefix": "vpc"}
    run = {"slug": slug, "tenant_id": 2}
    view = SimpleNamespace(**spec, tenant_id=2)
    plans = dns_plans(view, slug, profile_of(view))
    r53 = endpoints.aws.client("route53")
    zid = dns.zone_id(r53, spec["dns_zone"])
    try:
        dns.shift_records(r53, zid, plans, 50, ttl=30)
        shown = live.dns_now(endpoints, run, spec)
        assert isinstance(shown, list) and {r["name"] for r in shown} == {p.name for p in plans}
        for r in shown:
            assert r["to_dedicated_pct"] == 50
            assert sorted((a["value"], a["weight"]) for a in r["answers"]) == sorted(
                [(r["shared"], 50), (r["dedicated"], 50)])
        dns.point_records(r53, zid, plans, to_tenant=True, ttl=30)
        assert {(r["to_dedicated_pct"], len(r["answers"])) for r in live.dns_now(endpoints, run, spec)} == {(100, 1)}
    finally:
        dns.point_records(r53, zid, plans, to_tenant=False, ttl=300)
    assert live.dns_now(endpoints, {"slug": None, "tenant_id": 2}, spec) == \
        "the preflight has not found the tenant's slug yet"
