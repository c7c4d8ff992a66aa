"""SET: the change stream and the recent Cassandra buckets caught up, the rows born after the
detach planned, the target warmed and load-checked, the catch-up gate."""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack, suppress
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from tenant_migration import ledger, progress
from tenant_migration.cassandra import copy as cql_copy
from tenant_migration.cassandra import plan as cql_plan
from tenant_migration.cassandra.fingerprint import fingerprint_chunks
from tenant_migration.cassandra.ratelimit import TokenBucket
from tenant_migration.endpoints import Endpoints
from tenant_migration.flows.common import (
    detach_lsn,
    migrated_tables,
    profile_of,
    record_gate_result,
    reports_dir,
    safe_name,
    step,
)
from tenant_migration.postgres import cdc, sequences
from tenant_migration.spec import MigrationSpec
from tenant_migration.tenant_map import TenantMap
from tenant_migration.validation import gates, gx_gate
from tenant_migration.validation.counts import GateFailed
from tenant_migration.validation.differences import fingerprint_frame

log = logging.getLogger(__name__)




def late_frame(ep: Endpoints, tconn: psycopg.Connection, tmap: TenantMap, run_id: str) -> Any:
    """Fingerprints of the chunks planned after the detach (rows the change stream brought), over
    all their days, on both sides: cells written before the DNS flip began (after it, the target
    takes the tenant's own writes). Empty when the run planned none."""
    import pandas as pd

    late = [c for c in ledger.run_chunks(tconn, run_id, "cassandra") if c.bounds.get("late")]
    columns = ["unit", "source_rows", "target_rows", "source_checksum", "target_checksum"]
    if not late:
        return pd.DataFrame([], columns=columns)
    flipped = ledger.flip_time(tconn, run_id)
    upto = int(flipped.timestamp() * 1_000_000) if flipped else None
    with ep.cassandra_sessions() as (src, dst):
        report = fingerprint_chunks(src, dst, tmap, late, max_writetime=upto)
        return fingerprint_frame(report, src, dst, tmap, upto)


def plan_late_partitions(ep: Endpoints, spec: MigrationSpec, run_id: str, tmap: TenantMap,
                         step_name: str, source: Any = None) -> dict[str, Any]:
    """Plan Cassandra chunks for the tenant's rows the change stream brought to the target after the
    detach (new devices, properties...: ``plan.plan_late``) and copy every late chunk not done yet,
    over the plan's days and the days since the detach. Safe to repeat: a base is planned once
    (under the run's row lock, so two callers never number chunks alike), done chunks are skipped."""
    from tenant_migration.cassandra.catchup import recent_days

    with ep.target.connect() as tconn, ExitStack() as stack:
        src = source if source is not None else stack.enter_context(ep.cassandra_source.session())
        _, commit_time = detach_lsn(tconn, run_id)
        tconn.execute("SELECT 1 FROM tm_control.runs WHERE run_id = %s FOR UPDATE", (run_id,))
        planned = ledger.run_chunks(tconn, run_id, "cassandra")
        recent = recent_days((commit_time or datetime.now(UTC)) - timedelta(minutes=15), datetime.now(UTC))
        new = cql_plan.plan_late(tconn, tmap, spec.tenant_id, planned, recent, session=src)
        if new:
            ledger.plan_chunks(tconn, run_id, new)
        tconn.commit()
        pending = [c for c in ledger.pending_chunks(tconn, run_id, "cassandra") if c.bounds.get("late")]
        tconn.commit()
    out: dict[str, Any] = {"planned": len(new), "bases": sum(len(c.bounds["bases"]) for c in new
                                                           if c.bounds.get("window", 0) == 0),
                           "copied_chunks": 0, "rows": 0}
    if pending:
        report = cql_copy.copy_chunks(ep, run_id, tmap, cql_plan.copy_order(pending),
                                      cql_copy.CopyOptions(concurrency=spec.cassandra_concurrency))
        out.update({"copied_chunks": len(report.chunks_done), "rows": report.rows})
    if new or pending:
        with ep.target.connect(autocommit=True) as tconn:
            ledger.record_event(tconn, run_id, step_name, "info", {"late_partitions": out})
    return out


def coverage_frame(tconn: psycopg.Connection, session: Any, tmap: TenantMap, tenant_id: int, run_id: str) -> Any:
    """Per Cassandra table: the tenant's bases in the target's rows (the replica's plus what the
    change stream brought) and how many of them no chunk of the run plans."""
    import pandas as pd

    missing = cql_plan.unplanned_bases(tconn, tmap, tenant_id, ledger.run_chunks(tconn, run_id, "cassandra"),
                                       session=session)
    return pd.DataFrame([{"unit": f"cassandra:{name}", "unplanned": len(bases),
                          "offending": "; ".join(map(str, bases[:10]))} for name, bases in missing.items()],
                        columns=["unit", "unplanned", "offending"])


def catch_up_postgres(ep: Endpoints, spec: MigrationSpec, run_id: str, until_now: bool = False,
                      tmap: TenantMap | None = None, step_name: str | None = None) -> dict[str, Any]:
    """Stream the tenant's changes committed on the primary after the detach point until the lag is
    under the threshold (``until_now``: until everything committed before this call is applied)."""
    if spec.dry_run:
        return {"skipped": "dry run"}
    tmap = tmap or profile_of(spec).tenant_map
    name = cdc.slot_name_for(run_id)
    with ep.source_cdc.connect(autocommit=True) as src, ep.target.connect(autocommit=True) as tconn:
        start_lsn, _ = detach_lsn(tconn, run_id)
        until = None
        if until_now:
            row = src.execute("SELECT pg_current_wal_lsn()::text").fetchone()
            until = row[0] if row else None
        name_ = step_name or ("final_catch_up" if until_now else "catch_up_postgres")
        stream = StreamProgress(ep, run_id, until)
        with step(tconn, run_id, name_) as detail, progress.Ticker(name_, stream.read, close=stream.close):
            report = cdc.catch_up(src, tconn, tmap, spec.tenant_id, run_id, name, start_lsn,
                                  max_lag_bytes=spec.max_lag_bytes, timeout=spec.catch_up_timeout_s, until_lsn=until)
            detail.update(report.to_dict())
            stream.read()  # the lag as the catch-up leaves it: one more point of the page's lag plot
    return report.to_dict()


class StreamProgress:
    """The change stream's progress for a ``progress.Ticker``: WAL applied (the ledger's
    ``cdc_progress``) of the WAL to apply (to ``until`` or the primary's current position), the
    tenant's changes applied, and how far behind the newest applied commit is. Own connections,
    opened in the ticker's thread."""

    def __init__(self, ep: Endpoints, run_id: str, until: str | None) -> None:
        self.ep, self.run_id, self.until = ep, run_id, until
        self.conns: dict[str, psycopg.Connection] = {}

    def _conn(self, which: str) -> psycopg.Connection:
        c = self.conns.get(which)
        if c is None or c.closed:
            dsn = self.ep.target if which == "target" else self.ep.source_cdc
            c = self.conns[which] = dsn.connect(autocommit=True, application_name="tenant_migration progress")
        return c

    def read(self) -> progress.Reading:
        prog = cdc.read_progress(self._conn("target"), self.run_id)
        if prog is None:
            return progress.Reading(0, None, "WAL bytes", note="the change stream has not started")
        row = self._conn("source").execute("SELECT pg_current_wal_lsn()::text").fetchone()
        current = cdc.lsn_to_int(row[0]) if row else cdc.lsn_to_int(prog.applied_lsn)
        head = cdc.lsn_to_int(self.until) if self.until else current
        start, applied = cdc.lsn_to_int(prog.start_lsn), cdc.lsn_to_int(prog.applied_lsn)
        note = f"lag {max(0, head - applied):,} bytes"
        behind = None
        if prog.applied_commit_time is not None:
            behind = (datetime.now(UTC) - prog.applied_commit_time).total_seconds()
            note += f", newest applied commit {progress.duration(behind)} old"
        # A sample of the lag behind the primary for the page's plot (``live.lag_series``).
        ledger.record_event(self._conn("target"), self.run_id, "cdc_lag", "info",
                            {"lag_bytes": max(0, current - applied), "behind_s": behind})
        return progress.Reading(applied - start, max(head, applied) - start, "WAL bytes", prog.changes_applied,
                                note + f" ({prog.txns_applied:,} transactions applied)", rows_unit="changes")

    def close(self) -> None:
        for c in self.conns.values():
            c.close()


def sequence_frame(src: psycopg.Connection, tconn: psycopg.Connection, tmap: TenantMap) -> Any:
    """Per sequence of the migrated tables: both sides' next values, the target column's maximum,
    and how far the target is short of both (0 when it is past them)."""
    import pandas as pd

    rows = [{"unit": f"sequence:{st.use.label}", "source_next": st.source_next, "target_next": st.target_next,
             "target_max": st.target_max, "short_by": max(0, st.needed(0) - st.target_next)}
            for st in sequences.states(src, tconn, tmap.schema, migrated_tables(tmap))]
    return pd.DataFrame(rows, columns=["unit", "source_next", "target_next", "target_max", "short_by"])


def catch_up_cassandra(ep: Endpoints, spec: MigrationSpec, run_id: str, tmap: TenantMap | None = None) -> dict[str, Any]:
    """Re-copy the buckets at or after the detach watermark until the recent partitions match."""
    if spec.dry_run:
        return {"skipped": "dry run"}
    from tenant_migration.cassandra import catchup as cql_catchup

    tmap = tmap or profile_of(spec).tenant_map
    with ep.target.connect(autocommit=True) as tconn:
        _, commit_time = detach_lsn(tconn, run_id)
        watermark = commit_time or datetime.now(UTC)
        with step(tconn, run_id, "catch_up_cassandra") as detail:
            # Rows the change stream brought so far (it runs beside this task): their partitions
            # are planned and copied first; later ones are the gate's and the final catch-up's.
            detail["late_partitions"] = plan_late_partitions(ep, spec, run_id, tmap, "catch_up_cassandra")
            chunks = ledger.run_chunks(tconn, run_id, "cassandra")
            opts = cql_copy.CopyOptions(concurrency=spec.cassandra_concurrency)
            watch = RecopyProgress(TokenBucket(opts.rows_per_second), rows_by_day(tconn, run_id, chunks),
                                   CATCH_UP_PASSES)
            with ep.cassandra_sessions() as (src, dst), progress.Ticker("catch_up_cassandra", watch.read):
                passes = cql_catchup.catch_up(src, dst, tmap, chunks, watermark, opts=opts, max_passes=CATCH_UP_PASSES,
                                              limiter=watch.limiter, on_pass=watch.pass_started)
            out = {"passes": [p.to_dict() for p in passes], "converged": bool(passes and passes[-1].converged),
                   "late_partitions": detail["late_partitions"]}
            detail.update(out)
    if not out["converged"]:
        raise GateFailed(f"cassandra catch-up did not converge in {len(passes)} passes: {passes[-1].to_dict()}")
    return out


CATCH_UP_PASSES = 5  # the Cassandra catch-up's passes before it gives up (the gate then fails)


def rows_by_day(tconn: psycopg.Connection, run_id: str, chunks: list[ledger.Chunk]) -> dict[str, float]:
    """The rows the copy moved per day bucket (ISO date; ``""`` for tables without one), spread
    evenly over each chunk's days: the ledger's estimate of what a re-copy of some buckets reads."""
    copied = {r["chunk_id"]: float(r["rows_copied"] or 0) for r in ledger.chunk_rows(tconn, run_id)
              if r["engine"] == "cassandra"}
    out: dict[str, float] = {}
    for c in chunks:
        days = list((c.bounds or {}).get("days") or [""])
        for d in days:
            out[str(d)] = out.get(str(d), 0.0) + copied.get(c.chunk_id, 0.0) / len(days)
    return out


class RecopyProgress:
    """A re-copy of the recent buckets in passes (the Cassandra catch-up), for a
    ``progress.Ticker``: rows read (the pass's rate limiter counts them) of the rows the ledger says
    those buckets held when copied."""

    def __init__(self, limiter: Any, by_day: dict[str, float], max_passes: int) -> None:
        self.limiter, self.by_day, self.max_passes = limiter, by_day, max_passes
        self.n, self.base, self.estimate, self.days = 0, 0.0, 0.0, ""

    def pass_started(self, n: int, days: list[Any]) -> None:
        self.n, self.base = n, float(self.limiter.taken)
        self.estimate = sum(self.by_day.get(d.isoformat(), 0.0) for d in days) + self.by_day.get("", 0.0)
        self.days = f"{min(days)} .. {max(days)}" if days else "no day bucket"

    def read(self) -> progress.Reading:
        if not self.n:
            return progress.Reading(0, None, "rows read", note="planning the recent buckets")
        return progress.Reading(float(self.limiter.taken), self.base + self.estimate, "rows read",
                                note=f"pass {self.n} of at most {self.max_passes} over buckets {self.days} "
                                     "(planned: the rows the copy found there)")


def warm_up(ep: Endpoints, spec: MigrationSpec, run_id: str, tmap: TenantMap | None = None) -> dict[str, Any]:
    """Warm the target's caches before traffic arrives: PostgreSQL buffers and Cassandra partitions."""
    if spec.dry_run:
        return {"skipped": "dry run"}
    from tenant_migration.cassandra import warmup as cql_warmup
    from tenant_migration.postgres import warmup as pg_warmup

    prof = profile_of(spec)
    tmap = tmap or prof.tenant_map
    # One query per table of the map, then the profile's own (the app's hottest lookups).
    queries = pg_warmup.sample_queries(tmap) + [sql.Composed([sql.SQL(q)]) for q in prof.doc.warmup.postgres]  # type: ignore[arg-type]
    tally = progress.Tally(unit="relations prewarmed")
    with ep.target.connect(autocommit=True) as tconn:
        with step(tconn, run_id, "warm_up") as detail, progress.Ticker("warm_up", tally.reading):
            pg_report = pg_warmup.warm_up(tconn, tmap, spec.tenant_id, queries=queries, tally=tally).to_dict()
            with ep.cassandra_target.session() as dst:
                cql_report = cql_warmup.warm_up(dst, tmap, ledger.run_chunks(tconn, run_id, "cassandra"),
                                                tally=tally).to_dict()
            detail.update({"postgres": pg_report, "cassandra": cql_report})
    return {"postgres": pg_report, "cassandra": cql_report}


def load_check(ep: Endpoints, spec: MigrationSpec, run_id: str) -> dict[str, Any]:
    """SET phase: drive the target at the tenant's write shape and rate; p99 and errors gate it."""
    if spec.dry_run or spec.load_rate == 0:
        return {"skipped": "dry run" if spec.dry_run else "load_rate is 0"}
    from tenant_migration import workload

    ref = profile_of(spec).workload
    if ref is None:
        log.warning("platform %r has no load check workload (load_check: none): the target is not load-tested",
                    spec.platform)
        return {"skipped": "the platform profile has no load check (load_check.workload: none)"}
    # The platform's workload (``workload.LoadWorkload``) raises GateFailed when the target misses.
    return workload.resolve(ref)(ep, spec, run_id, rate=spec.load_rate, seconds=spec.load_seconds,
                                                max_p99_ms=spec.load_max_p99_ms, max_errors=0,
                                                min_rate_fraction=spec.load_min_rate_pct / 100)


def gate_catch_up(ep: Endpoints, spec: MigrationSpec, run_id: str, gate_name: str = "catch_up",
                  tmap: TenantMap | None = None) -> dict[str, Any]:
    """Lag under the threshold and the latest changes present on the target (both stores)."""
    if spec.dry_run:
        return {"skipped": "dry run"}
    import pandas as pd

    from tenant_migration.cassandra.catchup import recent_days

    tmap = tmap or profile_of(spec).tenant_map
    started = time.monotonic()
    gx_gate.warm_up_gx(reports_dir() / safe_name(run_id))
    # The primary kept taking writes while the tasks between the catch-up and this gate ran
    # (warm-up, load check, scheduling): the target is that far behind. Bring it up to this moment
    # first, then measure. A stream that cannot get there within catch_up_timeout_s is not raised
    # here: it shows in the lag below, and the check fails with the numbers. Both Cassandra
    # clusters connect meanwhile.
    with ExitStack() as cassandra:
        sessions = cassandra.enter_context(ep.cassandra_sessions_soon())
        with suppress(cdc.CatchUpTimeout):
            catch_up_postgres(ep, spec, run_id, until_now=True, tmap=tmap, step_name=f"gate_{gate_name}_catch_up")
        with ep.source_cdc.connect(autocommit=True) as src, ep.target.connect(autocommit=True) as tconn:
            # PostgreSQL first, while the clusters are still connecting.
            lag = measure_cdc_lag(src, tconn, run_id)
            seqs = sequence_frame(src, tconn, tmap) if gate_name == "pre_flip" else None
            _, commit_time = detach_lsn(tconn, run_id)
            days = recent_days((commit_time or datetime.now(UTC)) - timedelta(minutes=15), datetime.now(UTC))
            # Devices keep writing: compare the cells written before the last Cassandra catch-up
            # began (its converged pass began later, so every one of them must be on the target).
            row = tconn.execute("SELECT max(at) FROM tm_control.events WHERE run_id = %s "
                                "AND step = 'catch_up_cassandra' AND kind = 'started'", (run_id,)).fetchone()
            upto = int(row[0].timestamp() * 1_000_000) if row and row[0] else None
            # The partitions of the rows that catch-up brought (devices created since): planned and
            # copied before they are measured, so the coverage check below sees the target as it is.
            s_src, s_dst = sessions.result()
            plan_late_partitions(ep, spec, run_id, tmap, f"gate_{gate_name}_catch_up", source=s_src)
            chunks = ledger.run_chunks(tconn, run_id, "cassandra")
            coverage = coverage_frame(tconn, s_src, tmap, spec.tenant_id, run_id)
            report = fingerprint_chunks(s_src, s_dst, tmap, chunks, days=days, max_writetime=upto,
                                        scan_target=True, held=ledger.partitions_by_table(tconn, run_id))
            recent = fingerprint_frame(report, s_src, s_dst, tmap, upto)
            cassandra.close()  # both clusters shut down before the verdict, as the other gates do
            lag_frame = pd.DataFrame([{"unit": "postgres:cdc", "lag_bytes": lag["lag_bytes"],
                                       "lag_seconds": lag["lag_seconds"]}])
            gate = gx_gate.Gate(gate_name, reports_dir() / safe_name(run_id))
            gate.expect("change_stream", lag_frame, [
                gx_gate.FrameCheck("lag_bytes_under_threshold", "ExpectColumnValuesToBeBetween",
                                   {"column": "lag_bytes", "min_value": 0, "max_value": spec.max_lag_bytes},
                                   f"change capture lag at most {spec.max_lag_bytes} bytes"),
                gx_gate.FrameCheck("lag_seconds_under_threshold", "ExpectColumnValuesToBeBetween",
                                   {"column": "lag_seconds", "min_value": 0, "max_value": spec.max_lag_seconds},
                                   f"change capture lag at most {spec.max_lag_seconds} s"),
            ])
            gate.compare("recent_buckets", recent, "cassandra",
                         "rows, partitions and fingerprints of (key, value, write time) of the recent day buckets")
            gates.coverage_checks(gate, coverage)
            if seqs is not None:
                gates.sequence_checks(gate, seqs)
            result = gate.finish(started)
            record_gate_result(tconn, run_id, result)
    if not result.passed:
        raise GateFailed(f"{result.summary()} (Data Docs: {result.report})")
    return {"passed": True, "lag": lag, "report": str(result.report)}


def measure_cdc_lag(src: psycopg.Connection, tconn: psycopg.Connection, run_id: str) -> dict[str, Any]:
    """Lag of the run's change stream as it is now, without consuming it: WAL bytes between the
    slot's confirmed position and the head when a decodable change is pending (else 0), and the
    age of the oldest pending change (else 0)."""
    slot = cdc.slot_name_for(run_id)
    row = src.execute(
        "SELECT pg_current_wal_lsn() - confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = %s",
        (slot,)).fetchone()
    if row is None:
        raise GateFailed(f"the run's change-capture slot {slot} does not exist")
    first_xid = cdc.first_pending_xid(src, slot)
    pending = first_xid is not None
    prog = cdc.read_progress(tconn, run_id)
    age = None
    if first_xid is not None:
        # How old the oldest change not yet applied is (commit timestamps are on: the stack sets
        # track_commit_timestamp); else, on a primary without them, seconds since the stream was
        # last processed (an upper bound).
        try:
            got = src.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp() - pg_xact_commit_timestamp(%s::xid))::float8",
                              (first_xid,)).fetchone()
            age = got[0] if got else None
        except psycopg.Error:
            age = None
        if age is None and prog:
            got = tconn.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp() - updated_at)::float8 "
                                "FROM tm_control.cdc_progress WHERE run_id = %s", (run_id,)).fetchone()
            age = got[0] if got else None
    return {"lag_bytes": int(row[0] or 0) if pending else 0, "lag_seconds": max(0.0, float(age or 0.0)),
            "pending": pending, "applied_lsn": prog.applied_lsn if prog else None}
