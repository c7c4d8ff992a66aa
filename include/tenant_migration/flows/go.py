"""GO: registrations suspended, the final catch-up (and the sequences), the pre-flip gate, the DNS
TTL lowered and the flip (direct or weighted), the drain of stragglers, the post-flip gate,
registrations resumed."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from tenant_migration import ledger, progress
from tenant_migration.cassandra import copy as cql_copy
from tenant_migration.cutover import dns, registrations
from tenant_migration.endpoints import Endpoints
from tenant_migration.flows.common import (
    KeptForResume,
    PreflightError,
    dns_plans,
    hold_for_resume,
    migrated_tables,
    profile_of,
    record_gate_result,
    reports_dir,
    safe_name,
    step,
    tenant_slug,
)
from tenant_migration.flows.set import catch_up_postgres, gate_catch_up, late_frame, plan_late_partitions
from tenant_migration.postgres import cdc, sequences
from tenant_migration.spec import MigrationSpec
from tenant_migration.tenant_map import TenantMap
from tenant_migration.validation import gates, gx_gate
from tenant_migration.validation.counts import GateFailed

log = logging.getLogger(__name__)


def flip_dns(ep: Endpoints, spec: MigrationSpec, run_id: str, slug: str) -> dict[str, Any]:
    """Point the tenant's records at its dedicated endpoints: at once, or in the weighted steps of
    ``dns_shift_percent_steps``. Converges when run again (not retried blindly: a cutover task).

    Every try, and every step of a shift, first checks its preconditions as they are at that
    moment (``ensure_registrations_suspended``, ``ensure_dns_ready``): a try after a control-plane
    outage never flips on a TTL lowered, or registrations suspended, only in an earlier try."""
    r53 = ep.aws.client("route53")
    zid = dns.zone_id(r53, spec.dns_zone)
    plans = dns_plans(spec, slug)
    before = {p.name: _answer(r53, zid, p.name) for p in plans}
    if spec.dry_run:
        return {"skipped": "dry run", "before": before}
    with ep.target.connect(autocommit=True) as tconn, step(tconn, run_id, "flip_dns") as detail:
        started = time.monotonic()
        if spec.dns_shift_percent_steps:
            detail["shift"] = shift_dns(ep, spec, run_id, slug, tconn)
        else:
            detail["preconditions"] = flip_preconditions(ep, spec, run_id, slug, tconn, r53, zid, plans)
            _flip_begins(tconn, run_id, 100)
            dns.point_records(r53, zid, plans, to_tenant=True, ttl=spec.lowered_ttl)
        after = {p.name: dns.resolve(r53, zid, p.name) for p in plans}
        detail.update({"before": before, "after": after, "seconds": round(time.monotonic() - started, 3)})
    return {"before": before, "after": after}


def _answer(r53: Any, zid: str, name: str) -> list[str]:
    """What a client resolves for ``name`` now; ``[name, "(no record)"]`` when the zone lost it."""
    try:
        return dns.resolve(r53, zid, name)
    except dns.DnsError:
        return [name, "(no record)"]


def flip_preconditions(ep: Endpoints, spec: MigrationSpec, run_id: str, slug: str, tconn: psycopg.Connection,
                       r53: Any, zid: str, plans: list[dns.RecordPlan]) -> dict[str, Any]:
    """Registrations suspended and the records' TTL lowered and waited out, both checked now."""
    regs = ensure_registrations_suspended(ep, spec, run_id, tconn, "flip_dns")
    ttl = ensure_dns_ready(spec, run_id, tconn, r53, zid, plans, "flip_dns")
    return {"registrations": regs, "dns": ttl}


def _flip_begins(tconn: psycopg.Connection, run_id: str, percent: int) -> None:
    """Mark, before the first change batch that moves records towards the target, when the target
    may begin to take the tenant's writes (``ledger.flip_time``)."""
    if ledger.last_event(tconn, run_id, "dns_flip_begins") is None:
        ledger.record_event(tconn, run_id, "dns_flip_begins", "info", {"percent": percent})


def shift_dns(ep: Endpoints, spec: MigrationSpec, run_id: str, slug: str, tconn: psycopg.Connection,
              tmap: TenantMap | None = None) -> list[dict[str, Any]]:
    """The weighted shift: each step ONE change batch (wait INSYNC, read back), then the dwell,
    then the ``dns_shift_<p>`` gate, then the next step; the 100 % step leaves the simple record
    the direct flip leaves. Run again after a failure, it resumes at the first step at or above
    the weight the records have now: traffic never moves back to the source. Each step checks
    the flip's preconditions first (``flip_preconditions``)."""
    r53 = ep.aws.client("route53")
    zid = dns.zone_id(r53, spec.dns_zone)
    plans = dns_plans(spec, slug)
    now = dns.record_sets(r53, zid)
    at = min((dns.target_weight(now.get(p.name, []), p) or 0) for p in plans)
    done: list[dict[str, Any]] = []
    for percent in [p for p in spec.dns_shift_percent_steps if p >= at]:
        checked = flip_preconditions(ep, spec, run_id, slug, tconn, r53, zid, plans)
        _flip_begins(tconn, run_id, percent)
        weights = dns.shift_records(r53, zid, plans, percent, ttl=spec.lowered_ttl,
                                    comment=f"tenant migration shift {percent} %")
        ledger.record_event(tconn, run_id, "dns_shift", "info", {"percent": percent, "weights": weights})
        done.append({"percent": percent, "weights": weights, "preconditions": checked})
        if percent == 100:
            break
        time.sleep(spec.dns_shift_dwell_s)
        done[-1]["gate"] = gate_dns_shift(ep, spec, run_id, slug, percent, tconn, tmap)
    return done


def gate_dns_shift(ep: Endpoints, spec: MigrationSpec, run_id: str, slug: str, percent: int,
                   tconn: psycopg.Connection, tmap: TenantMap | None = None) -> dict[str, Any]:
    """Between two shift steps: the records still carry the step's weights and the target answers
    (the tenant's root row on its PostgreSQL, its Cassandra node, its endpoint records)."""
    import pandas as pd

    tmap = tmap or profile_of(spec).tenant_map
    started = time.monotonic()
    gx_gate.warm_up_gx(reports_dir() / safe_name(run_id))
    r53 = ep.aws.client("route53")
    zid = dns.zone_id(r53, spec.dns_zone)
    plans = dns_plans(spec, slug)
    sets = dns.record_sets(r53, zid)
    weights = pd.DataFrame([{"unit": p.name, "target_weight": dns.target_weight(sets.get(p.name, []), p),
                             "expected": percent, "records": dns.describe_sets(sets.get(p.name, []))} for p in plans])
    weights["target_weight"] = weights["target_weight"].fillna(-1).astype(int)

    def probe(name: str, check: Any) -> dict[str, Any]:
        try:
            ok, detail = check()
        except Exception as exc:  # a probe that cannot answer is a failed probe, named with its error
            ok, detail = False, f"{type(exc).__name__}: {exc}"[:300]
        return {"unit": name, "ok": int(bool(ok)), "detail": str(detail)}

    def pg() -> tuple[bool, str]:
        with ep.target.connect(autocommit=True) as conn:
            found = tenant_slug(conn, tmap, spec.tenant_id, profile_of(spec).doc.tenant)
        return found == slug, f"tenant row: {found!r}"

    def cql() -> tuple[bool, str]:
        with ep.cassandra_target.session() as s:
            row = s.execute("SELECT release_version FROM system.local").one()
        return row is not None, f"release {row[0] if row else None}"

    probes = pd.DataFrame([probe("postgres target", pg), probe("cassandra target", cql)]
                          + [probe(f"dns {p.tenant_target}",
                                   lambda p=p: (True, " -> ".join(dns.resolve(r53, zid, p.tenant_target))))
                             for p in plans])
    gate = gates.dns_shift_gate(percent, weights, probes, reports_dir() / safe_name(run_id), started)
    record_gate_result(tconn, run_id, gate)
    if not gate.passed:
        raise GateFailed(f"{gate.summary()} (Data Docs: {gate.report}); the records stay at {percent} %: "
                         f"clear flip_dns to resume the shift, or run tenant_rollback to go back")
    return {"passed": True, "report": str(gate.report)}


def final_catch_up(ep: Endpoints, spec: MigrationSpec, run_id: str, tmap: TenantMap | None = None) -> dict[str, Any]:
    """GO, registrations suspended: everything the primary committed until now onto the target,
    then the Cassandra partitions of the rows it brought (``plan_late_partitions``). A clear after
    a failure in the window finds registrations resumed by the teardown: suspended again first."""
    if spec.dry_run:
        return {"skipped": "dry run"}
    tmap = tmap or profile_of(spec).tenant_map
    with ep.target.connect(autocommit=True) as tconn:
        regs = ensure_registrations_suspended(ep, spec, run_id, tconn, "final_catch_up")
    out = catch_up_postgres(ep, spec, run_id, until_now=True, tmap=tmap)
    out["registrations"] = regs
    out["late_partitions"] = plan_late_partitions(ep, spec, run_id, tmap, "final_catch_up")
    out["sequences"] = advance_sequences(ep, spec, run_id, tmap)
    return out


def advance_sequences(ep: Endpoints, spec: MigrationSpec, run_id: str, tmap: TenantMap) -> dict[str, Any]:
    """Every sequence the migrated tables draw from set on the target past the primary's, with
    ``sequence_headroom`` (``postgres.sequences``); idempotent, only ever forward."""
    with ep.source_cdc.connect(autocommit=True) as src, ep.target.connect(autocommit=True) as tconn:
        with step(tconn, run_id, "advance_sequences") as detail:
            found = sequences.advance(src, tconn, tmap.schema, migrated_tables(tmap), spec.sequence_headroom)
            moved = [st for st in found if st.set_to is not None]
            for st in moved:
                log.info("sequence %s: set to %d on the target (source next %d, target column max %s, headroom %d)",
                         st.use.label, st.set_to, st.source_next, st.target_max, spec.sequence_headroom)
            detail.update({"sequences": len(found), "advanced": [st.use.label for st in moved]})
    return {"sequences": len(found), "advanced": len(moved)}


def suspend_registrations(ep: Endpoints, spec: MigrationSpec, run_id: str) -> dict[str, Any]:
    """Setup of the critical window: the platform refuses the tenant's new users and devices until
    resumed or until the expiry passes (the dead-man switch holds even if Airflow dies)."""
    if spec.dry_run:
        return {"skipped": "dry run"}
    switch = profile_of(spec).registrations
    with registrations.side(ep, switch, switch.connection) as op, ep.target.connect(autocommit=True) as tconn:
        window = op.suspend(spec.tenant_id, timedelta(minutes=spec.suspension_minutes), f"tenant migration {run_id}")
        ledger.record_event(tconn, run_id, "registrations_suspended", "info", window.to_dict())
    return window.to_dict()


def resume_registrations(ep: Endpoints, spec: MigrationSpec, run_id: str, keep_for_resume: bool = True) -> dict[str, Any]:
    """Teardown: registrations come back on the source and on the target, whatever failed.

    When the cutover did not finish (the run is live and its ``post_flip`` gate has not passed),
    the task then fails on purpose (``KeptForResume``, ADR 10): a *Clear -> Only failed* of the
    failed work runs it again after the flip, while the cleared tasks suspend registrations
    again first (``final_catch_up``, ``flip_dns``). ``keep_for_resume=False`` (unattended
    rehearsals) never fails for that."""
    switch = profile_of(spec).registrations
    with registrations.side(ep, switch, switch.connection) as op:
        source = op.resume(spec.tenant_id)
    others: dict[str, Any] = {}
    for conn_id in switch.resume_also_on:
        with registrations.side(ep, switch, conn_id) as other:
            try:
                others[conn_id] = other.resume(spec.tenant_id).to_dict()
            except registrations.NotOnThisSide as exc:
                # The tenant's flag never reached that side (a run that failed early): nothing to resume.
                others[conn_id] = {"not_there": str(exc)[:300]}
    with ep.target.connect(autocommit=True) as tconn:
        if not spec.dry_run and ledger.run_row(tconn, run_id) is not None:
            ledger.record_event(tconn, run_id, "registrations_resumed", "info", source.to_dict())
            window = suspension_window(tconn, run_id)
            if window is not None:
                ledger.record_event(tconn, run_id, "suspension_window", "info", {"seconds": window})
    if keep_for_resume and not spec.dry_run:
        try:
            hold_for_resume(ep, run_id, "post_flip", "registrations")
        except KeptForResume as exc:
            raise KeptForResume(
                f"registrations of tenant {spec.tenant_id} were resumed although the cutover did not finish (the "
                f"'post_flip' gate of run {run_id} has not passed). Fix the cause, then clear the failed task "
                f"instances (only failed, with downstream): the cleared tasks suspend registrations again before "
                f"the flip, and this teardown runs again after it. To give up instead: mark the ledger run "
                f"aborted (runbook: Abort), then clear this task.") from exc
    return {"source": source.to_dict(), "also": others}


def suspension_window(tconn: psycopg.Connection, run_id: str) -> float | None:
    row = tconn.execute(
        "SELECT EXTRACT(EPOCH FROM MAX(at) FILTER (WHERE step = 'registrations_resumed') "
        "- MIN(at) FILTER (WHERE step = 'registrations_suspended'))::float8 FROM tm_control.events WHERE run_id = %s",
        (run_id,)).fetchone()
    return float(row[0]) if row and row[0] is not None else None


def gate_pre_flip(ep: Endpoints, spec: MigrationSpec, run_id: str, tmap: TenantMap | None = None) -> dict[str, Any]:
    """Before the flip: everything the source committed is on the target, every sequence of the
    migrated tables is past the source's, and registrations are off."""
    out = gate_catch_up(ep, spec, run_id, gate_name="pre_flip", tmap=tmap)
    if spec.dry_run:
        return out
    switch = profile_of(spec).registrations
    with registrations.side(ep, switch, switch.connection) as op:
        state = op.status(spec.tenant_id)
    if not state.active:
        raise GateFailed(f"pre_flip: registrations of tenant {spec.tenant_id} are not suspended ({state.to_dict()})")
    return out


def lower_dns_ttl(ep: Endpoints, spec: MigrationSpec, run_id: str, slug: str, wait: bool = True) -> dict[str, Any]:
    """Lower the records' TTL, then wait out the old TTL: at the flip no client holds an older answer.
    A retry (or a clear) waits only what is left of the wait begun by an earlier try. With
    ``wait=False`` it does not sleep: the caller waits until ``wait_until`` (the DAG defers the task
    to the triggerer, freeing its worker slot) -- the deadline is the ledger's, so a resumed or
    cleared wait keeps the one the first try set."""
    if spec.dry_run:
        return {"skipped": "dry run"}
    r53 = ep.aws.client("route53")
    zid = dns.zone_id(r53, spec.dns_zone)
    plans = dns_plans(spec, slug)
    with ep.target.connect(autocommit=True) as tconn:
        out = ensure_dns_ready(spec, run_id, tconn, r53, zid, plans, "lower_dns_ttl", sleep=wait)
        ledger.record_event(tconn, run_id, "lower_dns_ttl", "info", out)
    return out


def ensure_dns_ready(spec: MigrationSpec, run_id: str, tconn: psycopg.Connection, r53: Any, zid: str,
                     plans: list[dns.RecordPlan], by: str, sleep: bool = True) -> dict[str, Any]:
    """The flip's DNS precondition, checked NOW (not taken from an earlier try): every record of the
    tenant has at most the lowered TTL, and the old TTL has passed since it was lowered (at most
    ``max_ttl_wait_s``: the operator's cap). Where it does not hold -- a control plane that came back
    with the records reset to a long TTL -- it lowers again and waits again. Returns what it found,
    lowered and waited; refuses (``DnsError``) when a record is missing from the zone."""
    sets = dns.record_sets(r53, zid)
    missing = dns.missing_records(sets, plans)
    if missing:
        raise dns.DnsError(f"the zone {spec.dns_zone} holds no record for {', '.join(missing)}: the DNS control "
                           f"plane lost them. Restore the records (pointing at the shared platform), then clear "
                           f"this task")
    high = dns.ttls_above(sets, plans, spec.lowered_ttl)
    last = ledger.last_event(tconn, run_id, "dns_ttl_lowered")
    relowered = bool(high) and last is not None
    if high or last is None:
        # Never lowered in this run, or raised again since: lower now and wait the old TTL from now.
        old = dns.lower_ttl(r53, zid, plans, spec.lowered_ttl)
        wait = float(min(old, spec.max_ttl_wait_s))
        detail: dict[str, Any] = {"old_ttl": old, "new_ttl": spec.lowered_ttl, "wait_s": wait, "found_above": high, "by": by}
        ledger.record_event(tconn, run_id, "dns_ttl_lowered", "info", detail)
        remaining = wait
        until = datetime.now(UTC) + timedelta(seconds=wait)
        if wait < old:
            log.warning("the records' old TTL is %ss; waiting %ss (max_ttl_wait_s): clients may keep the old "
                        "answer up to %ss after the flip, the drain waits for their writes", old, wait, old - wait)
    else:
        lowered_at, detail, since = last
        remaining = max(0.0, float(detail.get("wait_s", 0)) - since)
        until = lowered_at + timedelta(seconds=float(detail.get("wait_s", 0)))  # the first try's deadline
    if remaining > 0 and sleep:
        time.sleep(remaining)
    if relowered:
        log.warning("the tenant's records were back at a TTL above %ss (%s): lowered again, waited %.0fs",
                    spec.lowered_ttl, ", ".join(f"{n} {t}s" for n, t in high.items()), remaining)
    return {"old_ttl": detail["old_ttl"], "new_ttl": spec.lowered_ttl, "waited_s": round(remaining, 3),
            "wait_until": until.isoformat(), "found_above": high, "lowered_again": relowered}


def ensure_registrations_suspended(ep: Endpoints, spec: MigrationSpec, run_id: str, tconn: psycopg.Connection,
                                   by: str) -> dict[str, Any]:
    """The flip's other precondition, checked NOW: the tenant's registrations are suspended. A clear
    after a failed flip finds them resumed (the teardown ran); they are suspended again here, with
    a fresh expiry, and the teardown (failed on purpose, ``resume_registrations``) runs again after."""
    switch = profile_of(spec).registrations
    with registrations.side(ep, switch, switch.connection) as op:
        state = op.status(spec.tenant_id)
        if state.active:
            return {"suspended_again": False, "until": state.to_dict()["suspended_until"]}
        window = op.suspend(spec.tenant_id, timedelta(minutes=spec.suspension_minutes), f"tenant migration {run_id}")
    ledger.record_event(tconn, run_id, "registrations_suspended", "info", {**window.to_dict(), "by": by})
    return {"suspended_again": True, "until": window.to_dict()["suspended_until"], "found": state.to_dict()}


def drain_stragglers(ep: Endpoints, spec: MigrationSpec, run_id: str, tmap: TenantMap | None = None) -> dict[str, Any]:
    """After the flip, clients with a stale DNS answer still write to the shared platform: keep
    bringing those writes over (Cassandra buckets and the change stream) until they have stopped
    (``cutover.drain``): at least ``drain_seconds``, then ``drain_quiet_s`` without a new write; a
    tenant still writing there after ``drain_max_s`` fails the task with what it saw."""
    if spec.dry_run:
        return {"skipped": "dry run"}
    from tenant_migration.cassandra import catchup as cql_catchup
    from tenant_migration.cassandra.ratelimit import TokenBucket
    from tenant_migration.cutover import drain

    tmap = tmap or profile_of(spec).tenant_map
    opts = cql_copy.CopyOptions(concurrency=spec.cassandra_concurrency)
    limiter = TokenBucket(opts.rows_per_second)
    with ep.target.connect(autocommit=True) as tconn, step(tconn, run_id, "drain_stragglers") as detail:
        flipped = ledger.flip_time(tconn, run_id)
        if flipped is None:
            raise PreflightError(f"run {run_id} never flipped its DNS records: flip_dns must run before the drain")
        # A weighted shift sent writes to both sides since it began; clocks drift by a minute at most.
        since = min(datetime.now(UTC) - timedelta(minutes=15), flipped - timedelta(minutes=1))
        late_planned: list[dict[str, Any]] = []
        with ep.cassandra_sessions() as (src, dst):

            def one_pass(n: int) -> drain.Seen:
                chunks = ledger.run_chunks(tconn, run_id, "cassandra")
                cql = cql_catchup.drain_pass(src, dst, tmap, chunks, since, flipped, pass_no=n, opts=opts,
                                             limiter=limiter)
                pg = catch_up_postgres(ep, spec, run_id, until_now=True, tmap=tmap, step_name="drain_postgres")
                if pg["changes_applied"] or n == 1:  # rows the stream brought may own new partitions
                    late_planned.append(plan_late_partitions(ep, spec, run_id, tmap, "drain_stragglers", source=src))
                prog = cdc.read_progress(tconn, run_id)
                newest_change = prog.applied_commit_time if prog and pg["changes_applied"] else None
                return drain.Seen(cql.rows, cql.late_cells, cql.newest_writetime, int(pg["changes_applied"]),
                                  newest_change)

            def on_pass(p: drain.DrainPass) -> None:
                log.info("drain pass %d at %.0fs: %d Cassandra cells on the shared side after the flip, %d relational "
                         "changes, %s", p.pass_no, p.at_s, p.seen.late_cells, p.seen.changes,
                         "new writes" if p.new_writes else "quiet")

            watch = drain.DrainWatch(spec.drain_seconds, spec.drain_quiet_s, spec.drain_max_s)

            def passed(p: drain.DrainPass) -> None:
                on_pass(p)
                watch.on_pass(p)

            try:
                with progress.Ticker("drain_stragglers", watch.read):
                    result = drain.until_quiet(one_pass, min_seconds=spec.drain_seconds,
                                               quiet_seconds=spec.drain_quiet_s, max_seconds=spec.drain_max_s,
                                               poll_seconds=_drain_poll(spec), on_pass=passed)
            except drain.DrainNotQuiet as exc:
                ledger.record_event(tconn, run_id, "drain_not_quiet", "info", exc.result.to_dict())
                raise
        out = {**result.to_dict(), "flip_at": flipped.isoformat(),
               "cassandra_passes": [{"rows": p.seen.rows_copied, "late_cells": p.seen.late_cells}
                                    for p in result.passes],
               "cassandra_rows": sum(p.seen.rows_copied for p in result.passes),
               "late_partitions": {"planned": sum(x["planned"] for x in late_planned),
                                   "rows": sum(x["rows"] for x in late_planned)}}
        detail.update(out)
    return {k: v for k, v in out.items() if k != "pass_log"}


def _drain_poll(spec: MigrationSpec) -> float:
    """Seconds between drain passes: a third of the quiet window, 1 to 10 s."""
    return float(max(1, min(10, spec.drain_quiet_s // 3 or 1)))


def gate_post_flip(ep: Endpoints, spec: MigrationSpec, run_id: str, slug: str, drained: dict[str, Any],
                   tmap: TenantMap | None = None) -> dict[str, Any]:
    """Every record of the tenant answers the target endpoint; the straggler drain ran; the
    partitions planned after the detach hold the same cells on both sides up to the flip."""
    if spec.dry_run:
        return {"skipped": "dry run"}
    import pandas as pd

    tmap = tmap or profile_of(spec).tenant_map
    started = time.monotonic()
    gx_gate.warm_up_gx(reports_dir() / safe_name(run_id))
    r53 = ep.aws.client("route53")
    zid = dns.zone_id(r53, spec.dns_zone)
    rows = []
    for plan in dns_plans(spec, slug):
        chain = dns.resolve(r53, zid, plan.name)
        rows.append({"unit": plan.name, "answer": chain[1], "expected": plan.tenant_target})
    frame = pd.DataFrame(rows)
    passes = pd.DataFrame([{"unit": f"pass {i}", "rows": p.get("rows", 0)}
                           for i, p in enumerate(drained.get("cassandra_passes", []), 1)], columns=["unit", "rows"])
    check = gx_gate.Gate("post_flip", reports_dir() / safe_name(run_id))
    check.expect("dns", frame, [gx_gate.FrameCheck(
        "records_answer_target", "ExpectColumnPairValuesToBeEqual", {"column_A": "answer", "column_B": "expected"},
        "every record of the tenant answers the target endpoint")])
    check.violations("drain", "drain_ran", "the straggler drain made at least one pass", int(passes.empty),
                     [] if not passes.empty else ["no pass of the straggler drain is recorded"])
    with ep.target.connect(autocommit=True) as tconn:
        gates.late_checks(check, late_frame(ep, tconn, tmap, run_id))
        gate = check.finish(started)
        record_gate_result(tconn, run_id, gate)
    if not gate.passed:
        raise GateFailed(f"{gate.summary()} (Data Docs: {gate.report})")
    return {"passed": True, "report": str(gate.report)}
