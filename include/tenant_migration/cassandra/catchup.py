"""Catch-up after the bulk copy, and draining stragglers after the DNS flip.

Design note. The bulk copy reads a live source, so it already holds everything written before each
partition was read. What it can miss is what arrived afterwards, which lands in the most recent day
buckets. The catch-up therefore re-copies only the buckets at or after the detach watermark minus a
safety margin (clock skew, late writers), pass after pass, until the fingerprints of those recent
partitions match on both sides (or ``max_passes`` is reached: a busy tenant may never be exactly
quiet, the report says how far it got). Re-copying is safe at any time: cells carry their source
writetime, so a value written directly on the target after the flip (newer) always wins.

Invariant: the partitions come from the plan's relational bases (devices, properties frozen on the
replica; registrations are suspended during the migration), never from a scan of the shared cluster.
Late data carrying an old timestamp into an old bucket is outside the window by construction; widen
``safety_margin`` if devices upload with long delays.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from tenant_migration.cassandra.copy import ChunkCopier, CopyOptions, CopyStats, TableShape, table_shape
from tenant_migration.cassandra.fingerprint import compare_groups
from tenant_migration.cassandra.plan import ReadGroup, read_groups
from tenant_migration.cassandra.ratelimit import TokenBucket
from tenant_migration.ledger import Chunk
from tenant_migration.tenant_map import TenantMap

if TYPE_CHECKING:
    from cassandra.cluster import Session


@dataclass
class PassStats:
    """One pass over the recent partitions."""

    pass_no: int
    days: list[str]
    rows: int
    cells: int
    writes: int
    seconds: float
    mismatched: int | None = None  # partitions whose fingerprints differ after the pass (None: not checked)
    mismatched_sample: list[str] = field(default_factory=list)

    @property
    def converged(self) -> bool:
        return self.mismatched == 0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["converged"] = self.converged
        return out


def recent_days(since: datetime, now: datetime) -> list[date]:
    """UTC day buckets from ``since``'s day to ``now``'s day, newest first."""
    first, last = since.astimezone(UTC).date(), now.astimezone(UTC).date()
    return [last - timedelta(days=i) for i in range((last - first).days + 1)]


def _unique_bases(chunks: Sequence[Chunk]) -> dict[str, list[list[Any]]]:
    """Per table, every base key of the plan once (a plan repeats them in every day window)."""
    out: dict[str, dict[tuple[Any, ...], list[Any]]] = {}
    for c in chunks:
        seen = out.setdefault(c.table_name, {})
        for b in c.bounds["bases"]:
            seen.setdefault(tuple(b), b)
    return {t: sorted(v.values()) for t, v in out.items()}


class RecentPartitions:
    """The tenant's partitions in the recent buckets, per table, as read groups."""

    def __init__(self, source: Session, tmap: TenantMap, chunks: Sequence[Chunk], days: Sequence[date],
                 in_limit: int) -> None:
        self.shapes: dict[str, TableShape] = {}
        self.groups: dict[str, list[ReadGroup]] = {}
        for table, bases in _unique_bases(chunks).items():
            spec = tmap.cassandra_tables[table]
            shape = self.shapes[table] = table_shape(source, tmap.keyspace, table)
            self.groups[table] = read_groups({"bases": bases}, shape.partition_key, spec.day_column, in_limit,
                                             days if spec.day_column else None)


def _copy_pass(source: Session, target: Session, tmap: TenantMap, recent: RecentPartitions, opts: CopyOptions,
               limiter: TokenBucket, min_writetime: int | None) -> CopyStats:
    total = CopyStats("*", 0, 0, 0, 0.0)
    for table, groups in recent.groups.items():
        copier = ChunkCopier(source, target, recent.shapes[table], tmap.cassandra_tables[table].day_column, opts,
                             limiter)
        total.add(copier.copy_groups(groups, min_writetime))
    return total


def catch_up(
    source: Session,
    target: Session,
    tmap: TenantMap,
    chunks: Sequence[Chunk],
    watermark: datetime,
    *,
    safety_margin: timedelta = timedelta(minutes=15),
    max_passes: int = 5,
    opts: CopyOptions | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> list[PassStats]:
    """Re-copy the buckets at or after ``watermark - safety_margin`` until their fingerprints match.

    ``chunks`` is the tenant's plan (``plan.plan_tenant``); only its bases are used. Returns the
    stats of every pass; the last one says whether it converged.
    """
    opts = opts or CopyOptions()
    limiter = TokenBucket(opts.rows_per_second)
    passes: list[PassStats] = []
    for n in range(1, max_passes + 1):
        days = recent_days(watermark - safety_margin, now())
        recent = RecentPartitions(source, tmap, chunks, days, opts.in_limit)
        started = time.monotonic()
        # Devices keep writing while we copy: a pass has converged when every cell written before
        # it began is on the target (later cells are the next pass's, or the drain's after the flip).
        pass_began_us = int(now().timestamp() * 1_000_000)
        st = _copy_pass(source, target, tmap, recent, opts, limiter, None)
        bad: list[str] = []
        for table, groups in recent.groups.items():
            fp, _ = compare_groups(source, target, recent.shapes[table], groups, f"catchup:{n}:{table}", opts,
                                   max_writetime=pass_began_us)
            bad += fp.mismatched
        passes.append(PassStats(n, [d.isoformat() for d in days], st.rows, st.cells, st.writes,
                                time.monotonic() - started, len(bad), bad[:20]))
        if not bad:
            break
    return passes


def drain_stragglers(
    source: Session,
    target: Session,
    tmap: TenantMap,
    chunks: Sequence[Chunk],
    since: datetime,
    *,
    duration: timedelta,
    poll_interval: timedelta,
    opts: CopyOptions | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    sleep: Callable[[float], None] = time.sleep,
    only_newer: bool = False,
) -> list[PassStats]:
    """After the DNS flip: copy the recent buckets from the source every ``poll_interval`` for
    ``duration`` (stale DNS caches keep sending some writes to the shared platform for a while).

    No fingerprint is checked: the target now takes writes of its own. ``only_newer`` writes only
    cells newer than the previous pass's start minus a minute (cheaper; unsound if writers supply old
    timestamps, hence off by default). Returns one ``PassStats`` per pass.
    """
    opts = opts or CopyOptions()
    limiter = TokenBucket(opts.rows_per_second)
    deadline = time.monotonic() + duration.total_seconds()
    passes: list[PassStats] = []
    floor: int | None = None
    n = 0
    while True:
        n += 1
        pass_start = now()
        days = recent_days(since, pass_start)
        recent = RecentPartitions(source, tmap, chunks, days, opts.in_limit)
        started = time.monotonic()
        st = _copy_pass(source, target, tmap, recent, opts, limiter, floor if only_newer else None)
        passes.append(PassStats(n, [d.isoformat() for d in days], st.rows, st.cells, st.writes,
                                time.monotonic() - started))
        floor = int((pass_start - timedelta(minutes=1)).timestamp() * 1_000_000)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return passes
        sleep(min(poll_interval.total_seconds(), remaining))
