"""The Great Expectations runner of the gates, on DataFrames (no servers): one Checkpoint per gate
in the run's file-backed context, its suites' Validation Results kept and Data Docs built, both
sides' numbers and the differing keys on the page, evidence written whether the gate passed or
failed, and GX imported with the modules it never needs for the gates deferred."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
from helpers import page_text

from tenant_migration.validation import gx_gate
from tenant_migration.validation.counts import GateFailed


def _frame(**changed: tuple[int, str]) -> pd.DataFrame:
    rows = []
    for unit in ("pg:devices:0000", "pg:devices:0001", "pg:users:0000"):
        target = changed.get(unit, (10, "abc"))
        rows.append({"unit": unit, "source_rows": 10, "target_rows": target[0],
                     "source_checksum": "abc", "target_checksum": target[1]})
    return pd.DataFrame(rows)


def test_equal_sides_pass_with_both_sides_numbers_on_the_page(tmp_path) -> None:
    gate = gx_gate.Gate("post_copy", tmp_path)
    gate.compare("postgres", _frame(), "postgres")
    result = gate.finish(0.0)
    assert result.passed, result.failures
    assert [c["name"] for c in result.checks] == ["postgres.devices", "postgres.users"]
    assert result.checks[0]["observed"].startswith("source 20 rows, target 20 rows; 2 units compared, checksums equal")
    # The run's own GX project: a Validation Result stored, the suite's page and the index built.
    assert list((tmp_path / "gx" / "uncommitted" / "validations").rglob("*.json"))
    assert result.report == result.pages["post_copy"] and result.report.exists()
    assert result.docs_index is not None and result.docs_index.exists()
    text = page_text(result.report)
    assert "postgres table devices: row counts and row checksums equal on source and target" in text
    assert "source 20 rows, target 20 rows" in text


def test_a_changed_row_fails_naming_table_key_and_both_values(tmp_path) -> None:
    frame = _frame(**{"pg:devices:0001": (10, "abd")})
    frame["differences"] = [None, json.dumps([{"table": "devices", "key": "id=17", "columns": [
        {"column": "name", "source": "boiler", "target": "BOILER"}]}]), None]
    gate = gx_gate.Gate("post_copy", tmp_path)
    gate.compare("postgres", frame, "postgres")
    result = gate.finish(0.0)
    assert not result.passed
    assert [c["name"] for c in result.checks if not c["success"]] == ["postgres.devices"]
    with pytest.raises(GateFailed, match=r"postgres.devices .*pg:devices:0001.*devices id=17: name: "
                                         r"source 'boiler', target 'BOILER'") as err:
        gx_gate.raise_if_failed(result)
    assert str(result.report) in str(err.value)
    evidence = json.loads(result.json_path.read_text())
    assert evidence["passed"] is False and evidence["report"] == str(result.report)
    assert evidence["checks"][0]["details"]["differing_units"][0]["target_checksum"] == "abd"
    text = page_text(result.report)
    assert "devices id=17: name: source 'boiler', target 'BOILER'" in text


def test_violations_pass_at_zero_and_fail_with_their_sample(tmp_path) -> None:
    gate = gx_gate.Gate("final", tmp_path)
    gate.violations("postgres", "devices__only_this_tenant", "every row is the tenant's", 0, [])
    gate.violations("postgres", "users__only_this_tenant", "every row is the tenant's", 2,
                    [{"id": 5, "tenant": 4}, {"id": 6, "tenant": 4}])
    result = gate.finish(0.0)
    ok, bad = result.checks
    assert ok["success"] and ok["observed"] == "0 violating rows"
    assert not bad["success"] and bad["observed"] == "2 violating rows: id=5, tenant=4 | id=6, tenant=4"
    assert "id=5, tenant=4" in page_text(result.report)


def test_gx_expectations_name_the_failing_units(tmp_path) -> None:
    gate = gx_gate.Gate("catch_up", tmp_path)
    gate.expect("lag", pd.DataFrame([{"unit": "postgres:cdc", "lag_bytes": 900}]), [gx_gate.FrameCheck(
        "lag_bytes_under_threshold", "ExpectColumnValuesToBeBetween",
        {"column": "lag_bytes", "min_value": 0, "max_value": 100}, "lag at most 100 bytes")])
    gate.compare("cassandra", pd.DataFrame([{"unit": "cql:readings:0000", "table": "readings", "source_rows": 3,
                                             "target_rows": 3, "source_checksum": "f", "target_checksum": "f",
                                             "partitions": 2}]), "cassandra")
    result = gate.finish(0.0)
    lag, readings = result.checks
    assert not lag["success"] and lag["unexpected"] == ["postgres:cdc"]
    assert "postgres:cdc (900)" in lag["observed"]
    assert readings["success"] and readings["observed"].startswith("source 3 rows, target 3 rows in 2 partitions")
    assert set(result.pages) == {"catch_up"} and result.report == result.pages["catch_up"]
    assert [c["part"] for c in result.checks] == ["lag", "cassandra"]
    assert "cassandra table readings: rows, partitions and fingerprints" in page_text(result.report)


def test_a_rerun_gate_keeps_both_validation_results(tmp_path) -> None:
    for frame in (_frame(**{"pg:users:0000": (9, "abc")}), _frame()):
        gate = gx_gate.Gate("post_copy", tmp_path)
        gate.compare("postgres", frame, "postgres")
        result = gate.finish(0.0)
    assert result.passed
    assert len(list((tmp_path / "gx" / "uncommitted" / "validations").rglob("*.json"))) == 2


def test_a_gate_with_nothing_to_check_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="nothing to check"):
        gx_gate.Gate("empty", tmp_path).finish(0.0)


def test_the_data_docs_prewarm_compiles_the_templates_and_leaves_nothing(tmp_path, monkeypatch) -> None:
    """What the scheduler runs before it forks: a scratch site, built and removed; afterwards the
    process's template cache holds GX's page templates (a gate's docs build skips compiling)."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gx_gate.prewarm_data_docs()
    assert list(tmp_path.iterdir()) == []
    from great_expectations.render.view.view import DefaultJinjaView

    view = DefaultJinjaView()
    assert view.env.bytecode_cache is not None and len(view.env.bytecode_cache.codes) > 20


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


def test_a_gate_in_another_process_reopens_the_runs_project(tmp_path) -> None:
    """Each gate task is a process of its own: the second opens the project the first made (its
    settings read back from YAML) and adds its Validation Result and page beside the first's."""
    code = (
        "import sys, pandas as pd\n"
        "from pathlib import Path\n"
        "from tenant_migration.validation import gx_gate\n"
        "gate = gx_gate.Gate(sys.argv[2], Path(sys.argv[1]))\n"
        "gate.violations('checks', 'one', 'a check', 0, [])\n"
        "result = gate.finish(0.0)\n"
        "assert result.passed and result.report.exists(), result\n"
    )
    for name in ("preflight", "post_copy"):
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path), name], capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
    pages = {p.parts[-4] for p in (tmp_path / "gx" / "uncommitted" / "data_docs" / "local_site" / "validations").rglob("*.html")}
    assert pages == {"preflight", "post_copy"}
