"""Weekly rehearsal: migrate the test-pool tenant to the target and back, measure, predict.

Design note. A rehearsal is the real thing at small scale: the same library steps as
``tenant_migration`` (run id ``tenant_rehearsal/<dag run>``), then the way back of
``rollback`` (run id ``.../back``). Before anything moves, ``begin_rehearsal`` stores a baseline of
the shared platform's test-pool data (per-table count + checksum on the primary, per-chunk
Cassandra fingerprints); ``verify_shared_unchanged`` compares against it at the end, with the DNS
answers, through a GX gate. Every task's wall time goes to ``tm_control.rehearsal_tasks``; one
row per rehearsal goes to ``tm_control.rehearsals`` (its key numbers and the report), so trends
show across weeks. The prediction for the reference tenant is a linear model fitted on the
rehearsal's own chunks (seconds = per-chunk overhead + size x marginal cost), not a naive ratio:
a tiny tenant's times are mostly overhead, which does not grow with size.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from tenant_migration import keycodec, ledger, profile
from tenant_migration.endpoints import Endpoints
from tenant_migration.rollback import RollbackRefused, RollbackSpec
from tenant_migration.spec import InvalidParams, MigrationSpec, parse_spec
from tenant_migration.tenant_map import TenantMap
from tenant_migration.validation.gx_gate import json_safe

_DDL = """
CREATE SCHEMA IF NOT EXISTS tm_control;
CREATE TABLE IF NOT EXISTS tm_control.rehearsals (
    rehearsal_id text PRIMARY KEY, tenant_id bigint NOT NULL, reference_tenant_id bigint NOT NULL,
    status text NOT NULL DEFAULT 'running', verdict text, started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz, total_seconds float8, pg_rows_per_s float8, cql_partitions_per_s float8,
    predicted_seconds float8, gates_passed int, gates_failed int, report_path text,
    baseline jsonb NOT NULL DEFAULT '{}'::jsonb, report jsonb NOT NULL DEFAULT '{}'::jsonb);
CREATE TABLE IF NOT EXISTS tm_control.rehearsal_tasks (
    rehearsal_id text NOT NULL, task_id text NOT NULL, map_index int NOT NULL DEFAULT -1,
    seconds float8 NOT NULL, ok boolean NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
"""
# Migration Day steps that wait by design: predicted with Migration Day's own settings.
WAIT_STEPS = {"go.lower_dns_ttl": "max_ttl_wait_s", "go.drain_stragglers": "drain_seconds"}
PG_SIZED = ("preflight", "ready.plan_postgres", "ready.gate_post_copy", "set.warm_up", "gate_final")
CQL_SIZED = ("ready.plan_cassandra", "ready.gate_post_copy", "set.catch_up_cassandra")


@dataclass(frozen=True)
class RehearsalSpec:
    tenant_id: int = 5
    tenant_slug: str = "test-pool"
    platform: str = ""  # the platform profile (``MigrationSpec.platform``)
    reference_tenant_id: int = 1
    history: int = 8
    chunk_rows: int = 50_000
    max_tasks: int = 2  # the copy pools' slots: more tasks only add Airflow overhead (docs/benchmarks.md)
    cassandra_days: int = 4  # a test pool's recent days; its migration says so (partial_history_ok)
    max_ttl_wait_s: int = 5
    drain_seconds: int = 5
    drain_quiet_s: int = 3  # the test pool writes nothing after the flip: the drain ends soon after its minimum
    dns_zone: str = "iot.example.test."
    target_endpoint_prefix: str = "vpc"
    time_budget_minutes: int = 120  # an unattended weekly run: over this, the on-call webhook hears of it

    def migration_spec(self) -> MigrationSpec:
        return parse_spec({"tenant_id": self.tenant_id, "platform": self.platform, "chunk_rows": self.chunk_rows, "max_tasks": self.max_tasks,
                           "cassandra_days": self.cassandra_days,
                           "partial_history_ok": self.cassandra_days != 0, "max_ttl_wait_s": self.max_ttl_wait_s,
                           "drain_seconds": self.drain_seconds, "drain_quiet_s": self.drain_quiet_s, "dns_zone": self.dns_zone,
                           "target_endpoint_prefix": self.target_endpoint_prefix, "require_approval": False,
                           "time_budget_minutes": self.time_budget_minutes})

    def rollback_spec(self, migration_run_id: str) -> RollbackSpec:
        return RollbackSpec(self.tenant_id, self.tenant_slug, migration_run_id, self.dns_zone,
                            self.target_endpoint_prefix, self.max_ttl_wait_s, platform=self.platform)


def parse_rehearsal_spec(params: dict[str, Any]) -> RehearsalSpec:
    known = set(RehearsalSpec.__dataclass_fields__)
    unknown = sorted(set(params) - known)
    if unknown:
        raise InvalidParams(f"unknown param(s): {', '.join(unknown)}")
    fields = {k: v for k, v in params.items() if v is not None}
    try:
        typed: dict[str, Any] = {
            k: (str(v) if isinstance(RehearsalSpec.__dataclass_fields__[k].default, str) else int(v))
            for k, v in fields.items()}
        spec = RehearsalSpec(**typed)
    except (TypeError, ValueError) as exc:
        raise InvalidParams(f"rehearsal params: {exc}") from None
    if spec.tenant_id == spec.reference_tenant_id:
        raise InvalidParams("the rehearsal tenant must not be the reference tenant")
    return spec


def back_run_id(run_id: str) -> str:
    return f"{run_id}/back"


# ------------------------------------------------------------------------------------ task glue


def call(fn: Callable[..., Any], context: dict[str, Any], *args: Any) -> Any:
    """Run a migration step (``flows.*``: migration spec, run id), a rollback step (``rollback``:
    rollback spec, run id ``/back``) or a rehearsal step (this module: rehearsal spec) and record
    the task's wall time."""
    from airflow.sdk.exceptions import AirflowFailException

    from tenant_migration import alerts
    from tenant_migration.runtime import announce, fail_fast, run_key, task_starting

    module = fn.__module__
    kind = "steps" if module.startswith("tenant_migration.flows.") else module.rsplit(".", 1)[-1]
    if kind not in ("steps", "rollback", "rehearsal"):
        raise ValueError(f"not a step of the migration, the rollback or the rehearsal: {module}.{fn.__name__}")
    rid = run_key(context)
    ep = Endpoints.from_airflow()
    announce(ep, context, fn, back_run_id(rid) if kind == "rollback" else rid)
    task_starting()
    ti = context["ti"]
    with fail_fast():
        rspec = parse_rehearsal_spec(dict(context["params"]))
    spec: Any = {"steps": rspec.migration_spec(), "rollback": rspec.rollback_spec(rid), "rehearsal": rspec}[kind]
    started, ok = time.monotonic(), False
    try:
        with fail_fast(), alerts.watch(ep, context, back_run_id(rid) if kind == "rollback" else rid):
            out = fn(ep, spec, back_run_id(rid) if kind == "rollback" else rid, *args)
        ok = True
        return out
    except RollbackRefused as exc:
        raise AirflowFailException(str(exc)) from exc
    finally:
        index = getattr(ti, "map_index", None)
        record_task(ep, rid, ti.task_id, -1 if index is None else int(index), time.monotonic() - started, ok)


def record_task(ep: Endpoints, rid: str, task_id: str, map_index: int, seconds: float, ok: bool) -> None:
    with ep.target.connect(autocommit=True) as tconn:
        tconn.execute(_DDL)
        tconn.execute("INSERT INTO tm_control.rehearsal_tasks (rehearsal_id, task_id, map_index, seconds, ok) "
                      "VALUES (%s, %s, %s, %s, %s)", (rid, task_id, map_index, seconds, ok))


# ------------------------------------------------------------------------------------ baseline


def shared_fingerprint(ep: Endpoints, spec: RehearsalSpec, tmap: TenantMap,
                       cql_chunks: list[ledger.Chunk] | None = None) -> dict[str, Any]:
    """The shared platform's copy of the tenant: per table (rows, checksum) on the primary, per
    Cassandra chunk its fingerprint, and the DNS answers of the tenant's records."""
    from tenant_migration.cassandra import plan as cql_plan
    from tenant_migration.cassandra.fingerprint import fingerprint_chunks
    from tenant_migration.cutover import dns
    from tenant_migration.flows.common import dns_plans

    with ep.source_primary.connect(autocommit=True) as pconn:
        ignore = BOOKKEEPING | set(profile.named(spec.platform).registrations.bookkeeping_columns)
        pg = {t: list(_shared_checksum(pconn, tmap, t, spec.tenant_id, ignore)) for t in tmap.load_order()}
        with ep.cassandra_source.session() as src:
            if cql_chunks is None:
                cql_chunks = cql_plan.plan_tenant(pconn, tmap, spec.tenant_id, datetime.now(UTC).date(),
                                                  cql_plan.PlanOptions(days=spec.cassandra_days or None), session=src)
            # exact: this baseline is compared with a later call's digests (see fingerprint._prints).
            report = fingerprint_chunks(src, src, tmap, cql_chunks, exact=True)
    r53 = ep.aws.client("route53")
    zid = dns.zone_id(r53, spec.dns_zone)
    answers = {p.name: dns.resolve(r53, zid, p.name)[1]
               for p in dns_plans(spec, spec.tenant_slug)}
    return {"postgres": pg, "cassandra": {r["chunk_id"]: [r["source_rows"], str(r["source_hash"])] for r in report.records()},
            # keycodec: a chunk's bounds hold the keys' own types (a uuid, a date), which JSON has not
            "cql_chunks": [keycodec.encode(asdict(c)) for c in cql_chunks], "dns": answers}


# The rehearsal itself suspends and resumes the tenant's registrations: the columns the switch
# writes (its profile's ``registrations.bookkeeping_columns``) and every ``updated_at`` (rewritten
# by a platform's trigger) change by design; all else must not.
BOOKKEEPING = frozenset({"updated_at"})


def _shared_checksum(conn: psycopg.Connection, tmap: TenantMap, table: str, tenant_id: int,
                     ignore: set[str] | frozenset[str] = BOOKKEEPING) -> tuple[int, str]:
    from tenant_migration.postgres.catalog import columns
    from tenant_migration.postgres.copy import checksum_query, unhashable_columns

    cols = [c for c, _ in columns(conn, tmap.schema, table) if c not in ignore]
    text_cols = unhashable_columns(conn, tmap.schema, table, cols)
    row = conn.execute(checksum_query(tmap, table, cols, None, text_cols), {"tenant_id": tenant_id}).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


def begin_rehearsal(ep: Endpoints, spec: RehearsalSpec, rid: str, tmap: TenantMap | None = None) -> dict[str, Any]:
    """Refuse anything but the test-pool tenant; store the shared platform's baseline (once)."""
    prof = profile.named(spec.platform)
    tmap = tmap or prof.tenant_map
    from tenant_migration.flows.common import tenant_slug

    with ep.replica.connect(autocommit=True) as rconn:
        slug = tenant_slug(rconn, tmap, spec.tenant_id, prof.doc.tenant)
    if slug != spec.tenant_slug:
        raise InvalidParams(f"tenant {spec.tenant_id} is {slug!r}, not the rehearsal tenant {spec.tenant_slug!r}")
    with ep.target.connect(autocommit=True) as tconn:
        tconn.execute(_DDL)
        row = tconn.execute("SELECT baseline FROM tm_control.rehearsals WHERE rehearsal_id = %s", (rid,)).fetchone()
        if row is not None and row[0]:
            return {"slug": slug, "baseline": "kept"}
    base = shared_fingerprint(ep, spec, tmap)
    with ep.target.connect(autocommit=True) as tconn:
        tconn.execute("INSERT INTO tm_control.rehearsals (rehearsal_id, tenant_id, reference_tenant_id, baseline) "
                      "VALUES (%s, %s, %s, %s) ON CONFLICT (rehearsal_id) DO UPDATE SET baseline = EXCLUDED.baseline",
                      (rid, spec.tenant_id, spec.reference_tenant_id, Jsonb(base)))
    return {"slug": slug, "tables": len(base["postgres"]), "cql_chunks": len(base["cassandra"])}


def _baseline(tconn: psycopg.Connection, rid: str) -> dict[str, Any]:
    row = tconn.execute("SELECT baseline FROM tm_control.rehearsals WHERE rehearsal_id = %s", (rid,)).fetchone()
    if row is None or not row[0]:
        raise RollbackRefused(f"rehearsal {rid} has no baseline (begin_rehearsal did not run)")
    return dict(row[0])


def verify_shared_unchanged(ep: Endpoints, spec: RehearsalSpec, rid: str, tmap: TenantMap | None = None) -> dict[str, Any]:
    """GX gate: the shared platform's test-pool data equals the baseline, DNS answers shared."""
    import pandas as pd

    from tenant_migration.flows.common import reports_dir, safe_name
    from tenant_migration.validation import gx_gate
    from tenant_migration.validation.counts import GateFailed

    tmap = tmap or profile.named(spec.platform).tenant_map
    started = time.monotonic()
    with ep.target.connect(autocommit=True) as tconn:
        base = _baseline(tconn, rid)
    chunks = [ledger.Chunk(**keycodec.decode(c)) for c in base["cql_chunks"]]
    now = shared_fingerprint(ep, spec, tmap, chunks)
    rows = [{"unit": f"postgres:{t}", "source_rows": v[0], "target_rows": now["postgres"].get(t, [None])[0],
             "source_checksum": str(v[1]), "target_checksum": str(now["postgres"].get(t, [None, None])[1])}
            for t, v in base["postgres"].items()]
    rows += [{"unit": c, "source_rows": v[0], "target_rows": now["cassandra"].get(c, [None])[0],
              "source_checksum": str(v[1]), "target_checksum": str(now["cassandra"].get(c, [None, None])[1])}
             for c, v in base["cassandra"].items()]
    rows += [{"unit": f"dns:{n}", "source_rows": 1, "target_rows": 1, "source_checksum": str(a),
              "target_checksum": str(now["dns"].get(n))} for n, a in base["dns"].items()]
    frame = pd.DataFrame(rows, columns=["unit", "source_rows", "target_rows", "source_checksum", "target_checksum"])
    # "source": the shared platform before the rehearsal (the baseline); "target": the same now.
    check = gx_gate.Gate("shared_unchanged", reports_dir() / safe_name(rid))
    for store, prefix in (("postgres", "postgres:"), ("cassandra", "cql:"), ("dns", "dns:")):
        part = frame[frame["unit"].str.startswith(prefix)]
        check.compare(store, part, store, "rows and checksums before and after the rehearsal" if store != "dns"
                      else "the record's answer before and after the rehearsal")
    gate = check.finish(started)
    with ep.target.connect(autocommit=True) as tconn:
        ledger.record_gate(tconn, back_run_id(rid), gate.gate, gate.passed, gate.summary(), gate.evidence(),
                           str(gate.report))
    if not gate.passed:
        raise GateFailed(f"{gate.summary()} (Data Docs: {gate.report})")
    return {"passed": True, "units": len(rows)}


def purge_target(ep: Endpoints, spec: RehearsalSpec, rid: str, tmap: TenantMap | None = None) -> dict[str, Any]:
    """Teardown: remove the test-pool's data from the target so the target stays a one-tenant
    deployment. Refuses while the target may hold the only copy of something: after a flip whose
    copy-back gate did not pass (then run ``tenant_rollback`` for the test-pool first)."""
    from tenant_migration.cassandra.copy import cql_ident, table_shape
    from tenant_migration.cassandra.plan import chunk_partitions

    tmap = tmap or profile.named(spec.platform).tenant_map
    with ep.target.connect(autocommit=True) as tconn:
        if ledger.run_row(tconn, rid) is None:
            return {"purged": False, "reason": "the migration never registered: nothing on the target"}
        flipped = ledger.flip_time(tconn, rid) is not None
        back_ok = tconn.execute("SELECT bool_or(passed) FROM tm_control.gates WHERE run_id = %s AND gate = 'copy_back'",
                                (back_run_id(rid),)).fetchone()
        if flipped and not (back_ok and back_ok[0]):
            return {"purged": False, "reason": "flipped and not copied back: run tenant_rollback first"}
        chunks = ledger.run_chunks(tconn, rid, "cassandra")
        with tconn.transaction():
            tconn.execute("SET LOCAL session_replication_role = replica")
            for t in reversed(tmap.load_order()):
                tconn.execute(sql.SQL("DELETE FROM {} AS t WHERE {}").format(tmap.qualified(t), tmap.tenant_predicate(t)),
                              {"tenant_id": spec.tenant_id})
    deleted = 0
    with ep.cassandra_target.session() as dst:
        for chunk in chunks:
            shape = table_shape(dst, tmap.keyspace, chunk.table_name)
            stmt = dst.prepare(f"DELETE FROM {shape.qualified} WHERE "
                               + " AND ".join(f"{cql_ident(c)} = ?" for c in shape.partition_key))
            for pk in chunk_partitions(chunk.bounds, shape.partition_key, tmap.cassandra_tables[chunk.table_name].day_column):
                dst.execute(stmt, pk)
                deleted += 1
    return {"purged": True, "cassandra_partitions": deleted}


# ------------------------------------------------------------------------------------ report


def _tasks(tconn: psycopg.Connection, rid: str) -> dict[str, float]:
    """Wall seconds per task (a mapped task: first start to last end of its instances, approximated
    by the longest instance, since instances run in parallel; retries summed)."""
    rows = tconn.execute("SELECT task_id, map_index, sum(seconds) FROM tm_control.rehearsal_tasks "
                         "WHERE rehearsal_id = %s GROUP BY 1, 2", (rid,)).fetchall()
    out: dict[str, float] = {}
    for task_id, _, secs in rows:
        out[task_id] = max(out.get(task_id, 0.0), float(secs))
    return out


def fit_chunk_model(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least squares ``seconds = a + b * size`` over (size, seconds), clamped to a, b >= 0. One
    point (or equal sizes): all of it is marginal cost (the conservative reading)."""
    pts = [(s, t) for s, t in points if t is not None and not math.isnan(t)]
    if not pts:
        return 0.0, 0.0
    n = len(pts)
    mx = sum(s for s, _ in pts) / n
    my = sum(t for _, t in pts) / n
    var = sum((s - mx) ** 2 for s, _ in pts)
    if var == 0:
        return 0.0, (my / mx if mx else 0.0)
    b = max(0.0, sum((s - mx) * (t - my) for s, t in pts) / var)
    a = max(0.0, my - b * mx)
    return a, b


def tenant_size(rconn: psycopg.Connection, tmap: TenantMap, tenant_id: int, days: int | None,
                ttl_by_table: dict[str, int]) -> dict[str, Any]:
    """Rows per table (replica) and Cassandra partitions (bases x day buckets) of a tenant."""
    from tenant_migration.cassandra import plan as cql_plan

    rows = {}
    for t in tmap.load_order():
        q = sql.SQL("SELECT count(*) FROM {} AS t WHERE {}").format(tmap.qualified(t), tmap.tenant_predicate(t))
        rows[t] = int(rconn.execute(q, {"tenant_id": tenant_id}).fetchone()[0])  # type: ignore[index]
    parts = {}
    for name, cspec in tmap.cassandra_tables.items():
        q = sql.SQL("SELECT count(*) FROM ({}) AS b").format(
            tmap.select_tenant_rows(cspec.partitions_from_table, list(cspec.partitions_from_columns)))
        bases = int(rconn.execute(q, {"tenant_id": tenant_id}).fetchone()[0])  # type: ignore[index]
        ndays = cql_plan.table_window(cspec, tmap, cql_plan.PlanOptions(days=days), ttl_by_table.get(name, 0))
        parts[name] = bases * (ndays if cspec.day_column else 1)
    return {"rows": rows, "partitions": parts, "total_rows": sum(rows.values()), "total_partitions": sum(parts.values())}


def predict(measured: dict[str, float], chunks: list[dict[str, Any]], ref: dict[str, Any], test: dict[str, Any],
            day: MigrationSpec, spec: RehearsalSpec, waited: dict[str, float]) -> dict[str, Any]:
    """Migration Day seconds per task for the reference tenant (see the module note)."""
    pg = [c for c in chunks if c["engine"] == "postgres" and c["status"] == "done"]
    cq = [c for c in chunks if c["engine"] == "cassandra" and c["status"] == "done"]
    a_pg, b_pg = fit_chunk_model([(float(c["rows_copied"] or 0), float(c["seconds"] or 0)) for c in pg])
    a_cq, b_cq = fit_chunk_model([(float(c["partitions"] or 0), float(c["seconds"] or 0)) for c in cq])
    ref_chunks_pg = sum(max(1, math.ceil(r / day.chunk_rows)) for r in ref["rows"].values() if r)
    ref_chunks_cq = max(1, math.ceil(len(cq) * ref["total_partitions"] / max(1, test["total_partitions"])))
    par = max(1, min(day.max_tasks, 2))  # 2: the copy pools' default slots (tm_postgres / tm_cassandra)
    extra_rows = max(0, ref["total_rows"] - test["total_rows"])
    extra_parts = max(0, ref["total_partitions"] - test["total_partitions"])
    out: dict[str, float] = {}
    for task, secs in measured.items():
        if task == "ready.copy_postgres_batch":
            out[task] = (ref_chunks_pg * a_pg + b_pg * ref["total_rows"]) / par
        elif task == "ready.copy_cassandra_batch":
            out[task] = (ref_chunks_cq * a_cq + b_cq * ref["total_partitions"]) / par
        elif task in WAIT_STEPS:
            out[task] = max(0.0, secs - waited.get(task, 0.0)) + getattr(day, WAIT_STEPS[task])
        else:
            out[task] = secs + (b_pg * extra_rows if task in PG_SIZED else 0.0) + (
                b_cq * extra_parts if task in CQL_SIZED else 0.0)
    return {"tasks": out, "model": {"pg_overhead_s_per_chunk": a_pg, "pg_s_per_row": b_pg, "cql_overhead_s_per_chunk": a_cq,
                                    "cql_s_per_partition": b_cq, "copy_parallelism": par,
                                    "ref_pg_chunks": ref_chunks_pg, "ref_cql_chunks": ref_chunks_cq}}


def write_report(ep: Endpoints, spec: RehearsalSpec, rid: str, tmap: TenantMap | None = None) -> dict[str, Any]:
    """Go/no-go report: step durations, long poles, gates, prediction, history (JSON, text, PNG)."""
    from tenant_migration.cassandra.plan import default_ttl
    from tenant_migration.flows.common import reports_dir, safe_name

    tmap = tmap or profile.named(spec.platform).tenant_map
    back = back_run_id(rid)
    with ep.target.connect(autocommit=True) as tconn:
        measured = _tasks(tconn, rid)
        chunks = ledger.chunk_rows(tconn, rid)
        # The longest wait any try recorded: a deferred wait's resumed try finds nothing left to wait.
        row = tconn.execute(
            "SELECT COALESCE(max((detail->>'waited_s')::float8), 0) FROM tm_control.events WHERE run_id = %s "
            "AND step = 'lower_dns_ttl'", (rid,)).fetchone()
        ttl_waited = row[0] if row else 0.0
        gate_rows = tconn.execute(
            "SELECT run_id, gate, attempt, passed, summary FROM tm_control.gates WHERE run_id IN (%s, %s) "
            "ORDER BY evaluated_at", (rid, back)).fetchall()
        steps_mig = ledger.step_durations(tconn, rid)
        steps_back = tconn.execute("SELECT step, detail FROM tm_control.events WHERE run_id = %s AND kind = 'info'",
                                   (back,)).fetchall()
    drained = measured.get("go.drain_stragglers", 0.0) and float(spec.drain_seconds)
    waited = {"go.lower_dns_ttl": float(ttl_waited),
              "go.drain_stragglers": float(drained)}
    with ep.replica.connect(autocommit=True) as rconn, ep.cassandra_source.session() as src:
        ttls = {n: default_ttl(src, tmap.keyspace, n) for n in tmap.cassandra_tables}
        ref = tenant_size(rconn, tmap, spec.reference_tenant_id, MigrationSpec.cassandra_days or None, ttls)
        test = tenant_size(rconn, tmap, spec.tenant_id, spec.cassandra_days or None, ttls)
    day = MigrationSpec(tenant_id=spec.reference_tenant_id)
    pred = predict(measured, chunks, ref, test, day, spec, waited)
    latest = {g[1]: g[3] for g in gate_rows}  # last attempt of each gate wins
    gates_passed = sum(1 for v in latest.values() if v)
    gates_failed = len(latest) - gates_passed
    total = sum(measured.values())
    predicted_total = sum(pred["tasks"].values())
    pg_secs = sum(float(c["seconds"] or 0) for c in chunks if c["engine"] == "postgres")
    cq_secs = sum(float(c["seconds"] or 0) for c in chunks if c["engine"] == "cassandra")
    pg_rate = sum(int(c["rows_copied"] or 0) for c in chunks if c["engine"] == "postgres") / pg_secs if pg_secs else None
    cq_rate = sum(int(c["partitions"] or 0) for c in chunks if c["engine"] == "cassandra") / cq_secs if cq_secs else None
    required = {"post_copy", "catch_up", "pre_flip", "post_flip", "final", "copy_back", "shared_unchanged"}
    verdict = "GO" if gates_failed == 0 and required <= set(latest) else "NO-GO"
    poles = sorted(measured.items(), key=lambda kv: -kv[1])[:5]
    folder = reports_dir() / safe_name(rid)
    folder.mkdir(parents=True, exist_ok=True)
    with ep.target.connect(autocommit=True) as tconn:
        history = [dict(zip(("rehearsal_id", "started_at", "verdict", "total_seconds", "pg_rows_per_s",
                             "cql_partitions_per_s", "predicted_seconds"), r, strict=True)) for r in tconn.execute(
            "SELECT rehearsal_id, started_at, verdict, total_seconds, pg_rows_per_s, cql_partitions_per_s, "
            "predicted_seconds FROM tm_control.rehearsals WHERE rehearsal_id <> %s AND verdict IS NOT NULL "
            "ORDER BY started_at DESC LIMIT %s", (rid, spec.history)).fetchall()]
    report = {"rehearsal_id": rid, "verdict": verdict, "tenant_id": spec.tenant_id,
              "reference_tenant_id": spec.reference_tenant_id, "task_seconds": measured, "total_seconds": total,
              "long_poles": poles, "ledger_steps": steps_mig, "way_back": [{"step": s, "detail": d} for s, d in steps_back],
              "gates": [{"run_id": g[0], "gate": g[1], "attempt": g[2], "passed": g[3], "summary": g[4]} for g in gate_rows],
              "rates": {"pg_rows_per_chunk_second": pg_rate, "cql_partitions_per_chunk_second": cq_rate},
              "sizes": {"rehearsal": test, "reference": ref}, "prediction": pred,
              "predicted_total_seconds": predicted_total, "history": history}
    json_path = folder / "rehearsal_report.json"
    json_path.write_text(json.dumps(json_safe(report), indent=2, default=str))
    (folder / "rehearsal_report.txt").write_text(render_text(report))
    png = plot_durations(measured, pred["tasks"], folder / "rehearsal_durations.png")
    with ep.target.connect(autocommit=True) as tconn:
        tconn.execute(
            "UPDATE tm_control.rehearsals SET status = 'finished', verdict = %s, finished_at = clock_timestamp(), "
            "total_seconds = %s, pg_rows_per_s = %s, cql_partitions_per_s = %s, predicted_seconds = %s, "
            "gates_passed = %s, gates_failed = %s, report_path = %s, report = %s WHERE rehearsal_id = %s",
            (verdict, total, pg_rate, cq_rate, predicted_total, gates_passed, gates_failed, str(json_path),
             Jsonb(json_safe(json.loads(json.dumps(report, default=str)))), rid))
    return {"verdict": verdict, "report": str(json_path), "plot": str(png) if png else None,
            "total_seconds": round(total, 1), "predicted_seconds": round(predicted_total, 1)}


def render_text(r: dict[str, Any]) -> str:
    lines = [f"Rehearsal {r['rehearsal_id']}: {r['verdict']}", "",
             f"Task durations (rehearsal tenant {r['tenant_id']}) and Migration Day prediction "
             f"(reference tenant {r['reference_tenant_id']}):"]
    pred = r["prediction"]["tasks"]
    for task, secs in sorted(r["task_seconds"].items(), key=lambda kv: -kv[1]):
        lines.append(f"  {task:<32} {secs:9.2f} s   predicted {pred.get(task, 0):11.1f} s")
    lines += [f"  {'total (sum of tasks)':<32} {r['total_seconds']:9.2f} s   predicted {r['predicted_total_seconds']:11.1f} s",
              "", "Long poles: " + ", ".join(f"{t} ({s:.1f} s)" for t, s in r["long_poles"]), "", "Gates:"]
    lines += [f"  {g['gate']:<18} attempt {g['attempt']}  {'PASS' if g['passed'] else 'FAIL'}  {g['summary'][:120]}"
              for g in r["gates"]]
    ref = r["sizes"]["reference"]
    lines += ["", f"Reference tenant: {ref['total_rows']} rows, {ref['total_partitions']} Cassandra partitions",
              f"Model: {json.dumps(r['prediction']['model'], default=str)}", "", "History (latest first):"]
    lines += [f"  {h['started_at']}  {h['verdict']:<6} total {h['total_seconds'] or 0:8.1f} s  predicted "
              f"{h['predicted_seconds'] or 0:10.1f} s  pg {h['pg_rows_per_s'] or 0:10.0f} rows/s" for h in r["history"]]
    return "\n".join(lines) + "\n"


def plot_durations(measured: dict[str, float], predicted: dict[str, float], path: Path) -> Path | None:
    """Horizontal bars (log scale) of measured and predicted seconds per task."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    tasks = sorted(measured, key=lambda t: measured[t])
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(tasks) + 1.5))
    ys = range(len(tasks))
    ax.barh([y + 0.2 for y in ys], [max(measured[t], 1e-3) for t in tasks], height=0.4, label="rehearsal")
    ax.barh([y - 0.2 for y in ys], [max(predicted.get(t, 0.0), 1e-3) for t in tasks], height=0.4,
            label="Migration Day (predicted)")
    ax.set_yticks(list(ys), tasks, fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("seconds (log)")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
