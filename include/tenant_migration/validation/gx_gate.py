"""Running a gate as a Great Expectations Checkpoint and leaving evidence an auditor can read.

Design note (ADR 5, ADR 17): a gate (``Gate``) gathers its parts -- per-table comparisons of both
sides (``compare``), pushed-down checks that count violating rows (``sql``, ``violations``), GX's
own expectations over small frames (``expect``) -- each under a suite name, and ``finish`` runs
them as ONE Checkpoint in the run's file-backed GX project (``<reports>/<run>/gx``), whose
``UpdateDataDocsAction`` builds the Data Docs pages. What GX validates is always a small frame of
aggregates, never a table:
- single-store checks (preflight, final) are SQL queries returning the *violating* rows of one
  check; PostgreSQL counts them all in ONE statement, and a failing check's rows are sampled
  (``LIMIT``) with their column names;
- cross-store comparisons are frames of per-chunk counts and checksums / fingerprints computed on
  both sides, with the differing keys and both sides' values for the chunks that differ
  (``validation.differences``).
The gates' own expectations (``validation.expectations``) put both sides' numbers in their
observed value. GX is a heavy import, started in a background thread when a gate begins so that
it overlaps the gate's own queries (never at DAG parse time). A gate writes its evidence (the GX
Validation Results and pages, ``gate_<name>.json``) whether it passed or failed; the caller records
the ledger row and raises ``GateFailed`` naming what failed with the numbers and the page.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
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
    # The gate's Data Docs page (its suite's Validation Result; ``pages``: by suite name).
    pages: dict[str, Path] = field(default_factory=dict)
    report: Path | None = None
    docs_index: Path | None = None

    def summary(self) -> str:
        if self.passed:
            return f"{self.gate}: {len(self.checks)} checks passed"
        return f"{self.gate}: {len(self.failures)} of {len(self.checks)} checks failed: " + "; ".join(self.failures)

    def evidence(self) -> dict[str, Any]:
        return json_safe({"gate": self.gate, "passed": self.passed, "seconds": round(self.seconds, 3),
                          "failures": self.failures, "checks": self.checks,
                          "data_docs": {name: str(p) for name, p in self.pages.items()},
                          "report": str(self.report) if self.report else None})


FRAMES = "tenant_migration_frames"  # no spaces: it names the pages' files
_READY: Any = None
_CONTEXTS: dict[str, tuple[Any, Any]] = {}
_CONTEXT_LOCK = threading.RLock()
_WARMING: dict[str, threading.Thread] = {}
log = logging.getLogger(__name__)


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


class _SharedTemplates:
    """A process-wide Jinja bytecode cache for GX's Data Docs views.

    Every ``DefaultJinjaView`` GX makes (three per docs build: the validation page, the suite's
    page, the index) builds a new Jinja ``Environment`` and compiles its ~60 templates again:
    0.2 s of every gate's 0.3 s docs build here. Jinja's own ``bytecode_cache`` hook keeps the
    compiled templates for the process (and, filled by the scheduler before it forks, for every
    task process). Same templates, same pages; only the compilation is skipped."""

    def __init__(self) -> None:
        import jinja2

        class Cache(jinja2.BytecodeCache):
            def __init__(self) -> None:
                self.codes: dict[str, Any] = {}

            def load_bytecode(self, bucket: Any) -> None:
                code = self.codes.get(bucket.key)
                if code is not None:
                    bucket.code = code

            def dump_bytecode(self, bucket: Any) -> None:
                self.codes[bucket.key] = bucket.code

        self.cache = Cache()

    def install(self) -> None:
        from great_expectations.render.view.view import DefaultJinjaView

        if getattr(DefaultJinjaView.__init__, "_tm_shared", False):
            return
        original = DefaultJinjaView.__init__
        cache = self.cache

        def init(view: Any, *args: Any, **kwargs: Any) -> None:
            original(view, *args, **kwargs)
            view.env.bytecode_cache = cache

        init._tm_shared = True  # type: ignore[attr-defined]
        DefaultJinjaView.__init__ = init  # type: ignore[method-assign,assignment]


def _gx_ready() -> Any:
    """GX imported, the gates' expectations registered (``expectations``: a context reopened in
    another process drops an expectation whose class it does not know), the templates shared."""
    global _READY
    with _CONTEXT_LOCK:
        if _READY is None:
            import tqdm

            gx = import_gx()
            import tenant_migration.validation.expectations  # noqa: F401  (registers the classes)

            # GX creates its progress bars even when they are off, and tqdm's default lock is a
            # multiprocessing one: its first use imports ``multiprocessing.synchronize`` and makes
            # a semaphore (0.5 s in the first gate of a ``dags test`` run, measured). The gates
            # draw no bars from other processes: a thread lock is all tqdm needs here.
            tqdm.tqdm.set_lock(threading.RLock())
            _SharedTemplates().install()
            _READY = gx
        return _READY


def run_context(folder: Path) -> tuple[Any, Any]:
    """The run's file-backed GX context (``<folder>/gx``: its suites, validation definitions,
    checkpoints, Validation Results and Data Docs, beside the run's other reports) and the batch
    definition every gate's frame is validated through. Opened once per process and folder; the
    pandas data source is added by the run's first gate and found by the others."""
    from great_expectations.data_context.types.base import ProgressBarsConfig

    gx = _gx_ready()
    key = str(folder.resolve())
    with _CONTEXT_LOCK:
        if key not in _CONTEXTS:
            folder.mkdir(parents=True, exist_ok=True)
            ctx = gx.get_context(mode="file", project_root_dir=str(folder))
            # The project keeps no config variables (no secrets: its data are frames the gate
            # passes in). GX re-reads and re-substitutes this template file on every look-up of a
            # store name, ~200 times per gate; absent, each look-up is one failed open.
            (folder / "gx" / "uncommitted" / "config_variables.yml").unlink(missing_ok=True)
            # Read back from the project's YAML the setting is a plain dict; set by the run's first
            # gate, a ``ProgressBarsConfig``. Written once, by the first gate.
            bars = ctx.variables.progress_bars
            if (bars.get("globally") if isinstance(bars, dict) else getattr(bars, "globally", None)) is not False:
                ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
                ctx.variables.save()
            try:
                source = ctx.data_sources.get(FRAMES)
            except (KeyError, ValueError):
                source = ctx.data_sources.add_pandas(FRAMES)
            try:
                asset = source.get_asset("gate_frame")
            except LookupError:
                asset = source.add_dataframe_asset("gate_frame")
            try:
                batch = asset.get_batch_definition("whole_frame")
            except (KeyError, LookupError, ValueError):
                batch = asset.add_batch_definition_whole_dataframe("whole_frame")
            _CONTEXTS[key] = (ctx, batch)
        return _CONTEXTS[key]


def warm_up_gx(folder: Path | None = None) -> None:
    """Import GX, register the gates' expectations and open the run's GX project (``folder``: the
    run's reports folder) in a background thread while the gate's own queries run.

    The import costs seconds of CPU and opening a file-backed project ~0.2 s (GX parses its YAML
    with ruamel); the gate meanwhile mostly waits on PostgreSQL and Cassandra (the drivers release
    the GIL), so starting both first hides most of it. Idempotent per folder.
    """
    key = str(folder.resolve()) if folder is not None else ""
    with _CONTEXT_LOCK:
        if key in _WARMING or (key in _CONTEXTS if folder is not None else _READY is not None):
            return
        thread = threading.Thread(target=_warm, args=(folder,), name="gx-warm-up", daemon=True)
        _WARMING[key] = thread
        thread.start()


def _warm(folder: Path | None) -> None:
    # A failure here is not lost: the gate's own ``run_context()`` call raises it in the gate's thread.
    with contextlib.suppress(Exception):
        _gx_ready()
        if folder is not None:
            run_context(folder)


def prewarm_data_docs() -> None:
    """Build a one-expectation Data Docs site in a scratch folder: GX, the gates' expectations and
    the Data Docs templates loaded and compiled before any gate (the scheduler calls it before it
    forks its workers, ``stack/prewarm.py``; every task process inherits them)."""
    import tempfile

    import pandas as pd

    with tempfile.TemporaryDirectory(prefix="tm-gx-prewarm-") as scratch:
        gate = Gate("prewarm", Path(scratch))
        gate.violations("scratch", "nothing", "a scratch check", 0, [])
        gate.expect("scratch", pd.DataFrame({"unit": ["one"], "value": [0]}), [FrameCheck(
            "value_zero", "ExpectColumnValuesToBeBetween", {"column": "value", "min_value": 0, "max_value": 0},
            "a scratch check")])
        gate.finish(time.monotonic())
        with _CONTEXT_LOCK:
            _CONTEXTS.pop(str(Path(scratch).resolve()), None)


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


class Gate:
    """One gate: its suites' expectations over one frame of aggregates, run as ONE GX Checkpoint
    in the run's file-backed context (``run_context``), whose Data Docs action builds the pages.

    The gate's parts are added by store or concern (``compare``, ``sql``, ``violations``,
    ``expect``), each under a suite name; ``finish`` concatenates the parts into the batch (a
    ``section`` and ``subject`` column tell them apart), saves one Expectation Suite and one
    Validation Definition per suite, runs the Checkpoint, and writes the evidence (always, pass or
    fail). The gate's one suite is named after it, its parts in each expectation's meta; re-running
    a gate (a cleared task) updates it and adds a new Validation Result beside the earlier ones."""

    def __init__(self, name: str, folder: Path) -> None:
        self.name = name
        self.folder = folder
        self.parts: list[Any] = []
        self.rows: list[dict[str, Any]] = []  # one per ``violations`` check: one frame for all of them
        self.expectations: dict[str, list[tuple[str, str, str, dict[str, Any]]]] = {}

    def _add(self, suite: str, check: str, describe: str, expectation: str, kwargs: dict[str, Any]) -> None:
        self.expectations.setdefault(suite, []).append((check, describe, expectation, kwargs))

    def compare(self, suite: str, frame: Any, store: str, compared: str | None = None) -> None:
        """One ``ExpectSidesToMatch`` per table of ``frame`` (columns ``unit``, ``table``,
        ``source_rows``, ``target_rows``, ``source_checksum``, ``target_checksum``; optional
        ``partitions`` and ``differences``, JSON of the differing keys). ``compared``: what the
        checksums cover, in words."""
        if frame.empty:
            return
        compared = compared or ("rows, partitions and fingerprints of (key, value, write time)" if store == "cassandra"
                                else "row counts and row checksums")
        part = frame.copy()
        if "table" not in part.columns:
            part["table"] = [str(u).split(":")[1] if ":" in str(u) else str(u) for u in part["unit"]]
        part["section"] = f"{suite}"
        part["subject"] = part["table"]
        self.parts.append(part.drop(columns=["table"]))
        for table in dict.fromkeys(part["table"]):
            self._add(suite, f"{suite}.{table}", f"{store} {table}: {compared} equal on source and target",
                      "ExpectSidesToMatch", {"section": suite, "subject": table, "store": store, "compared": compared})

    def violations(self, suite: str, check: str, describe: str, count: int, sample: list[Any]) -> None:
        """One ``ExpectNoViolatingRows``: ``count`` violating rows (partitions, problems) found,
        ``sample`` of them (bounded by the caller)."""
        self.rows.append({"section": suite, "subject": check, "unit": check, "violations": int(count),
                          "sample": json.dumps(json_safe(sample), default=str) if sample else None})
        self._add(suite, check, describe, "ExpectNoViolatingRows", {"section": suite, "subject": check,
                                                                    "describe": describe})

    def sql(self, suite: str, conn: psycopg.Connection, checks: list[SqlCheck], ctes: str = "",
            sample_rows: int = 10) -> None:
        """Pushed-down checks: each query returns its violating rows; PostgreSQL counts them all
        in ONE statement (``count_violations``), and a check that found any is sampled
        (``sample_rows`` of them, with their column names) for the page."""
        from psycopg import sql

        counts = count_violations(conn, checks, ctes)
        for check in checks:
            sample: list[dict[str, Any]] = []
            if counts[check.name]:
                cur = conn.execute(sql.SQL("{} SELECT * FROM ({}) AS v LIMIT {}").format(
                    sql.SQL(ctes), sql.SQL(check.query), sql.Literal(int(sample_rows))))  # type: ignore[arg-type]
                names = [d.name for d in cur.description or []]
                sample = [{n: _jsonable(v) for n, v in zip(names, row, strict=True)} for row in cur.fetchall()]
            self.violations(suite, check.name, check.describe, counts[check.name], sample)

    def expect(self, suite: str, frame: Any, checks: list[FrameCheck]) -> None:
        """GX's own expectations (``FrameCheck``: class name and kwargs) over ``frame``'s rows,
        restricted to them with a ``row_condition``; failing rows are named by their ``unit``."""
        section = f"{suite}:{len(self.parts)}"
        part = frame.copy()
        part["section"] = section
        part["subject"] = part["unit"] if "unit" in part.columns else None
        self.parts.append(part)
        for check in checks:
            self._add(suite, check.name, check.describe, check.expectation,
                      {**check.kwargs, "row_condition": f'section=="{section}"', "condition_parser": "pandas"})

    def finish(self, started: float) -> GateResult:
        """Run the gate's Checkpoint, build its Data Docs, write ``gate_<name>.json``."""
        import pandas as pd

        if not self.expectations:
            raise ValueError(f"gate {self.name} has nothing to check: a gate with no expectation cannot pass")
        gx = _gx_ready()
        import great_expectations.expectations as gxe
        from great_expectations.checkpoint import UpdateDataDocsAction

        from tenant_migration.validation import expectations as own

        began = time.monotonic()
        ctx, batch = run_context(self.folder)
        opened = time.monotonic()
        # Object columns: a part's integers stay integers beside another part's missing values
        # (a float column would show 900 as 900.0 on the page).
        parts = self.parts + ([pd.DataFrame(self.rows)] if self.rows else [])
        frame = pd.concat([p.astype(object) for p in parts], ignore_index=True, sort=False)
        # ONE suite per gate (its parts -- stores, concerns -- are in each expectation's meta and
        # in its rendered text): one Validation Result, one page. A suite per part made a page,
        # a docs build and the store round trips of each (three parts: 0.5 s instead of 0.15 s).
        # Given to the constructor, not added one by one: ``add_expectation`` compares each new
        # expectation with every earlier one (quadratic: 0.2 s for the preflight's ~50 checks).
        suite = gx.ExpectationSuite(name=self.name, expectations=[
            (getattr(own, expectation, None) or getattr(gxe, expectation))(
                **kwargs, meta={"check": check, "describe": describe, "part": part})
            for part, items in self.expectations.items() for check, describe, expectation, kwargs in items])
        # Saved once, through the Checkpoint: its ``add_or_update`` saves its validation
        # definitions and their suites (saving each first as well doubled the store round trips).
        definition = gx.ValidationDefinition(name=self.name, data=batch, suite=suite)
        checkpoint = ctx.checkpoints.add_or_update(gx.Checkpoint(
            name=self.name, validation_definitions=[definition],
            actions=[UpdateDataDocsAction(name="data_docs")],
            result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["unit"],
                           "partial_unexpected_count": 20}))
        outcome = checkpoint.run(batch_parameters={"dataframe": frame})
        checks: list[dict[str, Any]] = []
        pages: dict[str, Path] = {}
        for identifier, result in outcome.run_results.items():
            page = _page(ctx, identifier)
            if page is not None:
                pages[result.suite_name] = page
            for r in result.results:
                meta = r.expectation_config.meta or {}
                checks.append(_entry(meta.get("part", ""), meta.get("check", r.expectation_config.type),
                                     meta.get("describe", ""), r))
        index = self.folder / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"
        report = pages.get(self.name)
        log.info("gate %s: %d expectations, GX project opened in %.2f s, Checkpoint and Data Docs %.2f s", self.name,
                 len(checks), opened - began, time.monotonic() - opened)
        return _finish(self.name, checks, self.folder, started, pages, report, index if index.exists() else None)


def _page(ctx: Any, identifier: Any) -> Path | None:
    """The Data Docs page of one Validation Result, as a local path."""
    from urllib.parse import unquote, urlparse

    for site in ctx.get_docs_sites_urls(resource_identifier=identifier, only_if_exists=False):
        url = site.get("site_url")
        if url and url.startswith("file://"):
            return Path(unquote(urlparse(url).path))
    return None


def _entry(suite: str, check: str, describe: str, r: Any) -> dict[str, Any]:
    """One expectation's result as the ledger and the failure message carry it: both sides'
    numbers (the observed value) and, for GX's own expectations, the units that failed."""
    result = r.result or {}
    observed = result.get("observed_value")
    units = [item.get("unit") if isinstance(item, dict) else item for item in result.get("unexpected_index_list") or []]
    if observed is None:
        if "unexpected_count" in result:
            observed = f"{result.get('unexpected_count')} of {result.get('element_count')} units unexpected"
            values = result.get("partial_unexpected_list") or []
            if units:
                observed += ": " + ", ".join(f"{u} ({v})" for u, v in zip(units, values, strict=False))
        elif r.exception_info and r.exception_info.get("raised_exception"):
            observed = f"the expectation raised: {r.exception_info.get('exception_message')}"
    return json_safe({"name": check, "part": suite, "describe": describe, "success": bool(r.success),
                      "expectation": r.expectation_config.type, "observed": observed,
                      "unexpected": [_jsonable(u) for u in units][:50], "details": result.get("details")})


def _finish(gate: str, checks: list[dict[str, Any]], folder: Path, started: float, pages: dict[str, Path],
            report: Path | None, index: Path | None) -> GateResult:
    failures = [f"{c['name']} ({c['describe']}): {_short(c['observed'])}" for c in checks if not c["success"]]
    result = GateResult(gate=gate, passed=not failures, failures=failures, checks=checks,
                        seconds=time.monotonic() - started, pages=pages, report=report, docs_index=index)
    folder.mkdir(parents=True, exist_ok=True)
    result.json_path = folder / f"gate_{gate}.json"
    result.json_path.write_text(json.dumps(result.evidence(), indent=2, default=str))
    log.info("gate %s %s: Data Docs %s", gate, "passed" if result.passed else "FAILED", report)
    return result


def _short(value: Any, limit: int = 800) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "..."


def raise_if_failed(result: GateResult) -> None:
    if not result.passed:
        raise GateFailed(f"{result.summary()} (Data Docs: {result.report})")


def _jsonable(value: Any) -> Any:
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return str(value)


def json_safe(value: Any) -> Any:
    """JSON-safe: NaN and infinities (pandas' missing values) become null, recursively."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
