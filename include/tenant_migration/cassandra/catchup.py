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

from tenant_migration.cassandra.copy import (
    ChunkCopier,
    CopyOptions,
    CopyStats,
    TableShape,
    iter_pages,
    newest,
    reader_for,
    select_cells,
    table_shape,
)
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
    late_cells: int = 0  # drain: the tenant's live cells on the source written after the flip
    newest_writetime: int | None = None  # drain: the newest of them (microseconds)

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
               limiter: TokenBucket, min_writetime: int | None, watch_after: int | None = None) -> CopyStats:
    total = CopyStats("*", 0, 0, 0, 0.0)
    for table, groups in recent.groups.items():
        copier = ChunkCopier(source, target, recent.shapes[table], tmap.cassandra_tables[table].day_column, opts,
                             limiter)
        total.add(copier.copy_groups(groups, min_writetime, watch_after))
    return total


def drain_pass(source: Session, target: Session, tmap: TenantMap, chunks: Sequence[Chunk], since: datetime,
               watch_after: datetime, *, pass_no: int = 1, opts: CopyOptions | None = None,
               limiter: TokenBucket | None = None, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> PassStats:
    """One pass of the straggler drain: copy the tenant's partitions of the day buckets from
    ``since`` to now (every live cell, last write wins on the target), and count the cells the
    source took after ``watch_after`` (the flip) and the newest of them: the drain's evidence that
    writes still arrive on the shared platform."""
    opts = opts or CopyOptions()
    days = recent_days(since, now())
    recent = RecentPartitions(source, tmap, chunks, days, opts.in_limit)
    started = time.monotonic()
    st = _copy_pass(source, target, tmap, recent, opts, limiter or TokenBucket(opts.rows_per_second), None,
                    int(watch_after.timestamp() * 1_000_000))
    return PassStats(pass_no, [d.isoformat() for d in days], st.rows, st.cells, st.writes,
                     time.monotonic() - started, late_cells=st.late_cells, newest_writetime=st.newest_writetime)


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
    limiter: TokenBucket | None = None,
    on_pass: Callable[[int, list[date]], None] | None = None,
) -> list[PassStats]:
    """Re-copy the buckets at or after ``watermark - safety_margin`` until their fingerprints match.

    ``chunks`` is the tenant's plan (``plan.plan_tenant``); only its bases are used. Returns the
    stats of every pass; the last one says whether it converged. ``on_pass(n, days)`` is told as
    each pass begins (progress); ``limiter.taken`` counts the rows read.
    """
    opts = opts or CopyOptions()
    limiter = limiter or TokenBucket(opts.rows_per_second)
    passes: list[PassStats] = []
    for n in range(1, max_passes + 1):
        days = recent_days(watermark - safety_margin, now())
        if on_pass is not None:
            on_pass(n, days)
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


@dataclass
class LateWrites:
    """One table: the tenant's cells the shared platform took after the flip, and those the target lacks."""

    table: str
    cells: int = 0  # live cells on the source written after the flip
    after_drain: int = 0  # ... of which after the drain ended
    newest_writetime: int | None = None  # microseconds
    missing: int = 0  # ... of which the target holds neither the same cell nor a newer one
    missing_sample: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def late_writes(source: Session, target: Session, tmap: TenantMap, chunks: Sequence[Chunk], since: datetime,
                flip_us: int, drain_end_us: int | None, *, opts: CopyOptions | None = None, sample: int = 20,
                now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> list[LateWrites]:
    """Per table, the cells of the tenant's partitions (day buckets from ``since``) that the source
    took after ``flip_us``, compared with the target: a cell is there when the target holds it
    with the same writetime and value, or a newer write of it (the tenant's own, after the flip)."""
    opts = opts or CopyOptions()
    recent = RecentPartitions(source, tmap, chunks, recent_days(since, now()), opts.in_limit)
    out: list[LateWrites] = []
    for table, groups in recent.groups.items():
        shape = recent.shapes[table]
        nkey, regular = len(shape.primary_key), shape.regular
        found = LateWrites(table)
        want: dict[tuple[tuple[Any, ...], int], tuple[int, Any]] = {}
        # A collection's cells are its elements: compared as the whole collection at its newest element.
        src_reader, dst_reader = reader_for(source, shape), reader_for(target, shape)
        for page in iter_pages(src_reader, select_cells(src_reader, shape), groups, read_concurrency=opts.read_concurrency,
                               fetch_size=opts.fetch_size, opts=opts):
            for row in page:
                for i in range(len(regular)):
                    value, wt = row[nkey + 3 * i], newest(row[nkey + 3 * i + 1])
                    if wt is None or wt <= flip_us:
                        continue
                    found.cells += 1
                    found.after_drain += int(drain_end_us is not None and wt > drain_end_us)
                    found.newest_writetime = max(found.newest_writetime or wt, wt)
                    want[(tuple(row[:nkey]), i)] = (wt, value)
        if want:
            for page in iter_pages(dst_reader, select_cells(dst_reader, shape), groups,
                                   read_concurrency=opts.read_concurrency, fetch_size=opts.fetch_size, opts=opts):
                for row in page:
                    key = tuple(row[:nkey])
                    for i in range(len(regular)):
                        got = want.get((key, i))
                        if got is None:
                            continue
                        value, wt = row[nkey + 3 * i], newest(row[nkey + 3 * i + 1])
                        if wt is not None and (wt > got[0] or (wt == got[0] and value == got[1])):
                            del want[(key, i)]
        found.missing = len(want)
        found.missing_sample = [f"{dict(zip(shape.primary_key, key, strict=True))} {regular[i]} written at {wt}"
                                for (key, i), (wt, _) in sorted(want.items(), key=lambda kv: kv[1][0])[:sample]]
        out.append(found)
    return out
