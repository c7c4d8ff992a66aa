"""Running a gate with Great Expectations 1.x and leaving evidence an operator can read.

Design note: suites are built in code at run time, in an ephemeral GX context (never at DAG parse
time; GX is a heavy import). Two kinds of batches are validated:
- SQL query assets that GX pushes down to PostgreSQL (each query returns the *violating* rows of
  one check, and the expectation is "zero rows": the count runs in the database);
- pandas DataFrames of aggregates (counts, checksums, fingerprints) computed on both sides, for
  comparisons across two stores that GX cannot compare directly.
A failing gate first writes its evidence (GX result as JSON, an HTML report, a ledger row), then
raises ``GateFailed`` whose message names what failed with the numbers and where the report is.
"""

from __future__ import annotations

import html
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tenant_migration.validation.counts import GateFailed

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


@dataclass(frozen=True)
class SqlCheck:
    """One pushed-down check: ``query`` returns the violating rows; zero rows passes."""

    name: str
    query: str
    describe: str


@dataclass(frozen=True)
class FrameCheck:
    """One expectation on a DataFrame, by GX expectation class name and kwargs."""

    name: str
    expectation: str
    kwargs: dict[str, Any]
    describe: str


@dataclass
class GateResult:
    gate: str
    passed: bool
    failures: list[str] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    json_path: Path | None = None
    html_path: Path | None = None

    def summary(self) -> str:
        if self.passed:
            return f"{self.gate}: {len(self.checks)} checks passed"
        return f"{self.gate}: {len(self.failures)} of {len(self.checks)} checks failed: " + "; ".join(self.failures)

    def evidence(self) -> dict[str, Any]:
        return json_safe({"gate": self.gate, "passed": self.passed, "seconds": round(self.seconds, 3),
                       "failures": self.failures, "checks": self.checks,
                       "html_report": str(self.html_path) if self.html_path else None})


def _gx() -> Any:
    import great_expectations as gx

    return gx


def _context() -> Any:
    return _gx().get_context(mode="ephemeral")


def run_sql_checks(gate: str, sqlalchemy_url: str, checks: list[SqlCheck], sample_rows: int = 10) -> list[dict[str, Any]]:
    """Validate each check's query asset with ``ExpectTableRowCountToEqual(0)`` (pushed down).

    Returns one dict per check: name, success, observed count, a few violating rows as evidence.
    """
    if not checks:
        return []
    gx = _gx()
    import great_expectations.expectations as gxe
    import sqlalchemy

    ctx = _context()
    source = ctx.data_sources.add_postgres(f"{gate}_pg", connection_string=sqlalchemy_url)
    suite_results: list[dict[str, Any]] = []
    engine = sqlalchemy.create_engine(sqlalchemy_url)
    try:
        for check in checks:
            asset = source.add_query_asset(check.name, query=check.query)
            batch = asset.add_batch_definition_whole_table(f"{check.name}_all")
            suite = ctx.suites.add(gx.ExpectationSuite(name=f"{gate}.{check.name}"))
            suite.add_expectation(gxe.ExpectTableRowCountToEqual(value=0))
            vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=f"{gate}.{check.name}", data=batch, suite=suite))
            res = vd.run()
            observed = res.results[0].result.get("observed_value")
            sample: list[list[Any]] = []
            if not res.success:
                with engine.connect() as conn:
                    rows = conn.execute(sqlalchemy.text(f"SELECT * FROM ({check.query}) AS v LIMIT {int(sample_rows)}"))
                    sample = [[_jsonable(v) for v in row] for row in rows]
            suite_results.append({"name": check.name, "describe": check.describe, "success": bool(res.success),
                                  "observed": observed, "expected": 0, "sample": sample,
                                  "gx": res.describe_dict()})
    finally:
        engine.dispose()
    return suite_results


def run_frame_checks(gate: str, frame: Any, checks: list[FrameCheck], id_column: str) -> list[dict[str, Any]]:
    """Validate a DataFrame of aggregates; failing rows are named by ``id_column``."""
    if not checks:
        return []
    gx = _gx()
    import great_expectations.expectations as gxe

    ctx = _context()
    asset = ctx.data_sources.add_pandas(f"{gate}_frames").add_dataframe_asset(f"{gate}_frame")
    batch = asset.add_batch_definition_whole_dataframe("all")
    out: list[dict[str, Any]] = []
    for check in checks:
        suite = ctx.suites.add(gx.ExpectationSuite(name=f"{gate}.{check.name}"))
        suite.add_expectation(getattr(gxe, check.expectation)(**check.kwargs))
        vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=f"{gate}.{check.name}", data=batch, suite=suite))
        res = vd.run(batch_parameters={"dataframe": frame},
                     result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [id_column]})
        result = res.results[0].result
        bad_ids: list[Any] = []
        for item in result.get("unexpected_index_list") or []:
            bad_ids.append(item.get(id_column) if isinstance(item, dict) else item)
        out.append({"name": check.name, "describe": check.describe, "success": bool(res.success),
                    "observed": result.get("observed_value", result.get("unexpected_count")),
                    "unexpected": [_jsonable(x) for x in bad_ids][:50],
                    "gx": _trim(res.describe_dict())})
    return out


def finish_gate(gate: str, checks: list[dict[str, Any]], folder: Path, started: float) -> GateResult:
    """Assemble the result and write the JSON and HTML evidence (always, pass or fail)."""
    failures = []
    for c in checks:
        if c["success"]:
            continue
        named = c.get("unexpected") or [row[0] for row in c.get("sample", [])][:10]
        failures.append(f"{c['name']} ({c['describe']}): observed {c['observed']}"
                        + (f", offending: {', '.join(map(str, named[:10]))}" if named else ""))
    result = GateResult(gate=gate, passed=not failures, failures=failures, checks=checks,
                        seconds=time.monotonic() - started)
    folder.mkdir(parents=True, exist_ok=True)
    result.json_path = folder / f"gate_{gate}.json"
    result.html_path = folder / f"gate_{gate}.html"
    result.json_path.write_text(json.dumps(result.evidence(), indent=2, default=str))
    result.html_path.write_text(render_html(result))
    return result


def raise_if_failed(result: GateResult) -> None:
    if not result.passed:
        raise GateFailed(f"{result.summary()} (report: {result.html_path})")


def render_html(result: GateResult) -> str:
    rows = []
    for c in result.checks:
        status = "PASS" if c["success"] else "FAIL"
        detail = c.get("unexpected") or c.get("sample") or ""
        rows.append(
            f"<tr class='{status.lower()}'><td>{status}</td><td>{html.escape(c['name'])}</td>"
            f"<td>{html.escape(c['describe'])}</td><td>{html.escape(str(c['observed']))}</td>"
            f"<td><code>{html.escape(json.dumps(detail, default=str)[:2000])}</code></td></tr>"
        )
    verdict = "passed" if result.passed else "FAILED"
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>Gate {html.escape(result.gate)}: {verdict}</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}"
        ".fail{background:#fdd}.pass{background:#dfd}</style></head><body>"
        f"<h1>Gate {html.escape(result.gate)}: {verdict}</h1>"
        f"<p>{len(result.checks)} checks in {result.seconds:.2f}s. Validated with Great Expectations.</p>"
        "<table><tr><th>status</th><th>check</th><th>what it asserts</th><th>observed</th><th>evidence</th></tr>"
        + "".join(rows) + "</table></body></html>"
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return str(value)


def _trim(d: dict[str, Any]) -> dict[str, Any]:
    """Keep GX's result small in the ledger: drop the full unexpected lists."""
    text = json.dumps(d, default=str)
    return d if len(text) < 20000 else {"success": d.get("success"), "statistics": d.get("statistics")}


def json_safe(value: Any) -> Any:
    """JSON-safe: NaN and infinities (pandas' missing values) become null, recursively."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
