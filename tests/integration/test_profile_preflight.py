"""Issue 30, items 3 and 4, on the real stack: the preflight refuses a profile whose registration
switch or DNS templates do not resolve for the chosen tenant, naming the key, before anything is
written; a resumed run refuses a profile changed since it started, saying what changed. The
profiles are copies of the sample's in a folder of the test's own (``TM_PROFILES_DIR``)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import yaml
from helpers import admin, ledger_runs

from tenant_migration import ledger, steps
from tenant_migration.sample import PROFILE, SAMPLE_MAP
from tenant_migration.spec import MigrationSpec

pytestmark = pytest.mark.integration

TENANT = 2


@pytest.fixture
def clean_target(topo, tiny_dataset, endpoints):
    from tenant_migration.sample import platform

    platform.demo_reset(topo)
    yield


def _profile(folder: Path, name: str, change=None) -> Path:
    doc = yaml.safe_load(PROFILE.read_text())
    doc["tenant_map"] = str(SAMPLE_MAP)  # the copy lives elsewhere: the map by its absolute path
    if change is not None:
        change(doc)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TM_PROFILES_DIR", str(tmp_path))
    return tmp_path


def _status_on_a_missing_table(doc: dict) -> None:
    doc["registrations"]["status"] = doc["registrations"]["status"].replace("tenant_settings", "tenant_flags")


def _undefined_connection(doc: dict) -> None:
    doc["registrations"]["connection"] = "tm_no_such_connection"


def _template_with_a_bad_label(doc: dict) -> None:
    doc["dns"]["records"][0]["name"] = "{slug}.-devices.{zone}"


def _record_not_in_the_zone(doc: dict) -> None:
    doc["dns"]["records"].append({"name": "mqtt.{slug}.{zone}", "shared": "mqtt.shared.{zone}",
                                  "dedicated": "mqtt.{prefix}-{slug}.{zone}"})


@pytest.mark.parametrize(("change", "message"), [
    pytest.param(_status_on_a_missing_table,
                 r"profile 'broken' registrations\.status \(connection tm_source_operator\) does not answer for "
                 r"tenant 2: registrations on tm_source_operator: UndefinedTable: relation \"platform\.tenant_flags\" "
                 r"does not exist", id="switch status"),
    pytest.param(_undefined_connection,
                 r"profile 'broken' registrations\.connection: connection 'tm_no_such_connection' is not defined",
                 id="switch connection"),
    pytest.param(_template_with_a_bad_label,
                 r"profile 'broken': dns\.records\[0\]\.name: '\{slug\}\.-devices\.\{zone\}' renders "
                 r"'[a-z-]+\.-devices\.iot\.example\.test\.' .* \(bad label '-devices'\)", id="dns template"),
    pytest.param(_record_not_in_the_zone, r"dns mqtt\.[a-z-]+\.iot\.example\.test\.: no record", id="dns record"),
])
def test_a_profile_that_does_not_resolve_for_the_tenant_is_refused_before_anything_is_written(
        endpoints, clean_target, folder, target_admin, reports, change, message) -> None:
    _profile(folder, "broken", change)
    run_id = f"it/{uuid.uuid4().hex[:10]}"
    with pytest.raises(steps.PreflightError, match=message) as err:
        steps.preflight(endpoints, MigrationSpec(tenant_id=TENANT, platform="broken"), run_id)
    assert "nothing was written" in str(err.value)
    assert ledger_runs(target_admin, run_id) == 0


def test_an_unknown_platform_is_refused_naming_the_ones_there_are(endpoints, folder, reports) -> None:
    _profile(folder, "alpha")
    _profile(folder, "beta")
    with pytest.raises(ValueError, match=r"no profile 'gamma' in .*; the deployment has \['alpha', 'beta'\]"):
        steps.preflight(endpoints, MigrationSpec(tenant_id=TENANT, platform="gamma"), "it/never")


def test_a_resumed_run_refuses_a_profile_changed_since_it_started(topo, endpoints, clean_target, folder,
                                                                 target_admin, reports) -> None:
    path = _profile(folder, "ours")
    spec = MigrationSpec(tenant_id=TENANT, platform="ours")
    run_id = f"it/{uuid.uuid4().hex[:10]}"
    assert steps.preflight(endpoints, spec, run_id)["new_run"] is True
    try:
        assert steps.preflight(endpoints, spec, run_id)["new_run"] is False  # unchanged: resumes
        _profile(folder, "ours", lambda d: d["dns"]["records"][1].update(dedicated="api.{prefix}.{slug}.{zone}"))
        with pytest.raises(steps.PreflightError) as err:
            steps.preflight(endpoints, spec, run_id)
        text = str(err.value)
        assert f"run {run_id} was started with platform profile 'ours' as it was then; it has changed since" in text
        assert "dns.records[1].dedicated: 'api.{prefix}-{slug}.{zone}' -> 'api.{prefix}.{slug}.{zone}'" in text
        assert "Restore the profile to resume this run" in text
        _profile(folder, "ours")  # restored: the run resumes
        assert path.exists() and steps.preflight(endpoints, spec, run_id)["new_run"] is False
    finally:
        with admin(topo, "target") as t:
            ledger.finish_run(t, run_id, "aborted")
