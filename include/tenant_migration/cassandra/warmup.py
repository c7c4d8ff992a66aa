"""Warm the target for the tenant's hot partitions (its most recent buckets) before the DNS flip.

Why: right after the flip every read of the tenant hits the new cluster; cold caches (chunk cache,
key cache, page cache) make the first minutes slow. Reading the hot partitions once beforehand moves
that cost out of the customer's path. Latency is measured on two disjoint samples of hot partitions,
one before the warm-up pass and one after (a single sample would be warmed by its own first read and
flatter the result).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from tenant_migration.cassandra.catchup import RecentPartitions
from tenant_migration.cassandra.copy import CopyOptions, TableShape, cql_ident
from tenant_migration.ledger import Chunk
from tenant_migration.tenant_map import TenantMap

if TYPE_CHECKING:
    from cassandra.cluster import Session


@dataclass(frozen=True)
class LatencyStats:
    reads: int
    p50_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> LatencyStats:
        if not seconds:
            return cls(0, 0.0, 0.0, 0.0)
        ms = sorted(s * 1000 for s in seconds)
        p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
        return cls(len(ms), round(statistics.median(ms), 3), round(p99, 3), round(ms[-1], 3))


@dataclass(frozen=True)
class WarmupReport:
    hot_partitions: int
    warmed_rows: int
    before: LatencyStats
    after: LatencyStats
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _point_reads(session: Session, shape: TableShape) -> Any:
    where = " AND ".join(f"{cql_ident(c)} = ?" for c in shape.partition_key)
    return session.prepare(f"SELECT * FROM {shape.qualified} WHERE {where}")


def _timed(session: Session, stmt: Any, keys: Sequence[tuple[Any, ...]]) -> list[float]:
    out = []
    for key in keys:
        t0 = time.perf_counter()
        list(session.execute(stmt, key))
        out.append(time.perf_counter() - t0)
    return out


def warm_up(
    target: Session,
    tmap: TenantMap,
    chunks: Sequence[Chunk],
    *,
    hot_days: int = 2,
    sample: int = 200,
    opts: CopyOptions | None = None,
    today: date | None = None,
    tally: Any = None,
) -> WarmupReport:
    """Read every hot partition of the tenant on ``target`` once; p50/p99 of single-partition reads
    on a cold sample before and a disjoint sample after."""
    from cassandra.concurrent import execute_concurrent_with_args

    opts = opts or CopyOptions()
    today = today or datetime.now(UTC).date()
    days = [today - timedelta(days=i) for i in range(hot_days)]
    started = time.monotonic()
    recent = RecentPartitions(target, tmap, chunks, days, opts.in_limit)
    keys: list[tuple[str, tuple[Any, ...]]] = [
        (table, pk) for table, groups in recent.groups.items() for g in groups for pk in g.partitions()]
    # Spread both samples over the whole key list (every k-th key), disjoint by offset.
    step = max(1, len(keys) // max(1, 2 * sample))
    before_keys, after_keys = keys[0::2 * step][:sample], keys[step::2 * step][:sample]
    stmts = {t: _point_reads(target, s) for t, s in recent.shapes.items()}

    def measure(sel: Sequence[tuple[str, tuple[Any, ...]]]) -> LatencyStats:
        times: list[float] = []
        for table in stmts:
            times += _timed(target, stmts[table], [k for t, k in sel if t == table])
        return LatencyStats.of(times)

    if tally is not None:  # progress.Tally: hot partitions read of those to read
        tally.done, tally.rows, tally.planned, tally.unit = 0.0, 0, float(len(keys)), "hot partitions read"
        tally.note = "Cassandra partitions of the newest buckets"
    before = measure(before_keys)
    warmed = 0
    for table, stmt in stmts.items():
        params = [k for t, k in keys if t == table]
        for ok, res in execute_concurrent_with_args(target, stmt, params, concurrency=opts.concurrency,
                                                    results_generator=True):
            if ok:
                warmed += sum(1 for _ in res)
            if tally is not None:
                tally.add(1)
    after = measure(after_keys)
    return WarmupReport(len(keys), warmed, before, after, time.monotonic() - started)
