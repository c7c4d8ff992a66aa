"""The zero-downtime report of one migration run: what the fleet saw, set against the ledger.

Inputs are the fleet's journal (every write attempt), the run's ledger events on the target
(``tm_control.events``: flip, suspension, drain, catch-up) and, when sampled, the change stream's
lag over time (``LagSampler``). Outputs: ``zero_downtime.json`` (numbers) and
``zero_downtime.png`` (writes/s per endpoint over time, flip and suspension window marked, lag).

Definitions (the numbers the e2e test checks):
- *device write unavailability*: the count of whole seconds in which at least one device write
  failed or timed out. Zero means no device ever saw an error.
- *suspension window*: from the ``registrations_suspended`` event to the ``registrations_resumed``
  event. A registration was rejected "inside" it when its request interval overlaps the window.
- *stragglers*: writes acknowledged by the OLD (shared) endpoint that started after the flip (the
  ``flip_dns`` step's finish), i.e. sent by clients whose DNS cache still held the old answer.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tenant_migration.endpoints import PgEndpoint
from tenant_migration.postgres.cdc import slot_name_for
from tenant_migration.sample.fleet.journal import Journal, WriteRecord


@dataclass(frozen=True)
class LagSample:
    at: float  # unix seconds
    run_id: str | None
    lag_bytes: int | None  # WAL between the slot's confirmed position and the primary's head
    applied_age_s: float | None  # seconds since the last source commit applied on the target
    txns_applied: int | None


class LagSampler:
    """Polls the change stream's progress every ``interval`` seconds in a thread (bounded by stop)."""

    def __init__(self, source_cdc: PgEndpoint, target: PgEndpoint, interval: float = 1.0) -> None:
        self.source_cdc = source_cdc
        self.target = target
        self.interval = interval
        self.samples: list[LagSample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lag-sampler", daemon=True)

    def start(self) -> LagSampler:
        self._thread.start()
        return self

    def stop(self) -> list[LagSample]:
        self._stop.set()
        self._thread.join(timeout=30)
        return self.samples

    def _run(self) -> None:
        src = tgt = None
        while not self._stop.is_set():
            try:
                if src is None or src.closed:
                    src = self.source_cdc.connect(autocommit=True, application_name="tm_lag_sampler")
                if tgt is None or tgt.closed:
                    tgt = self.target.connect(autocommit=True, application_name="tm_lag_sampler")
                self.samples.append(sample_lag(src, tgt))
            except Exception:  # noqa: S110 - the ledger may not exist yet; sampling is best effort
                pass
            self._stop.wait(self.interval)
        for conn in (src, tgt):
            if conn is not None:
                conn.close()


def sample_lag(src: Any, tgt: Any) -> LagSample:
    now = time.time()
    if not tgt.execute("SELECT to_regclass('tm_control.cdc_progress') IS NOT NULL").fetchone()[0]:
        return LagSample(now, None, None, None, None)
    row = tgt.execute("SELECT run_id, EXTRACT(EPOCH FROM clock_timestamp() - applied_commit_time)::float8, "
                      "txns_applied FROM tm_control.cdc_progress ORDER BY updated_at DESC LIMIT 1").fetchone()
    if row is None:
        return LagSample(now, None, None, None, None)
    lag = src.execute("SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint FROM pg_replication_slots "
                      "WHERE slot_name = %s", (slot_name_for(row[0]),)).fetchone()
    return LagSample(now, str(row[0]), int(lag[0]) if lag and lag[0] is not None else None,
                     float(row[1]) if row[1] is not None else None, int(row[2]))


Event = tuple[str, str, float, dict[str, Any]]  # (step, kind, unix seconds, detail)


@dataclass
class ZeroDowntimeReport:
    run_id: str
    fleet_started: float
    fleet_finished: float
    device_writes: dict[str, int]
    device_write_unavailable_seconds: int
    device_write_availability: float
    device_p50_ms: float | None
    device_p99_ms: float | None
    app_writes: dict[str, int]
    flip_at: float | None
    suspension: dict[str, Any]
    registrations: dict[str, Any]
    stragglers: dict[str, Any]
    catch_up: dict[str, Any]
    writes_per_endpoint: dict[str, int]
    series: dict[str, list[int]] = field(default_factory=dict)  # endpoint -> acked writes per second
    png: str | None = None
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        s, st = self.suspension, self.stragglers
        return (f"device writes: {self.device_writes} availability {self.device_write_availability:.6f}, "
                f"{self.device_write_unavailable_seconds} s unavailable, p50 {self.device_p50_ms} ms p99 "
                f"{self.device_p99_ms} ms; suspension {s.get('seconds')} s, {self.registrations.get('rejected')} "
                f"registrations rejected ({self.registrations.get('rejected_outside_window')} outside); "
                f"stragglers after the flip {st.get('total')} over {st.get('window_s')} s "
                f"(after the drain: {st.get('after_drain')}); problems: {self.problems or 'none'}")


def _events(target: PgEndpoint, run_id: str) -> list[Event]:
    with target.connect(autocommit=True) as conn:
        rows = conn.execute("SELECT step, kind, EXTRACT(EPOCH FROM at)::float8, detail FROM tm_control.events "
                            "WHERE run_id = %s ORDER BY at, event_id", (run_id,)).fetchall()
    return [(str(r[0]), str(r[1]), float(r[2]), dict(r[3] or {})) for r in rows]


def _first(events: list[Event], step: str, kind: str) -> float | None:
    return next((e[2] for e in events if e[0] == step and e[1] == kind), None)


def _last(events: list[Event], step: str, kind: str) -> float | None:
    hits = [e[2] for e in events if e[0] == step and e[1] == kind]
    return hits[-1] if hits else None


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 2)


def shared_endpoints(records: list[WriteRecord]) -> set[str]:
    """The old platform's endpoint names (``<svc>.shared.<zone>``)."""
    return {r.endpoint for r in records if ".shared." in r.endpoint}


def build_report(journal: Path, target: PgEndpoint | None, run_id: str, out_dir: Path,
                 lag: list[LagSample] | None = None, plot: bool = True,
                 events: list[Event] | None = None) -> ZeroDowntimeReport:
    """Compute the numbers from the journal and the run's events (read from ``target`` unless
    given), write ``zero_downtime.json`` (and the PNG) into ``out_dir``."""
    records = list(Journal.read(journal))
    if events is None:
        if target is None:
            raise ValueError("build_report needs the target's ledger or the events")
        events = _events(target, run_id)
    old = shared_endpoints(records)
    devices = [r for r in records if r.kind == "datapoint"]
    apps = [r for r in records if r.kind == "app"]
    regs = [r for r in records if r.kind in ("registration", "device_registration")]
    started = min((r.started for r in records), default=0.0)
    finished = max((r.started + r.latency_ms / 1000 for r in records), default=0.0)

    failed_seconds = {int(r.started) for r in devices if not r.acked}
    acked_devices = [r for r in devices if r.acked]

    flip_at = _first(events, "flip_dns", "finished")
    susp_start = _first(events, "registrations_suspended", "info")
    susp_end = _last(events, "registrations_resumed", "info")
    suspension = {"start": susp_start, "end": susp_end,
                  "seconds": round(susp_end - susp_start, 3) if susp_start and susp_end else None}

    rejected = [r for r in regs if not r.acked]
    outside = [r for r in rejected if susp_start is None or susp_end is None
               or r.started + r.latency_ms / 1000 < susp_start or r.started > susp_end]
    by_key: dict[str, list[WriteRecord]] = defaultdict(list)
    for r in regs:
        by_key[f"{r.kind}:{r.payload.get('key')}"].append(r)
    retried_ok = sum(1 for rs in by_key.values() if any(not r.acked for r in rs) and any(r.acked for r in rs))
    never_ok = sorted(k for k, rs in by_key.items() if not any(r.acked for r in rs))
    registrations = {"attempts": len(regs), "keys": len(by_key), "rejected": len(rejected),
                     "rejected_outside_window": len(outside), "rejected_then_accepted": retried_ok,
                     "never_accepted": never_ok,
                     "rejection_errors": dict(Counter((r.error or "").split(":")[0] for r in rejected))}

    drain_end = _last(events, "drain_stragglers", "finished")
    late = [r for r in records if r.acked and r.endpoint in old and flip_at is not None and r.started >= flip_at]
    by_kind = Counter(r.kind for r in late)
    drained_rows = next((e[3].get("cassandra_rows") for e in reversed(events)
                         if e[0] == "drain_stragglers" and e[1] == "finished"), None)
    stragglers = {"total": len(late), "by_kind": dict(by_kind),
                  "last_at": max((r.started for r in late), default=None),
                  "window_s": round(max(r.started for r in late) - flip_at, 3) if late and flip_at else 0.0,
                  "drain_finished_at": drain_end,
                  "after_drain": sum(1 for r in late if drain_end is not None and r.started >= drain_end),
                  "drain_cassandra_rows": drained_rows}

    catch = [{"step": e[0], "at": e[2], **{k: e[3].get(k) for k in ("lag_bytes", "lag_seconds", "txns_applied",
                                                                      "changes_applied", "seconds", "converged")}}
             for e in events if e[0].startswith("catch_up_postgres") and e[1] == "finished"]
    samples = [asdict(s) for s in (lag or []) if s.run_id in (None, run_id)]
    catch_up = {"passes": catch, "samples": samples,
                "max_lag_bytes": max((s["lag_bytes"] for s in samples if s["lag_bytes"] is not None), default=None)}

    t0 = int(started)
    n = max(1, int(finished) - t0 + 1)
    series: dict[str, list[int]] = {}
    for r in records:
        if r.acked:
            series.setdefault(r.endpoint, [0] * n)[min(n - 1, max(0, int(r.started) - t0))] += 1

    lat = [r.latency_ms for r in acked_devices]
    problems: list[str] = []
    if failed_seconds:
        problems.append(f"device writes failed in {len(failed_seconds)} seconds")
    if outside:
        problems.append(f"{len(outside)} registrations rejected outside the suspension window")
    if never_ok:
        problems.append(f"{len(never_ok)} registrations never accepted")
    if stragglers["after_drain"]:
        problems.append(f"{stragglers['after_drain']} straggler writes after the drain finished")
    report = ZeroDowntimeReport(
        run_id=run_id, fleet_started=started, fleet_finished=finished,
        device_writes={"attempted": len(devices), "acked": len(acked_devices), "failed": len(devices) - len(acked_devices)},
        device_write_unavailable_seconds=len(failed_seconds),
        device_write_availability=round(len(acked_devices) / len(devices), 6) if devices else 1.0,
        device_p50_ms=_pct(lat, 0.5), device_p99_ms=_pct(lat, 0.99),
        app_writes={"attempted": len(apps), "acked": sum(r.acked for r in apps)},
        flip_at=flip_at, suspension=suspension, registrations=registrations, stragglers=stragglers,
        catch_up=catch_up, writes_per_endpoint=dict(Counter(r.endpoint for r in records if r.acked)),
        series=series, problems=problems)
    out_dir.mkdir(parents=True, exist_ok=True)
    if plot:
        report.png = str(plot_report(report, out_dir / "zero_downtime.png"))
    (out_dir / "zero_downtime.json").write_text(json.dumps(report.to_dict(), indent=2, default=str))
    return report


def plot_report(report: ZeroDowntimeReport, path: Path) -> Path:
    """Writes/s per endpoint over time, the flip and the suspension window marked; lag below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = int(report.fleet_started)
    fig, (ax, lag_ax) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True, height_ratios=[3, 1])
    for endpoint, counts in sorted(report.series.items()):
        ax.plot(range(len(counts)), counts, label=endpoint, linewidth=1)
    s = report.suspension
    for a in (ax, lag_ax):
        if s.get("start") and s.get("end"):
            a.axvspan(s["start"] - t0, s["end"] - t0, color="orange", alpha=0.2,
                      label="registrations suspended" if a is ax else None)
        if report.flip_at:
            a.axvline(report.flip_at - t0, color="red", linestyle="--", label="DNS flip" if a is ax else None)
        if report.stragglers.get("drain_finished_at"):
            a.axvline(report.stragglers["drain_finished_at"] - t0, color="grey", linestyle=":",
                      label="drain finished" if a is ax else None)
    ax.set_ylabel("acknowledged writes / s")
    started_at = datetime.fromtimestamp(report.fleet_started).strftime("%H:%M:%S")
    ax.set_title(f"Zero-downtime run {report.run_id}: {report.device_write_unavailable_seconds} s of device write "
                 f"unavailability, {report.stragglers.get('total')} stragglers (t=0 at {started_at})", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    samples = [x for x in report.catch_up.get("samples", []) if x.get("lag_bytes") is not None]
    lag_ax.plot([x["at"] - t0 for x in samples], [x["lag_bytes"] / 1024 for x in samples], color="purple")
    lag_ax.set_ylabel("CDC lag (KiB)")
    lag_ax.set_xlabel("seconds since the fleet started")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
