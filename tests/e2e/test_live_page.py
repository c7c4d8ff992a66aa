"""The "Tenant migrations" page in a real browser: ``airflow standalone`` on the test stack, a
migration of the tiny dataset, and headless Chromium (Debian's, driven by playwright) through the
Airflow login -> the page in the UI's navigation -> the live run -> the same page once the run is
done (it refreshes itself: no reload) -> a gate's Data Docs. What the page shows is checked against
the ledger and Route53; its JSON endpoints against the real api-server's auth. Screenshots go to
``$TM_TEST_OUTPUT`` (default ``.stack/test-output/live-page/``)."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from helpers import admin, unpaused_standalone

from tenant_migration.sample import data
from tenant_migration.stack.airflow_env import load_secrets
from tenant_migration.stack.airflow_rest import AirflowRest

pytestmark = pytest.mark.e2e

DAG = "tenant_migration"
TENANT = 2
FORM = {"tenant_id": TENANT, "chunk_rows": 100, "max_tasks": 2, "min_task_seconds": 0, "require_approval": False,
        "max_ttl_wait_s": 1, "drain_seconds": 3, "drain_quiet_s": 2, "load_rate": 100, "load_seconds": 2,
        "load_max_p99_ms": 2000, "load_min_rate_pct": 50}


@pytest.fixture(scope="module")
def airflow(topo, tmp_path_factory) -> Iterator[AirflowRest]:
    yield from unpaused_standalone(topo, tmp_path_factory.mktemp("airflow") / "standalone.log", DAG)


@pytest.fixture(scope="module")
def chromium() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    exe = shutil.which("chromium")
    assert exe, "Debian's chromium is missing: `make system-deps` installs it"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def shots(topo) -> Path:
    out = Path(os.environ.get("TM_TEST_OUTPUT") or topo.state_dir / "test-output") / "live-page"
    out.mkdir(parents=True, exist_ok=True)
    return out


def _ledger(topo, run_key: str) -> dict:
    with admin(topo, "target") as t:
        chunks = {e: (n, rows) for e, n, rows in t.execute(
            "SELECT engine, count(*), sum(coalesce(rows_copied, 0)) FROM tm_control.chunks WHERE run_id = %s "
            "AND status = 'done' GROUP BY 1", (run_key,))}
        gates = t.execute("SELECT gate FROM tm_control.gates WHERE run_id = %s AND passed", (run_key,)).fetchall()
    return {"chunks": chunks, "gates": {g for (g,) in gates}}


def _wait_ledger_chunks(topo, run_key: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with admin(topo, "target") as t:
            if t.execute("SELECT count(*) FROM tm_control.chunks WHERE run_id = %s", (run_key,)).fetchone()[0]:
                return
        time.sleep(0.5)
    raise AssertionError(f"no chunk planned for {run_key} in {timeout}s")


def test_the_page_needs_a_login_and_shows_no_secret(airflow, topo) -> None:
    base = airflow.base
    for path in ("/tenant-migration/", "/tenant-migration/api/runs",
                 f"/tenant-migration/api/run?dag_id={DAG}&run={DAG}/x"):
        assert httpx.get(base + path, timeout=30).status_code == 401, path
        assert httpx.get(base + path, headers={"Authorization": "Bearer forged"}, timeout=30).status_code in (401, 403)
    ok = httpx.get(base + "/tenant-migration/api/runs", headers={"Authorization": f"Bearer {airflow.token}"}, timeout=30)
    assert ok.status_code == 200
    _no_secret(topo, ok.text)


def _no_secret(topo, body: str) -> None:
    assert not [s for s in load_secrets(topo).values() if s in body]
    assert "postgresql://" not in body and "password" not in body.lower()


def test_an_operator_follows_a_migration_on_the_page(airflow, chromium, topo, tiny_dataset, shots) -> None:
    from tenant_migration.sample import platform

    platform.demo_reset(topo)
    slug = data.TENANT_SLUGS[TENANT - 1]
    run_id = airflow.trigger(DAG, airflow.form_conf(DAG, **FORM))
    key = f"{DAG}/{run_id}"
    password = json.loads((topo.airflow_home / "simple_auth_manager_passwords.json").read_text())["admin"]

    try:
        _follow(airflow, chromium, topo, shots, slug, run_id, key, password)
    finally:  # whatever failed, the run ends here: no live run holds the target for the next test
        airflow.wait_run(DAG, run_id)


def _follow(airflow: AirflowRest, chromium, topo, shots: Path, slug: str, run_id: str, key: str,
            password: str) -> None:
    page = chromium.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(f"{airflow.base}/", wait_until="networkidle")
    page.wait_for_url(re.compile(r".*/auth/login.*"), timeout=60_000)  # the UI sends it there (client side)
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", password)
    page.click("button:has-text('Sign in')")
    page.wait_for_url(re.compile(r"^(?!.*auth/login).*$"), timeout=60_000)

    # The page, from the UI's own navigation: Browse -> Tenant migrations (framed, same origin).
    _wait_ledger_chunks(topo, key)
    page.get_by_role("button", name="Browse").click()
    page.get_by_role("menuitem", name="Tenant migrations").click()
    page.wait_for_url(re.compile(r".*/plugin/tenant-migrations"), timeout=30_000)
    frame = page.frame_locator("iframe")
    title = frame.locator("#title")
    title.wait_for(timeout=60_000)
    assert title.inner_text().startswith(f"tenant {TENANT} ({slug}) | platform sample | {DAG} {run_id}")
    live_text = frame.locator("body").inner_text()
    live_shot = shots / "1-live-run.png"
    page.screenshot(path=str(live_shot), full_page=True)
    assert airflow.call("GET", f"/dags/{DAG}/dagRuns/{run_id}")["state"] in ("running", "queued") or \
        "succeeded" in live_text, "the run ended before the page could show it live"
    if "live, refreshed every 5 s" in live_text:
        assert re.search(r"phase (ready|set|go|finish)", live_text), live_text[:500]

    # The critical window: registrations suspended, the countdown to the platform's own expiry runs.
    countdown = frame.locator("#countdown", has_text="until registrations come back by themselves")
    countdown.wait_for(timeout=300_000)
    first = countdown.inner_text()
    page.wait_for_timeout(2100)
    later = frame.locator("#countdown").inner_text()
    page.screenshot(path=str(shots / "1b-registrations-suspended.png"), full_page=True)
    if "until registrations come back" in later:  # still suspended 2 s later: it counted down
        assert later != first, (first, later)

    # The run ends; the page follows by itself (no reload).
    assert airflow.wait_run(DAG, run_id) == "success"
    frame.locator("#phase", has_text="succeeded").wait_for(timeout=30_000)
    done_shot = shots / "2-finished-run.png"
    page.screenshot(path=str(done_shot), full_page=True)
    text = frame.locator("#detail").inner_text()
    truth = _ledger(topo, key)
    for engine, (n, rows) in truth["chunks"].items():
        store = frame.locator(f"[data-store={engine}]").inner_text()
        assert f"{n}/{n} chunks" in store and f"{int(rows):,} rows" in store and "(100 %)" in store, store
    gate_rows = {frame.locator("#gates tr[data-gate]").nth(i).get_attribute("data-gate"): frame.locator(
        "#gates tr[data-gate]").nth(i).inner_text() for i in range(frame.locator("#gates tr[data-gate]").count())}
    assert set(gate_rows) == truth["gates"] >= {"preflight", "post_copy", "catch_up", "pre_flip", "post_flip", "final"}
    assert all("passed" in row for row in gate_rows.values()), gate_rows
    assert "resumed at" in text  # the suspension window, closed
    dns_rows = frame.locator("text=to the dedicated deployment").locator("xpath=ancestor::table").inner_text()
    assert f"{slug}." in dns_rows and set(re.findall(r"\t(\d+) %", dns_rows)) == {"100"}, dns_rows
    assert f"vpc-{slug}." in dns_rows  # each record answers the dedicated deployment's name
    assert frame.locator("svg[data-plot='copy rate'] path").count() >= 1  # a curve per store that copied

    # A gate's evidence, one click away: the frame opens the gate's Data Docs page.
    with page.expect_event("framenavigated", predicate=lambda f: "/validations/final/" in f.url, timeout=30_000) as nav:
        frame.locator("#gates tr[data-gate=final] a.evidence").click()
    docs = nav.value
    docs.wait_for_load_state()
    assert "final" in docs.content(), docs.url
    gate_shot = shots / "3-gate-data-docs.png"
    page.screenshot(path=str(gate_shot), full_page=True)

    # How long the page takes to load and draw a finished demo-sized run, without the UI around it.
    started = time.monotonic()
    page.goto(f"{airflow.base}/tenant-migration/?run={quote(key, safe='')}", wait_until="load")
    page.wait_for_selector("#title")
    assert page.inner_text("#error") == "" and run_id in page.inner_text("#title")
    load_s = time.monotonic() - started
    detail = httpx.get(f"{airflow.base}/tenant-migration/api/run", params={"dag_id": DAG, "run": key},
                       headers={"Authorization": f"Bearer {airflow.token}"}, timeout=30)
    assert detail.status_code == 200 and detail.json()["tenant_id"] == TENANT
    _no_secret(topo, detail.text)
    print(f"screenshots: {live_shot} {done_shot} {gate_shot}; page load {load_s:.2f} s")

