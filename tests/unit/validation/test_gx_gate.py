"""The Great Expectations runner of the gates, on DataFrames (no servers): one suite per frame,
offending units named with their numbers, evidence written whether the gate passed or failed, and
GX imported with the modules it never needs for the gates deferred."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from tenant_migration.validation import gx_gate
from tenant_migration.validation.counts import GateFailed

EQUAL = [
    gx_gate.FrameCheck("rows_equal", "ExpectColumnPairValuesToBeEqual",
                       {"column_A": "source_rows", "column_B": "target_rows"}, "row counts equal"),
    gx_gate.FrameCheck("checksums_equal", "ExpectColumnPairValuesToBeEqual",
                       {"column_A": "source_checksum", "column_B": "target_checksum"}, "checksums equal"),
]


def _frame(**changed: tuple[int, str]) -> pd.DataFrame:
    rows = []
    for unit in ("pg:devices:0000", "pg:devices:0001", "cql:datapoints:0003"):
        target = changed.get(unit, (10, "abc"))
        rows.append({"unit": unit, "source_rows": 10, "target_rows": target[0],
                     "source_checksum": "abc", "target_checksum": target[1]})
    return pd.DataFrame(rows)


def test_equal_frames_pass_every_check() -> None:
    checks = gx_gate.run_frame_checks("post_copy", _frame(), EQUAL, "unit")
    assert [c["success"] for c in checks] == [True, True]
    assert all(c["unexpected"] == [] for c in checks)


def test_a_changed_value_fails_naming_the_unit_with_both_sides_numbers(tmp_path) -> None:
    checks = gx_gate.run_frame_checks("post_copy", _frame(**{"pg:devices:0001": (10, "abd")}), EQUAL, "unit")
    rows, sums = checks
    assert rows["success"] and not sums["success"]
    assert sums["unexpected"] == ["pg:devices:0001"]
    assert sums["numbers"] == [{"unit": "pg:devices:0001", "source_rows": 10, "target_rows": 10,
                                "source_checksum": "abc", "target_checksum": "abd"}]
    result = gx_gate.finish_gate("post_copy", checks, tmp_path, started=0.0)
    assert not result.passed
    with pytest.raises(GateFailed, match=r"checksums_equal .*pg:devices:0001.*\"target_checksum\": \"abd\"") as err:
        gx_gate.raise_if_failed(result)
    assert str(result.html_path) in str(err.value)
    # The evidence is on disk before the error: GX's own result in the JSON, the failure in the HTML.
    evidence = json.loads(result.json_path.read_text())
    assert evidence["passed"] is False and evidence["checks"][1]["gx"]["success"] is False
    assert "FAIL" in result.html_path.read_text() and "pg:devices:0001" in result.html_path.read_text()


def test_a_missing_row_fails_the_count_check_only_for_its_chunk(tmp_path) -> None:
    checks = gx_gate.run_frame_checks("post_copy", _frame(**{"cql:datapoints:0003": (9, "xyz")}), EQUAL, "unit")
    assert [c["unexpected"] for c in checks] == [["cql:datapoints:0003"], ["cql:datapoints:0003"]]
    assert gx_gate.finish_gate("post_copy", checks, tmp_path, 0.0).failures[0].startswith(
        "rows_equal (row counts equal): observed 1, offending: cql:datapoints:0003")


def test_every_validation_has_its_own_suite_name() -> None:
    a = gx_gate.run_frame_checks("g", _frame(), EQUAL[:1], "unit")[0]["validation"]
    b = gx_gate.run_frame_checks("g", _frame(), EQUAL[:1], "unit")[0]["validation"]
    assert a != b and a.startswith("g.") and b.startswith("g.")


def test_great_expectations_is_imported_with_scipy_deferred_and_the_finder_removed() -> None:
    """In a fresh interpreter (what each gate task pays): after the import no finder of ours is
    left on ``sys.meta_path``; ``scipy.stats`` (imported by GX for statistical expectations no
    gate uses) is a lazy module until touched, and works as usual when touched."""
    code = (
        "import sys, importlib.util\n"
        "from tenant_migration.validation import gx_gate\n"
        "gx_gate.import_gx()\n"
        "assert not any(isinstance(f, gx_gate._DeferredImports) for f in sys.meta_path), sys.meta_path\n"
        "print(type(sys.modules['scipy.stats']).__name__)\n"
        "import scipy.stats\n"
        "print(scipy.stats.norm.cdf(0.0))\n"
        "print(type(sys.modules['scipy.stats']).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={"GX_ANALYTICS_ENABLED": "false", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["_LazyModule", "0.5", "module"]
