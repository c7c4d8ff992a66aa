"""Running a gate with Great Expectations 1.x and leaving evidence an operator can read.

Design note: suites are built in code at run time, in an ephemeral GX context (never at DAG parse
time; GX is a heavy import, started in a background thread when a gate begins so that it overlaps
the gate's own queries). What GX validates is always a small DataFrame of aggregates:
- single-store checks (preflight, final) are SQL queries returning the *violating* rows of one
  check; PostgreSQL counts them all in ONE statement and GX validates the frame of counts (every
  count zero). A GX query asset would re-run its query once per metric (five times, measured),
  and one validation per check cost more than the SQL (ADR 5);
- cross-store comparisons are frames of per-chunk counts and checksums / fingerprints computed on
  both sides.
Each frame gets one suite holding all its expectations and one validation run. No gate reads a
table into Python: violating rows are sampled (``LIMIT``) only for checks that failed.
A gate writes its evidence (GX result as JSON, an HTML report, a ledger row) whether it passed or
failed, then raises ``GateFailed`` whose message names what failed with the numbers and where the
report is.
"""

from __future__ import annotations

import contextlib
import html
import importlib.abc
import importlib.util
import itertools
import json
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tenant_migration.validation.counts import GateFailed

if TYPE_CHECKING:
    import psycopg

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
# GX logs ~220 INFO lines while it imports (docs decorators "skipping registering function ...",
# temporary docs directories): noise in every gate task's log, between the lines an on-call
# engineer reads. Its warnings and errors still show.
logging.getLogger("great_expectations").setLevel(logging.WARNING)


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


_CONTEXT: Any = None
_CONTEXT_LOCK = threading.Lock()
_WARMING: threading.Thread | None = None
_NAMES = itertools.count(1)


# Modules Great Expectations imports at its top level for features no gate uses (statistical
# expectations such as KL divergence: scipy; charts in Data Docs renderers: altair). Imported
# lazily, they cost nothing until something touches them: 40 % of GX's import (2.7 s -> 1.6 s
# measured here), which every gate task process pays once. Touched, they load as usual.
_DEFERRED = ("scipy", "altair")


class _DeferredImports(importlib.abc.MetaPathFinder):
    """A meta path finder that hands ``_DEFERRED`` packages to ``importlib.util.LazyLoader``."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname.partition(".")[0] not in _DEFERRED:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = importlib.util.LazyLoader(spec.loader)
                return spec
        return None


def import_gx() -> Any:
    """``great_expectations``, imported with ``_DEFERRED`` made lazy for the duration of the import
    only (the finder is removed afterwards: nothing else in the process is affected). The local
    stack's scheduler calls it before forking its workers (``stack/prewarm.py``)."""
    if "great_expectations" in sys.modules:
        import great_expectations as gx

        return gx
    finder = _DeferredImports()
    sys.meta_path.insert(0, finder)
    try:
        import great_expectations as gx
    finally:
        sys.meta_path.remove(finder)
    return gx


def _context() -> tuple[Any, Any]:
    """The process's ephemeral GX context and its one DataFrame batch definition (built once:
    every gate in the process reuses both, with uniquely named suites)."""
    global _CONTEXT
    with _CONTEXT_LOCK:
        if _CONTEXT is None:
            import tqdm
            from great_expectations.data_context.types.base import ProgressBarsConfig

            # GX creates its progress bars even when they are off, and tqdm's default lock is a
            # multiprocessing one: its first use imports ``multiprocessing.synchronize`` and makes
            # a semaphore (0.5 s in the first gate of a ``dags test`` run, measured). The gates
            # draw no bars from other processes: a thread lock is all tqdm needs here.
            tqdm.tqdm.set_lock(threading.RLock())

            ctx = import_gx().get_context(mode="ephemeral")
            ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
            # One pandas asset for every frame the process validates: a new data source, asset,
            # suite and validation definition per validation each saved the context's config
            # (YAML), about a tenth of a second per validation on this machine.
            frames = ctx.data_sources.add_pandas("tenant_migration.frames").add_dataframe_asset("frame")
            _CONTEXT = (ctx, frames.add_batch_definition_whole_dataframe("whole frame"))
        return _CONTEXT


def warm_up_gx() -> None:
    """Import GX and build the context in a background thread while the gate's own queries run.

    The import costs seconds of CPU; the gate meanwhile mostly waits on PostgreSQL and Cassandra
    (the driver releases the GIL), so starting it first hides most of it. Idempotent.
    """
    global _WARMING
    with _CONTEXT_LOCK:
        if _CONTEXT is not None or _WARMING is not None:
            return
        _WARMING = threading.Thread(target=_warm, name="gx-warm-up", daemon=True)
        _WARMING.start()


def _warm() -> None:
    # A failure here is not lost: the gate's own ``_context()`` call raises it in the gate's thread.
    with contextlib.suppress(Exception):
        _context()


def count_violations(conn: psycopg.Connection, checks: list[SqlCheck], ctes: str = "") -> dict[str, int]:
    """Every check's number of violating rows, in ONE statement on ``conn``: PostgreSQL counts
    them one after the other and only the counts leave the server. ``ctes``: a ``WITH`` clause
    the checks' queries share (each CTE computed once)."""
    from psycopg import sql

    if not checks:
        return {}
    q = sql.SQL("{} SELECT {}").format(sql.SQL(ctes), sql.SQL(", ").join(  # type: ignore[arg-type]
        sql.SQL("(SELECT count(*) FROM ({}) AS {})").format(sql.SQL(c.query), sql.Identifier(f"v{i}"))  # type: ignore[arg-type]
        for i, c in enumerate(checks)))
    # JIT off: these are short aggregates over one tenant's rows whose summed plan cost crosses
    # jit_above_cost; compiling them took longer than running them (0.9 s against 0.37 s, demo).
    # random_page_cost 1.1 (the usual setting for cached or SSD pages, for this statement only):
    # at the default 4 the planner preferred hashing whole shared tables (300 k properties, 150 k
    # rules) to index probes for the tenant's few thousand rows -- the demo tenant's preflight
    # statement 0.16 s -> 0.08 s, the dataset's big tenant (a third of the rows) unchanged, 1.03 s.
    with conn.transaction():
        conn.execute("SET LOCAL jit = off")
        conn.execute("SET LOCAL random_page_cost = 1.1")
        row = conn.execute(q).fetchone()
    assert row is not None
    return {c.name: int(n) for c, n in zip(checks, row, strict=True)}


def run_sql_checks(gate: str, conn: psycopg.Connection, checks: list[SqlCheck],
                   sample_rows: int = 10, ctes: str = "") -> list[dict[str, Any]]:
    """Validate pushed-down checks: each ``query`` returns its violating rows, PostgreSQL counts
    them all in one statement, and GX validates the frame of counts (one expectation: every
    count is zero). Returns one dict per check: name, success, observed count and, for a failing
    check only, a few violating rows as evidence."""
    import pandas as pd
    from psycopg import sql

    if not checks:
        return []
    counts = count_violations(conn, checks, ctes)
    frame = pd.DataFrame({"unit": [c.name for c in checks], "violations": [counts[c.name] for c in checks]})
    verdict = run_frame_checks(gate, frame, [FrameCheck(
        "no_violating_rows", "ExpectColumnValuesToBeBetween", {"column": "violations", "min_value": 0, "max_value": 0},
        "every check returns zero violating rows")], "unit")[0]
    failing = set(verdict["unexpected"])
    out: list[dict[str, Any]] = []
    for check in checks:
        sample: list[list[Any]] = []
        if check.name in failing:
            rows = conn.execute(sql.SQL("{} SELECT * FROM ({}) AS v LIMIT {}").format(
                sql.SQL(ctes), sql.SQL(check.query), sql.Literal(int(sample_rows)))).fetchall()  # type: ignore[arg-type]
            sample = [[_jsonable(v) for v in row] for row in rows]
        out.append({"name": check.name, "describe": check.describe, "success": check.name not in failing,
                    "observed": counts[check.name], "expected": 0, "sample": sample,
                    "gx": {"validation": verdict["validation"], "expectation": "expect_column_values_to_be_between",
                           "column": "violations", "unit": check.name}})
    if out:
        out[0]["gx"]["result"] = verdict["gx"]
    return out


def run_frame_checks(gate: str, frame: Any, checks: list[FrameCheck], id_column: str) -> list[dict[str, Any]]:
    """Validate a DataFrame of aggregates with ONE suite holding every check's expectation and ONE
    validation run; failing rows are named by ``id_column``."""
    if not checks:
        return []
    gx = import_gx()
    import great_expectations.expectations as gxe

    _, frames = _context()
    name = f"{gate}.{next(_NAMES)}"
    suite = gx.ExpectationSuite(name=name)
    for check in checks:
        suite.add_expectation(getattr(gxe, check.expectation)(**check.kwargs, meta={"check": check.name}))
    batch = frames.get_batch(batch_parameters={"dataframe": frame})
    # BASIC first (observed values, counts); COMPLETE -- the offending units' ids -- only when a
    # check failed: on the same frame, so the same verdict, and a passing gate (nearly every one)
    # does not pay GX's unexpected-index metrics (~30 % of a validation here).
    res = batch.validate(suite, result_format="BASIC")
    if not res.success:
        res = batch.validate(suite, result_format={"result_format": "COMPLETE",
                                                   "unexpected_index_column_names": [id_column]})
    by_check = {r.expectation_config.meta["check"]: r for r in res.results}
    out: list[dict[str, Any]] = []
    for check in checks:
        r = by_check[check.name]
        result = r.result
        bad_ids: list[Any] = []
        for item in result.get("unexpected_index_list") or []:
            bad_ids.append(item.get(id_column) if isinstance(item, dict) else item)
        entry = {"name": check.name, "describe": check.describe, "success": bool(r.success),
                 "observed": result.get("observed_value", result.get("unexpected_count")),
                 "unexpected": [_jsonable(x) for x in bad_ids][:50], "validation": name,
                 "gx": _trim(r.describe_dict())}
        if bad_ids and id_column in frame.columns:
            # The offending units' own numbers (both sides, the answer and what was expected...).
            bad = frame[frame[id_column].isin(bad_ids)].head(50)
            entry["numbers"] = json_safe(bad.astype(object).where(bad.notna(), None).to_dict(orient="records"))
        out.append(entry)
    return out


def finish_gate(gate: str, checks: list[dict[str, Any]], folder: Path, started: float) -> GateResult:
    """Assemble the result and write the JSON and HTML evidence (always, pass or fail)."""
    failures = []
    for c in checks:
        if c["success"]:
            continue
        named = c.get("unexpected") or [row[0] for row in c.get("sample", [])][:10]
        numbers = [{k: v for k, v in row.items() if k != "unit"} for row in c.get("numbers", [])[:3]]
        failures.append(f"{c['name']} ({c['describe']}): observed {c['observed']}"
                        + (f", offending: {', '.join(map(str, named[:10]))}" if named else "")
                        + (f" {json.dumps(numbers, default=str)}" if numbers else ""))
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
