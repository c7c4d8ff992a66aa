"""The line each task's log starts with (``runtime.announce``): tenant, slug, platform, phase,
task and run, whatever the ledger can tell."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pytest

from tenant_migration import runtime
from tenant_migration.flows import finish, ready
from tenant_migration.flows import set as set_phase


@dataclass
class _TI:
    task_id: str
    map_index: int = -1


class _Unreachable:
    label = "127.0.0.1:1/tm_target"

    def connect(self, autocommit: bool = False) -> Any:
        raise ConnectionRefusedError("connection refused")


@dataclass
class _Endpoints:
    target: Any


def test_phase_is_the_steps_part_of_the_plan() -> None:
    assert runtime.phase_of(ready.copy_cassandra_batch) == "ready"
    assert runtime.phase_of(set_phase.gate_catch_up) == "set"
    assert runtime.phase_of(finish.gate_final) == "finish"


def test_line_names_tenant_slug_platform_phase_task_and_run() -> None:
    ctx = {"params": {"tenant_id": 3, "platform": "meterhub"}, "ti": _TI("ready.copy_cassandra_batch", 2)}
    line = runtime.task_line(ctx, "ready", "tenant_migration/manual__1", "acme")
    assert line == ("tenant 3 (acme) | platform meterhub | phase ready | task ready.copy_cassandra_batch[2] | "
                    "run tenant_migration/manual__1")


def test_line_before_the_preflight_says_the_slug_is_not_known(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    (tmp_path / "only.yaml").write_text("x: 1\n")
    monkeypatch.setenv("TM_PROFILES_DIR", str(tmp_path))
    ctx = {"params": {"tenant_id": 7}, "ti": _TI("preflight")}
    line = runtime.task_line(ctx, "ready", "r", None)
    assert line.startswith("tenant 7 (slug not known yet) | platform only | phase ready | task preflight | run r")


def test_an_unreachable_ledger_is_said_and_the_task_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    ctx = {"params": {"tenant_id": 3, "platform": "sample"}, "ti": _TI("gate_final")}
    with caplog.at_level(logging.INFO, logger="tenant_migration.task"):
        runtime.announce(_Endpoints(_Unreachable()), ctx, finish.gate_final, "tenant_migration/r1")  # type: ignore[arg-type]
    [record] = [r for r in caplog.records if r.name == "tenant_migration.task"]
    assert record.getMessage() == (
        "tenant 3 (slug not known yet; the ledger on 127.0.0.1:1/tm_target did not answer: ConnectionRefusedError) "
        "| platform sample | phase finish | task gate_final | run tenant_migration/r1")


def test_no_tenant_given_is_said_not_hidden() -> None:
    line = runtime.task_line({"params": {}, "ti": _TI("preflight")}, "ready", "r", None)
    assert line.startswith("tenant (none given) (slug not known yet) |")
