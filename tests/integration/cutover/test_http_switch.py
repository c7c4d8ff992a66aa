"""Issue 31, item 1: a registration switch over HTTP, against a real local admin API
(``tests/admin_api.py``) that enforces its own expiry and records every call: the round trip, the
platform's expiry while the run is stopped, an API that answers 500, one that times out, wrong
credentials, and the preflight refusing a switch that does not answer. The client is ``requests``
with urllib3's retries; the connection comes from Airflow (``AIRFLOW_CONN_TM_ADMIN_API``)."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from admin_api import PASSWORD, SWITCH, AdminApi
from helpers import admin, ledger_runs

from tenant_migration import ledger, profile, steps
from tenant_migration.cutover import registrations
from tenant_migration.profile import HttpSwitch
from tenant_migration.sample import PROFILE, SAMPLE_MAP
from tenant_migration.spec import MigrationSpec
from tenant_migration.validation.counts import GateFailed

pytestmark = pytest.mark.integration

TENANT, OTHER = 2, 3


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch):
    server = AdminApi(tenants={TENANT: {"enabled": True, "until": None, "reason": None},
                               OTHER: {"enabled": True, "until": None, "reason": None}})
    monkeypatch.setenv("AIRFLOW_CONN_TM_ADMIN_API", json.dumps(server.connection()))
    yield server
    server.stop()


@pytest.fixture
def clean_target(topo, tiny_dataset, endpoints):
    from tenant_migration.sample import platform

    platform.demo_reset(topo)


@pytest.fixture
def switch() -> HttpSwitch:
    return HttpSwitch.model_validate(SWITCH)


@pytest.fixture
def http_platform(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The sample platform with its registrations switched by the admin API."""
    doc = yaml.safe_load(PROFILE.read_text())
    doc["tenant_map"] = str(SAMPLE_MAP)
    doc["registrations"] = SWITCH
    (tmp_path / "api_switched.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    monkeypatch.setenv("TM_PROFILES_DIR", str(tmp_path))
    monkeypatch.setenv("TM_REPORTS_DIR", str(tmp_path / "reports"))
    assert profile.named("api_switched").registrations.kind == "http"
    return "api_switched"


def test_suspend_status_and_resume_through_the_admin_api(endpoints, api, switch) -> None:
    with registrations.side(endpoints, switch, "tm_admin_api") as side:
        window = side.suspend(TENANT, timedelta(minutes=10), "tenant migration run-x")
        assert window.active and window.reason == "tenant migration run-x"
        assert abs((window.suspended_until - datetime.now(UTC)) - timedelta(minutes=10)) < timedelta(seconds=30)
        assert not side.status(OTHER).active  # another tenant is not touched
        again = side.suspend(TENANT, timedelta(minutes=1), "a repeat")
        assert again.suspended_until == window.suspended_until  # the later expiry is kept
        assert not side.resume(TENANT).active
    calls = [(c.method, c.path, c.body, c.authorized, c.answered) for c in api.calls]
    assert calls == [
        ("POST", "/tenants/2/registrations/suspend", {"expires_in_s": 600, "reason": "tenant migration run-x"}, True, 204),
        ("GET", "/tenants/2/registrations", None, True, 200),
        ("GET", "/tenants/3/registrations", None, True, 200),
        ("POST", "/tenants/2/registrations/suspend", {"expires_in_s": 60, "reason": "a repeat"}, True, 204),
        ("GET", "/tenants/2/registrations", None, True, 200),
        ("POST", "/tenants/2/registrations/resume", None, True, 204),
        ("GET", "/tenants/2/registrations", None, True, 200),
    ]


def test_the_platforms_expiry_restores_registrations_while_the_run_is_stopped(endpoints, api, switch) -> None:
    with registrations.side(endpoints, switch, "tm_admin_api") as side:
        assert side.suspend(TENANT, timedelta(seconds=2), "dead-man switch").active
    # The run dies here: nobody resumes. The platform's own expiry restores registrations.
    time.sleep(2.5)
    assert api.flag(TENANT)["enabled"]
    with registrations.side(endpoints, switch, "tm_admin_api") as side:
        assert not side.status(TENANT).active
    assert not any(c.path.endswith("/resume") for c in api.calls)


def test_an_api_answering_500_is_retried_then_named(endpoints, api, switch) -> None:
    api.fail_next = 1  # one failure: the retry gets through
    with registrations.side(endpoints, switch, "tm_admin_api") as side:
        assert not side.status(TENANT).active
    assert [c.answered for c in api.calls] == [500, 200]
    api.calls.clear()
    api.fail_next = 100
    with registrations.side(endpoints, switch, "tm_admin_api") as side, pytest.raises(
            registrations.RegistrationError,
            match=r"registrations\.suspend POST /tenants/2/registrations/suspend on tm_admin_api: answered 500 "
                  r"after 2 retries \(expected \[204\]\)"):
        side.suspend(TENANT, timedelta(minutes=5), "x")
    assert [c.answered for c in api.calls] == [500, 500, 500]  # the call and its 2 retries


def test_an_api_that_does_not_answer_in_time_is_named(endpoints, api, switch) -> None:
    api.delay_s = 1.5  # the switch waits 1 s
    with registrations.side(endpoints, switch, "tm_admin_api") as side, pytest.raises(
            registrations.RegistrationError, match=r"registrations\.status GET /tenants/2/registrations on "
                                                   r"tm_admin_api: no answer within 1 s \(2 retries\)"):
        side.status(TENANT)
    assert len(api.calls) == 3


def test_wrong_credentials_are_named_without_the_secret(endpoints, api, switch, monkeypatch) -> None:
    conn = {**api.connection(), "password": "not-the-password"}
    monkeypatch.setenv("AIRFLOW_CONN_TM_ADMIN_API", json.dumps(conn))
    with registrations.side(endpoints, switch, "tm_admin_api") as side, pytest.raises(
            registrations.RegistrationError, match=r"answered 401 \(expected \[200\]\)") as err:
        side.status(TENANT)
    assert "not-the-password" not in str(err.value) and PASSWORD not in str(err.value)
    assert [c.authorized for c in api.calls] == [False]


def test_the_preflight_asks_the_api_and_refuses_a_switch_that_does_not_answer(endpoints, api, http_platform,
                                                                               clean_target, target_admin) -> None:
    spec = MigrationSpec(tenant_id=TENANT, platform=http_platform, dry_run=True)
    assert steps.preflight(endpoints, spec, f"it/{uuid.uuid4().hex[:10]}")["platform"] == http_platform
    assert ("GET", "/tenants/2/registrations") in [(c.method, c.path) for c in api.calls]
    api.fail_next = 100
    run_id = f"it/{uuid.uuid4().hex[:10]}"
    with pytest.raises(steps.PreflightError,
                       match=r"profile 'api_switched' registrations\.status \(connection tm_admin_api\) does not "
                             r"answer for tenant 2: registrations\.status GET "
                             r"/tenants/2/registrations on tm_admin_api: answered 500 after 2 retries"):
        steps.preflight(endpoints, MigrationSpec(tenant_id=TENANT, platform=http_platform), run_id)
    assert ledger_runs(target_admin, run_id) == 0


def test_the_cutover_steps_switch_registrations_through_the_api(topo, endpoints, api, http_platform,
                                                                 clean_target) -> None:
    spec = MigrationSpec(tenant_id=TENANT, platform=http_platform)
    run_id = f"it/{uuid.uuid4().hex[:10]}"
    steps.preflight(endpoints, spec, run_id)  # registers the run the steps record their events under
    try:
        window = steps.suspend_registrations(endpoints, spec, run_id)
        assert window["active"] and not api.flag(TENANT)["enabled"]
        with pytest.raises(GateFailed, match="registrations__back_on"):  # still suspended: the final check sees it
            steps.gate_final(endpoints, spec, run_id)
        out = steps.resume_registrations(endpoints, spec, run_id, keep_for_resume=False)
        assert not out["source"]["active"] and api.flag(TENANT)["enabled"]
        assert [c.path for c in api.calls if c.method == "POST"] == ["/tenants/2/registrations/suspend",
                                                                      "/tenants/2/registrations/resume"]
    finally:
        with admin(topo, "target") as t:
            ledger.finish_run(t, run_id, "aborted")
