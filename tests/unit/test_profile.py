"""The platform profile: validated on load with errors naming the key and the line, found by name in
the deployment's folder, and read by every step. A second, minimal profile (other schema, keyspace,
DNS naming, registration switch: ``tests/fixtures/profiles/fleetco.yaml``) shows that each step
takes its names from the profile of its run, never from the sample's. Fakes sit at the seam: the
database connections."""

from __future__ import annotations

import re
import shutil
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tenant_migration import ledger, profile
from tenant_migration.cutover import dns, registrations
from tenant_migration.flows import common, finish, go
from tenant_migration.flows import set as set_phase
from tenant_migration.params import _platform_param
from tenant_migration.sample import PROFILE as SAMPLE_PROFILE
from tenant_migration.spec import InvalidParams, MigrationSpec, parse_spec

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "profiles"
OTHER = FIXTURES / "fleetco.yaml"
ZONE = "iot.example.test."


@pytest.fixture
def other_folder(monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TM_PROFILES_DIR", str(FIXTURES))
    return FIXTURES


# --- loading and validation -------------------------------------------------------------------


def test_the_sample_and_a_second_platform_load() -> None:
    sample = profile.load(SAMPLE_PROFILE)
    other = profile.load(OTHER)
    assert (sample.name, other.name) == ("sample", "fleetco")
    assert other.tenant_map.schema == "crm" and other.tenant_map.keyspace == "metrics"
    assert other.tenant_map.load_order() == ["accounts", "vehicles", "trips"]
    assert other.workload is None and sample.workload is not None
    assert sample.tenant_map.schema != other.tenant_map.schema
    # What a run is bound to: the whole document, the tenant map inlined even when it is a file.
    assert sample.document["tenant_map"]["postgres"]["tenant_root"] == {"table": "tenants", "key": "tenant_id"}
    assert sample.digest != other.digest


def _broken(tmp_path: Path, old: str, new: str) -> tuple[Path, int]:
    """The second profile with ``old`` replaced by ``new``; the 1-based line where ``new`` begins."""
    text = OTHER.read_text()
    assert old in text
    text = text.replace(old, new, 1)
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    return path, text[: text.index(new)].count("\n") + 1


@pytest.mark.parametrize(("old", "new", "message"), [
    pytest.param("      dedicated: mqtt", "      target: mqtt", r"dns\.records\.0\.target: unknown key",
                 id="unknown key"),
    pytest.param('    - name: "{slug}-mqtt.{zone}"', '    - name: "{tenant}-mqtt.{zone}"',
                 r"dns\.records\.0\.name: unknown field\(s\) \['tenant'\]", id="template field"),
    pytest.param("      shared: mqtt-pool.{zone}", "      shared: mqtt-pool.example.com.",
                 r"dns\.records\.0\.shared: .* must end with '\{zone\}'", id="template outside the zone"),
    pytest.param("    WHERE account_id = %(tenant_id)s\n  resume", "    WHERE account_id = %(account)s\n  resume",
                 r"registrations: suspend: unknown parameter\(s\) \['account'\]", id="switch parameter"),
    pytest.param("  kind: sql", "  kind: carrier-pigeon", r"registrations\.kind: 'carrier-pigeon' is not one of 'sql', 'http'",
                 id="switch kind"),
    pytest.param("  mode: local", "  mode: sometimes", r"replica\.mode: Input should be 'local', 'promote' or 'rds'",
                 id="replica mode"),
    pytest.param("  mode: local", "  mode: promote", r"replica: .*mode promote needs a provisioner",
                 id="promote without a provisioner"),
    pytest.param("  mode: local", "  mode: local\n  provisioner: my.standbys:make",
                 r"replica: .*provisioner is for mode promote, not local", id="provisioner without promote"),
    pytest.param("  mode: local", "  provisioner: just-a-name\n  mode: promote",
                 r"replica\.provisioner: 'just-a-name': expected 'package\.module:function'", id="provisioner ref"),
    pytest.param("  mode: local", "  mode: rds", r"replica: .*mode rds needs an rds section", id="rds without rds"),
    pytest.param("  mode: local", "  rds: {source_instance: primary-db}\n  mode: local",
                 r"replica: .*the rds section is for mode rds, not local", id="rds section without rds"),
    pytest.param("  mode: local", "  rds: {source_instance: ''}\n  mode: rds",
                 r"replica\.rds\.source_instance: String should have at least 1 character", id="rds source"),
    pytest.param("  workload: none", "  workload: just-a-name",
                 r"load_check\.workload: 'just-a-name': expected 'package\.module:function' or 'none'",
                 id="workload"),
    pytest.param("      trips:    {key: [trip_id], via: {column: vin, table: vehicles}}",
                 "      trips:    {key: [trip_id], via: {column: vin, table: fleets}}",
                 r"tenant_map\.postgres\.tables\.trips\.via: table 'fleets' is not tenant-scoped", id="map hop"),
    pytest.param("      vehicles: {key: [vin], tenant_column: account_id}", "      vehicles: {key: [vin]}",
                 r"tenant_map\.postgres\.tables\.vehicles: give exactly one of 'tenant_column' or 'via'",
                 id="map table"),
])
def test_an_invalid_profile_is_refused_naming_the_key_and_the_line(tmp_path: Path, old: str, new: str,
                                                                    message: str) -> None:
    path, line = _broken(tmp_path, old, new)
    with pytest.raises(profile.ProfileError) as err:
        profile.load(path)
    text = str(err.value)
    assert re.search(message, text), text
    found = re.search(rf"{re.escape(str(path))}:(\d+): ", text)
    assert found, text
    # The line of the key, or of the mapping that misses or breaks it (never the top of the file).
    assert 1 < int(found.group(1)) <= line, text


def test_a_missing_key_names_the_section_and_its_line(tmp_path: Path) -> None:
    text = OTHER.read_text()
    text = re.sub(r"  status: >-\n(    .*\n)+", "", text, count=1)
    path = tmp_path / "nostatus.yaml"
    path.write_text(text)
    with pytest.raises(profile.ProfileError, match=r"nostatus\.yaml:(\d+): registrations\.status: Field required") as err:
        profile.load(path)
    assert int(re.search(r":(\d+): registrations\.status", str(err.value)).group(1)) == (
        text[: text.index("registrations:")].count("\n") + 1)


def test_not_yaml_and_a_missing_file_are_clear(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("dns: [unclosed\n")
    with pytest.raises(profile.ProfileError, match=r"bad\.yaml: not valid YAML"):
        profile.load(bad)
    with pytest.raises(profile.ProfileError, match="No such file"):
        profile.load(tmp_path / "absent.yaml")


def test_a_profile_is_found_by_name_in_the_deployment_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TM_PROFILES_DIR", str(tmp_path))
    with pytest.raises(profile.ProfileError, match=r"param 'platform' is required: the profiles in .* are none"):
        profile.named("")
    shutil.copy(OTHER, tmp_path / "fleetco.yaml")
    assert profile.named("").name == "fleetco"  # the only one
    shutil.copy(OTHER, tmp_path / "second.yaml")
    with pytest.raises(profile.ProfileError, match=r"required: the profiles in .* are \['fleetco', 'second'\]"):
        profile.named("")
    with pytest.raises(profile.ProfileError, match=r"no profile 'sample' in .*; the deployment has \['fleetco', 'second'\]"):
        profile.named("sample")
    assert profile.named("second").tenant_map.schema == "crm"


def test_the_form_lists_the_folder_without_reading_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TM_PROFILES_DIR", str(tmp_path))
    (tmp_path / "alpha.yaml").write_text("not: [a profile")  # listed, never parsed at parse time
    one = _platform_param()
    assert one.value == "alpha" and one.schema["enum"] == ["alpha"]
    (tmp_path / "beta.yaml").write_text("")
    two = _platform_param()
    assert not two.has_value and two.schema["enum"] == ["alpha", "beta"]  # several: the operator chooses


def test_the_platform_param_is_validated() -> None:
    assert parse_spec({"tenant_id": 1, "platform": "fleetco"}).platform == "fleetco"
    assert parse_spec({"tenant_id": 1}).platform == ""
    with pytest.raises(InvalidParams, match="param 'platform' must be a profile name"):
        parse_spec({"tenant_id": 1, "platform": "../etc/passwd"})


def test_changes_say_what_changed() -> None:
    before = profile.load(OTHER).document
    after = {**before, "dns": {"records": [{**before["dns"]["records"][0], "dedicated": "mqtt.{slug}.{zone}"}]},
             "description": before["description"]}
    after["tenant_map"] = {**before["tenant_map"], "postgres": {**before["tenant_map"]["postgres"],
                                                                 "shared_tables": ["makes", "models"]}}
    assert profile.changes(before, after) == [
        "dns.records[0].dedicated: 'mqtt.{slug}.{prefix}.{zone}' -> 'mqtt.{slug}.{zone}'",
        "tenant_map.postgres.shared_tables: ['makes'] -> ['makes', 'models']",
    ]
    assert profile.changes(before, before) == []


# --- every step reads its names from the run's profile ----------------------------------------


class FakeCursor:
    def __init__(self, row: tuple[Any, ...] | None, columns: list[str], rowcount: int = 1) -> None:
        self._row, self.rowcount = row, rowcount
        self.description = [type("Col", (), {"name": c})() for c in columns]

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._row


class FakeConn:
    """Records every statement; answers the switch's status with a row, everything else with one value."""

    def __init__(self, log: list[tuple[str, str, Any]], name: str, suspended: bool = False) -> None:
        self.log, self.name, self.suspended = log, name, suspended

    def execute(self, query: Any, params: Any = None) -> FakeCursor:
        text = query if isinstance(query, str) else query.as_string(None)
        self.log.append((self.name, text, params))
        if "signup_gate SET signup_open = false" in text:
            self.suspended = True
        elif "signup_gate SET signup_open = true" in text:
            self.suspended = False
        if "FROM crm.signup_gate" in text:
            until = datetime.now(UTC) + timedelta(minutes=5) if self.suspended else None
            return FakeCursor((not self.suspended, until, None), ["enabled", "suspended_until", "reason"])
        if "clock_timestamp()" in text:
            return FakeCursor((datetime.now(UTC),), ["clock_timestamp"])
        return FakeCursor(("acme",), ["value"])

    @contextmanager
    def transaction(self) -> Any:
        yield

    def __enter__(self) -> FakeConn:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class FakeEndpoint:
    def __init__(self, conns: dict[str, FakeConn], name: str) -> None:
        self.conns, self.name = conns, name

    def connect(self, autocommit: bool = False) -> FakeConn:
        return self.conns[self.name]


class FakeEndpoints:
    """The seam: ``postgres(conn_id)`` and ``target``, each a recording connection."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str, Any]] = []
        self.conns = {n: FakeConn(self.log, n) for n in ("fleetco_admin", "fleetco_target_admin", "tm_target")}
        self.asked: list[str] = []
        self.target = FakeEndpoint(self.conns, "tm_target")

    def postgres(self, conn_id: str) -> FakeEndpoint:
        self.asked.append(conn_id)
        return FakeEndpoint(self.conns, conn_id)


@pytest.fixture
def other_run(other_folder: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[MigrationSpec, FakeEndpoints]:
    events: list[Any] = []
    monkeypatch.setattr(ledger, "record_event", lambda *a, **k: events.append(a))
    monkeypatch.setattr(ledger, "run_row", lambda *a, **k: None)
    return MigrationSpec(tenant_id=7, platform="fleetco", dns_zone=ZONE), FakeEndpoints()


def test_the_run_reads_the_tenant_map_and_the_slug_from_its_profile(other_run) -> None:
    spec, ep = other_run
    prof = common.profile_of(spec)
    assert prof.name == "fleetco" and prof.tenant_map.root_table == "accounts"
    slug = common.tenant_slug(ep.conns["tm_target"], prof.tenant_map, 7, prof.doc.tenant)
    assert slug == "acme"
    assert ep.log[-1][1].startswith("SELECT lower(handle) FROM crm.account_handles") and ep.log[-1][2] == {"tenant_id": 7}


def test_the_dns_records_are_the_profiles(other_run) -> None:
    spec, _ = other_run
    plans = common.dns_plans(spec, "acme")
    assert plans == [dns.RecordPlan("acme-mqtt.iot.example.test.", "mqtt-pool.iot.example.test.",
                                    "mqtt.acme.vpc.iot.example.test.")]
    with pytest.raises(dns.DnsError, match=r"dns\.records\[0\]\.name: .* renders 'Acme_Co!-mqtt\.iot\.example\.test\.'"):
        common.dns_plans(spec, "Acme_Co!")
    with pytest.raises(dns.DnsError, match=r"dns\.records\[0\]\.name: .*renders '-mqtt\.iot.* \(bad label '-mqtt'\)"):
        common.dns_plans(spec, "")


def test_registrations_are_switched_by_the_profiles_statements_on_its_connections(other_run) -> None:
    spec, ep = other_run
    window = go.suspend_registrations(ep, spec, "run-1")
    assert window["active"] and ep.asked == ["fleetco_admin"]
    suspend = [t for n, t, _ in ep.log if "SET signup_open = false" in t]
    assert len(suspend) == 1 and ep.log[0][0] == "fleetco_admin"
    assert not any("tenant_settings" in t or "platform." in t for _, t, _ in ep.log)
    out = go.resume_registrations(ep, spec, "run-1", keep_for_resume=False)
    assert ep.asked[-2:] == ["fleetco_admin", "fleetco_target_admin"]
    assert not out["source"]["active"] and not out["also"]["fleetco_target_admin"]["active"]
    frame = finish.registrations_frame(ep, spec)
    assert frame.to_dict("list")["unit"] == ["registrations@fleetco_admin", "registrations@fleetco_target_admin"]
    assert frame["suspended"].tolist() == [0, 0]


def test_a_switch_that_changes_no_row_is_an_error(other_run) -> None:
    spec, ep = other_run
    switch = common.profile_of(spec).registrations
    conn = ep.conns["fleetco_admin"]
    conn.execute = lambda q, p=None: FakeCursor(None, ["enabled"], rowcount=0)  # type: ignore[method-assign]
    with pytest.raises(registrations.RegistrationError, match=r"registrations\.suspend changed no row for tenant 7"):
        registrations.suspend(conn, switch, 7, timedelta(minutes=1), "x")
    with pytest.raises(registrations.RegistrationError, match=r"registrations\.status returned no row for tenant 7"):
        registrations.status(conn, switch, 7)


def test_load_check_and_warm_up_come_from_the_profile(other_run, monkeypatch: pytest.MonkeyPatch) -> None:
    spec, ep = other_run
    out = set_phase.load_check(ep, spec, "run-1")
    assert out == {"skipped": "the platform profile has no load check (load_check.workload: none)"}

    from tenant_migration.cassandra import warmup as cql_warmup
    from tenant_migration.postgres import warmup as pg_warmup

    seen: dict[str, Any] = {}

    class Report:
        def to_dict(self) -> dict[str, Any]:
            return {}

    def pg(conn: Any, tmap: Any, tenant_id: int, queries: Any = None, tally: Any = None) -> Report:
        seen["queries"] = [q.as_string(None) for q in queries]
        seen["schema"] = tmap.schema
        return Report()

    @contextmanager
    def session() -> Any:
        yield None

    monkeypatch.setattr(pg_warmup, "warm_up", pg)
    monkeypatch.setattr(cql_warmup, "warm_up", lambda *a, **k: Report())
    monkeypatch.setattr(ledger, "run_chunks", lambda *a, **k: [])
    ep.cassandra_target = type("C", (), {"session": staticmethod(session)})()
    set_phase.warm_up(ep, spec, "run-1")
    assert seen["schema"] == "crm"
    assert any(q.startswith("SELECT count(*) FROM crm.trips t JOIN crm.vehicles") for q in seen["queries"])
    assert all('"platform"' not in q for q in seen["queries"])


def test_the_ledger_binds_a_run_to_its_profile(other_run) -> None:
    spec, _ = other_run

    class Labels:
        label = "host:1/db"

    ep = type("E", (), {"replica": Labels, "target": Labels, "cassandra_source": Labels, "cassandra_target": Labels})()
    other = common.profile_of(spec)
    sample = profile.load(SAMPLE_PROFILE)
    assert common.fingerprint(ep, other.tenant_map, 7, other) != common.fingerprint(ep, other.tenant_map, 7, sample)


def test_the_command_line_validates_profiles(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TM_PROFILES_DIR", str(FIXTURES))
    assert profile.main([]) == 0
    assert "fleetco.yaml: ok -- platform 'fleetco'" in capsys.readouterr().out
    broken, _ = _broken(tmp_path, "  mode: local", "  mode: sometimes")
    assert profile.main(["fleetco", str(broken)]) == 1
    out = capsys.readouterr()
    assert "3 tenant tables in 'crm'" in out.out and "replica.mode: Input should be 'local'" in out.err


def _with_http_switch(tmp_path: Path, **change: Any) -> Path:
    import yaml
    from admin_api import SWITCH

    doc = yaml.safe_load(OTHER.read_text())
    doc["registrations"] = {**SWITCH, **change}
    path = tmp_path / "api.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_a_switch_over_http_validates_its_calls(tmp_path: Path) -> None:
    prof = profile.load(_with_http_switch(tmp_path))
    assert prof.registrations.kind == "http" and prof.registrations.suspend.expect == [204]
    bad = _with_http_switch(tmp_path, suspend={"method": "POST", "path": "/t/{tenant_id}/{days}"})
    with pytest.raises(profile.ProfileError, match=r"registrations: suspend: unknown field\(s\) \['days'\]"):
        profile.load(bad)
    with pytest.raises(profile.ProfileError, match=r"registrations\.timeout_s: Input should be greater than 0"):
        profile.load(_with_http_switch(tmp_path, timeout_s=0))
    with pytest.raises(profile.ProfileError, match=r"registrations\.status\.method: Input should be 'GET'"):
        profile.load(_with_http_switch(tmp_path, status={"method": "FETCH", "path": "/x"}))


def test_a_scheduled_rehearsal_parses_with_several_profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A scheduled DAG needs a valid default for every param: with several profiles the rehearsal
    takes the one TM_REHEARSAL_PLATFORM names, else "" (the DAG parses; a scheduled run asks)."""
    from airflow.sdk import DAG

    from tenant_migration.params import scheduled_platform_param

    monkeypatch.setenv("TM_PROFILES_DIR", str(tmp_path))
    monkeypatch.delenv("TM_REHEARSAL_PLATFORM", raising=False)
    (tmp_path / "alpha.yaml").write_text("")
    assert scheduled_platform_param().value == "alpha"
    (tmp_path / "beta.yaml").write_text("")
    unchosen = scheduled_platform_param()
    assert unchosen.value == "" and unchosen.schema["enum"] == ["alpha", "beta", ""]
    monkeypatch.setenv("TM_REHEARSAL_PLATFORM", "beta")
    chosen = scheduled_platform_param()
    assert chosen.value == "beta" and chosen.schema["enum"] == ["alpha", "beta"]
    assert "TM_REHEARSAL_PLATFORM" in chosen.description
    for param in (unchosen, chosen):
        DAG("scheduled_with_two_profiles", schedule="@weekly", params={"platform": param})  # no ValueError
