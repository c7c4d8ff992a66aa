"""The zero-downtime report from a synthetic journal and ledger events (no servers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tenant_migration.sample.fleet.journal import Journal, WriteRecord
from tenant_migration.sample.fleet.report import build_report

OLD, NEW = "devices.shared.z.", "devices.vpc-acme.z."
T0 = 1_700_000_000.0
EVENTS = [("registrations_suspended", "info", T0 + 10, {}), ("flip_dns", "finished", T0 + 20, {}),
          ("drain_stragglers", "finished", T0 + 30, {"cassandra_rows": 5}),
          ("registrations_resumed", "info", T0 + 32, {})]


def _journal(tmp_path: Path, records: list[WriteRecord]) -> Path:
    j = Journal(tmp_path / "j.jsonl")
    for r in records:
        j.append(r)
    j.close()
    return j.path


def _dp(i: int, t: float, endpoint: str, acked: bool = True) -> WriteRecord:
    return WriteRecord(f"w{i}", "datapoint", T0 + t, endpoint, acked, 2.0, None if acked else "WriteTimeout: x")


def _reg(key: str, t: float, acked: bool) -> WriteRecord:
    endpoint = "api.shared.z." if t < 20 else "api.vpc-acme.z."
    return WriteRecord(f"r{key}{t}", "registration", T0 + t, endpoint, acked, 3.0,
                       None if acked else "RaiseException: suspended", {"key": key, "user_id": key})


def test_a_clean_run_reports_no_unavailability_and_counts_stragglers(tmp_path: Path) -> None:
    recs = [_dp(i, i * 0.5, OLD if i * 0.5 < 22 else NEW) for i in range(80)]
    recs += [_reg("a", 12, False), _reg("a", 34, True), _reg("b", 5, True)]
    rep = build_report(_journal(tmp_path, recs), None, "run", tmp_path / "out", events=EVENTS)
    assert rep.device_write_unavailable_seconds == 0 and rep.device_write_availability == 1.0
    assert rep.stragglers["total"] == 4 and rep.stragglers["by_kind"] == {"datapoint": 4}  # t = 20, 20.5, 21, 21.5
    assert rep.stragglers["after_drain"] == 0 and rep.stragglers["window_s"] == pytest.approx(1.5)
    assert rep.registrations["rejected_outside_window"] == 0 and rep.registrations["rejected_then_accepted"] == 1
    assert rep.suspension["seconds"] == pytest.approx(22.0)
    assert sum(sum(v) for v in rep.series.values()) == sum(rep.writes_per_endpoint.values()) == 82
    assert rep.problems == [] and Path(rep.png or "").exists()
    assert (tmp_path / "out" / "zero_downtime.json").exists()


@pytest.mark.parametrize(("records", "problem"), [
    pytest.param([_dp(1, 3, OLD), _dp(2, 3.2, OLD, acked=False)], "device writes failed", id="a failed device write"),
    pytest.param([_dp(1, 3, OLD), _reg("x", 40, False), _reg("x", 42, True)], "outside the suspension window",
                 id="a rejection after the window"),
    pytest.param([_dp(1, 3, OLD), _reg("x", 12, False)], "never accepted", id="a registration never accepted"),
    pytest.param([_dp(1, 3, OLD), _dp(2, 31, OLD)], "after the drain", id="a straggler after the drain"),
])
def test_each_kind_of_downtime_is_named(tmp_path: Path, records: list[WriteRecord], problem: str) -> None:
    rep = build_report(_journal(tmp_path, records), None, "run", tmp_path / "out", events=EVENTS, plot=False)
    assert any(problem in p for p in rep.problems), rep.problems
