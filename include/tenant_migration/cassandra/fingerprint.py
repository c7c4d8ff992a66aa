"""Fingerprints of a tenant's Cassandra partitions on both sides: row count and an order-independent
hash of (primary key, column, value, writetime) per partition.

Why this shape: the sum (mod 2**64) of per-cell digests does not depend on the order rows come
back in (the source and the target may page differently), and it changes when any cell's value or
writetime differs, when a row is missing and when an extra row exists. TTLs are left out on purpose:
the remaining TTL differs by the seconds between the two reads. A chunk whose totals differ names
its differing partitions, and the report flattens into records (``records()``) that a pandas
DataFrame takes as is (the gates validate those DataFrames with Great Expectations).

Where it is computed: Cassandra 5.0 computes it itself, per partition, with ``GROUP BY`` the
partition key: ``count(*)``, ``sum(blobAsVarint(mask_hash((clustering key, each column and its
WRITETIME))))`` (a SHA-256 per row, summed exactly as a varint) and the newest WRITETIME; only
those few numbers per partition reach Python, instead of every cell (5x less gate time on the demo
tenant). A partition holding a cell newer than the watermark (live writes on the shared cluster,
today's buckets) cannot be filtered server-side, and a difference is never reported from the
aggregates alone: those partitions only are re-read and hashed cell by cell here, on both sides,
with the watermark applied.

Non-frozen collections (ADR 11): ``mask_hash`` takes none, so their value and writetimes are hashed
as JSON (``toJson(c)``, ``toJson(WRITETIME(c))``); a set's and a map's elements each with their own
writetime, a list with its newest element's (the copy writes a list at that time).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import date
from functools import partial
from typing import TYPE_CHECKING, Any

from tenant_migration.cassandra.copy import CopyOptions, TableShape, cql_ident, table_shape
from tenant_migration.cassandra.plan import ReadGroup, planned_count, read_groups
from tenant_migration.ledger import Chunk
from tenant_migration.tenant_map import TenantMap

if TYPE_CHECKING:
    from cassandra.cluster import Session
from tenant_migration.cassandra.prints import (  # noqa: F401  (re-exported: the old home of these names)
    _AGGREGATE_WARNINGS,
    _MASK,
    _PREPARED_LOCK,
    PROBE_EXACT_PARTITIONS,
    READ_SPELLINGS,
    RECHECK_SPELLINGS,
    SCAN_MAX_PARTITIONS,
    SCAN_SPELLING,
    SHA256,
    PartitionAggregate,
    PartitionPrint,
    Prints,
    _aggregates,
    _cell_digest,
    _DropAggregateWarning,
    _elements,
    _plain,
    _planned,
    _prepare,
    _sha256_spellings,
    _sorted_merge,
    _writetime,
    aggregate_prints,
    aggregate_statement,
    merge_exact,
    merge_groups,
    partition_prints,
    present_partitions,
    scan_prints,
    spelled_statements,
)


def _prints(source: Session, target: Session, shape: TableShape, groups: Sequence[ReadGroup],
            opts: CopyOptions | None, max_writetime: int | None, exact: bool = False,
            target_aggregates: Callable[[], dict[tuple[Any, ...], PartitionAggregate] | None] | None = None,
            ) -> tuple[dict[tuple[Any, ...], PartitionPrint], dict[tuple[Any, ...], PartitionPrint]]:
    """Both sides' partition prints: Cassandra's aggregates (``_read_aggregates``), then the
    partitions they cannot settle re-read (``_settle``).
    ``target_aggregates``: returns the target's aggregates of exactly these groups' partitions,
    read by a scan (``scan_prints``), or None when the scan left them out.

    The paths hash differently (Cassandra's SHA-256, cell by cell here), so a chunk's total mixes
    them: comparable between the two sides of ONE call, not across calls. ``exact`` hashes every
    partition here (deterministic: for digests stored and compared later, like the rehearsal's
    baseline)."""
    if exact:
        return (partition_prints(source, shape, groups, opts, max_writetime),
                partition_prints(target, shape, groups, opts, max_writetime))
    agg_a, agg_b = _read_aggregates(source, target, shape, groups, opts, target_aggregates)
    return _settle(source, target, shape, agg_a, agg_b, opts, max_writetime)


def _read_aggregates(source: Session, target: Session, shape: TableShape, groups: Sequence[ReadGroup],
                     opts: CopyOptions | None,
                     target_aggregates: Callable[[], Prints | None] | None = None) -> tuple[Prints, Prints]:
    """Both sides' aggregates of ``groups``' partitions (SHA-256, race-free spellings): the source
    looked up; the target by ``target_aggregates`` (its scan) when given and when the scan covered
    them, else looked up too, both clusters at once."""
    scanned = None
    if target_aggregates is not None:
        agg_a = aggregate_prints(source, shape, groups, opts)
        scanned = target_aggregates()
    if scanned is not None:
        agg_b = scanned
    elif target_aggregates is not None:
        # The scan left these out (too many planned partitions): look them up like the source.
        agg_b = aggregate_prints(target, shape, groups, opts)
    else:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fingerprint-target") as pool:
            on_target = pool.submit(aggregate_prints, target, shape, groups, opts)
            agg_a = aggregate_prints(source, shape, groups, opts)
            agg_b = on_target.result()
    return agg_a, agg_b


def _settle(source: Session, target: Session, shape: TableShape, agg_a: Prints, agg_b: Prints,
            opts: CopyOptions | None, max_writetime: int | None,
            ) -> tuple[dict[tuple[Any, ...], PartitionPrint], dict[tuple[Any, ...], PartitionPrint]]:
    """Prints from both sides' aggregates, except for the partitions holding a cell newer than
    ``max_writetime`` on either side, re-read and hashed here with the watermark, and the
    partitions whose aggregates differ: asked again, both clusters at once, under the re-check's
    own spellings (``RECHECK_SPELLINGS``: race-free beside the next table's read), and hashed cell
    by cell here if they still differ. A difference is only ever reported from the cell-by-cell
    path (the aggregates are a fast filter, never the verdict on a mismatch)."""
    none = PartitionAggregate(0, 0, None)
    newer = {pk for pk in set(agg_a) | set(agg_b)
             if max_writetime is not None and any(p.newest is not None and p.newest > max_writetime
                                                  for p in (agg_a.get(pk, none), agg_b.get(pk, none)))}
    differ = {pk for pk in set(agg_a) | set(agg_b)
              if pk not in newer and agg_a.get(pk, none)[:2] != agg_b.get(pk, none)[:2]}
    if differ:
        # A difference in the aggregates is a real one, or a cell that changed between the two
        # reads, or the race of another process hashing on the node at the same moment: ask both
        # clusters again, at once; only those still differing are hashed here, cell by cell.
        again = [ReadGroup(tuple([v] for v in pk)) for pk in sorted(differ, key=repr)]
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fingerprint-recheck") as pool:
            asking = pool.submit(aggregate_prints, target, shape, again, opts, RECHECK_SPELLINGS, False)
            re_a = aggregate_prints(source, shape, again, opts, RECHECK_SPELLINGS, False)
            re_b = asking.result()
        for pk in list(differ):
            pa, pb = re_a.get(pk, none), re_b.get(pk, none)
            if pa[:2] == pb[:2] and (max_writetime is None or all(
                    p.newest is None or p.newest <= max_writetime for p in (pa, pb))):
                differ.discard(pk)
                for side, agg in ((agg_a, pa), (agg_b, pb)):
                    if agg.rows:
                        side[pk] = agg
                    else:
                        side.pop(pk, None)
    exact_pks = sorted(newer | differ, key=repr)
    reread = set(exact_pks)
    a = {pk: PartitionPrint(p.rows, p.digest) for pk, p in agg_a.items() if pk not in reread}
    b = {pk: PartitionPrint(p.rows, p.digest) for pk, p in agg_b.items() if pk not in reread}
    if exact_pks:
        groups_exact = [ReadGroup(tuple([v] for v in pk)) for pk in exact_pks]
        a.update(partition_prints(source, shape, groups_exact, opts, max_writetime))
        b.update(partition_prints(target, shape, groups_exact, opts, max_writetime))
    return a, b


def partition_label(shape: TableShape, pk: tuple[Any, ...]) -> str:
    """A readable partition name, e.g. ``readings(sensor_id=12, day=2026-01-02)``."""
    return f"{shape.table}(" + ", ".join(f"{c}={v}" for c, v in zip(shape.partition_key, pk, strict=True)) + ")"


@dataclass
class ChunkFingerprint:
    chunk_id: str
    table: str
    source_rows: int
    target_rows: int
    source_hash: str
    target_hash: str
    partitions: int  # partitions holding rows on either side
    mismatched: list[str] = field(default_factory=list)

    @property
    def match(self) -> bool:
        return not self.mismatched and self.source_rows == self.target_rows and self.source_hash == self.target_hash

    def record(self) -> dict[str, Any]:
        out = asdict(self)
        out["match"] = self.match
        out["mismatched_partitions"] = len(self.mismatched)
        return out


@dataclass
class FingerprintReport:
    chunks: list[ChunkFingerprint] = field(default_factory=list)
    partitions: list[dict[str, Any]] = field(default_factory=list)  # one record per mismatched partition

    @property
    def match(self) -> bool:
        return all(c.match for c in self.chunks)

    def records(self) -> list[dict[str, Any]]:
        """One flat record per chunk: ``pandas.DataFrame(report.records())``."""
        return [c.record() for c in self.chunks]

    def mismatched_partitions(self) -> list[str]:
        return [p for c in self.chunks for p in c.mismatched]


def compare_groups(source: Session, target: Session, shape: TableShape, groups: Sequence[ReadGroup], chunk_id: str,
                   opts: CopyOptions | None = None,
                   max_writetime: int | None = None, exact: bool = False,
                   ) -> tuple[ChunkFingerprint, list[dict[str, Any]]]:
    """Fingerprint the groups' partitions on both sides; name every partition that differs."""
    a, b = _prints(source, target, shape, groups, opts, max_writetime, exact)
    return _compare(a, b, shape, chunk_id)


def _compare(a: dict[tuple[Any, ...], PartitionPrint], b: dict[tuple[Any, ...], PartitionPrint], shape: TableShape,
             chunk_id: str) -> tuple[ChunkFingerprint, list[dict[str, Any]]]:
    empty = PartitionPrint(0, 0)
    bad: list[dict[str, Any]] = []
    for pk in sorted(set(a) | set(b), key=repr):
        pa, pb = a.get(pk, empty), b.get(pk, empty)
        if pa != pb:
            bad.append({"chunk_id": chunk_id, "table": shape.table, "partition": partition_label(shape, pk), "pk": pk,
                        "source_rows": pa.rows, "target_rows": pb.rows,
                        "source_hash": f"{pa.digest:016x}", "target_hash": f"{pb.digest:016x}"})
    fp = ChunkFingerprint(
        chunk_id, shape.table,
        sum(p.rows for p in a.values()), sum(p.rows for p in b.values()),
        f"{sum(p.digest for p in a.values()) & _MASK:016x}", f"{sum(p.digest for p in b.values()) & _MASK:016x}",
        len(set(a) | set(b)), [r["partition"] for r in bad],
    )
    return fp, bad


# Chunks are read in batches of up to this many planned partitions: one pipelined stream of reads
# per side and batch, instead of one per chunk (each chunk's stream drained its last requests
# before the next began: 15 drains per catch-up gate on the demo plan), then split per chunk.
BATCH_PARTITIONS = 200_000


@dataclass
class _Read:
    """One distinct read of a table: its groups, their partitions (plain keys) and the chunks it
    stands for (several when ``days`` makes chunks of different day windows read the same)."""

    groups: list[ReadGroup]
    partitions: set[tuple[Any, ...]]
    chunks: list[Chunk] = field(default_factory=list)


def _reads(members: Sequence[Chunk], shape: TableShape, day_column: str | None, opts: CopyOptions,
           days: Sequence[date] | None) -> list[_Read]:
    reads: dict[str, _Read] = {}
    for chunk in members:
        groups = read_groups(chunk.bounds, shape.partition_key, day_column, opts.in_limit, days)
        # With ``days`` the plan's day windows no longer matter: chunks of the same bases in
        # different windows read the very same partitions, once (half the reads on the demo plan).
        key = repr([g.values for g in groups]) if days is not None else chunk.chunk_id
        if key not in reads:
            reads[key] = _Read(groups, _planned(groups))
        reads[key].chunks.append(chunk)
    return list(reads.values())


# A day-bucketed read of a few recent days (the catch-up gates) can scan the target too, filtered on
# the day column: the scan then walks every partition key the target holds (all days) but reads only
# the recent buckets, ~3 us per partition key skipped against ~45 us per look-up (measured: today's
# 119,796 planned partitions of the demo dataset's big tenant, 0.11 s scanned against 5.3 s looked
# up). So it scans while the target holds at most this many partitions per recent one: the
# partitions the copy found holding rows when the caller knows them (``held``), else every planned
# one (a plan over months of retention whose buckets are mostly empty is then looked up).
RECENT_SCAN_FACTOR = 12


def _scan_target(target: Session, shape: TableShape, reads: Sequence[_Read], opts: CopyOptions,
                 day_column: str | None = None, days: Sequence[date] | None = None,
                 planned_total: int | None = None) -> Prints | None:
    """The target's aggregates of every partition ``reads`` plan, in one scan of the table (None
    above ``SCAN_MAX_PARTITIONS`` planned partitions, or -- reading ``days`` only -- when the table
    holds more than ``RECENT_SCAN_FACTOR`` partitions per recent one: look-ups are cheaper)."""
    wanted: set[tuple[Any, ...]] = set()
    for r in reads:
        wanted |= r.partitions
        if len(wanted) > SCAN_MAX_PARTITIONS:
            return None
    if days is not None and day_column is not None and planned_total is not None \
            and planned_total > RECENT_SCAN_FACTOR * max(len(wanted), 1):  # planned_total: held, if known
        return None
    return scan_prints(target, shape, wanted, opts, day_column=day_column, days=days)


def _restrict(scanning: Future[Prints | None], wanted: set[tuple[Any, ...]]) -> Prints | None:
    scan = scanning.result()
    return None if scan is None else {pk: v for pk, v in scan.items() if pk in wanted}


def _batches(reads: Sequence[_Read], limit: int) -> list[list[_Read]]:
    out: list[list[_Read]] = []
    size = 0
    for r in reads:
        if not out or size + len(r.partitions) > limit:
            out.append([])
            size = 0
        out[-1].append(r)
        size += len(r.partitions)
    return out


def fingerprint_chunks(source: Session, target: Session, tmap: TenantMap, chunks: Sequence[Chunk],
                       opts: CopyOptions | None = None, days: Sequence[date] | None = None,
                       max_writetime: int | None = None, exact: bool = False,
                       scan_target: bool = False, held: dict[str, int] | None = None) -> FingerprintReport:
    """Fingerprints of ``chunks`` (optionally only the buckets ``days`` of day-bucketed tables, and
    only cells written at or before ``max_writetime``). ``exact``: every partition hashed cell by
    cell here, so the digests can be stored and compared with a later call's (see ``_prints``).
    ``scan_target``: the target holds the tenant only, so read its side in one scan per table
    (``scan_prints``) instead of a look-up per planned partition; with ``days``, a scan filtered on
    the day column, while the plan covers few enough days to make that cheaper
    (``RECENT_SCAN_FACTOR``; ``held``: per table, how many partitions the target holds -- the copy's
    counts in the ledger --, a cost estimate only, never what is compared)."""
    opts = opts or CopyOptions()
    report = FingerprintReport()
    tables: dict[str, list[Chunk]] = {}
    for chunk in chunks:
        tables.setdefault(chunk.table_name, []).append(chunk)
    plans = []
    for table, members in tables.items():
        shape = table_shape(source, tmap.keyspace, table)
        day_column = tmap.cassandra_tables[table].day_column
        # Partitions the chunks plan over all their days: what a scan of the target walks.
        total = sum(planned_count(c.bounds, day_column) for c in members)
        if held is not None and table in held:
            total = min(total, held[table])
        plans.append((shape, day_column, total, _reads(members, shape, day_column, opts, days)))
    # The largest table first: the others' reads then run while its partitions are settled.
    plans.sort(key=lambda p: -p[2])
    fps: dict[str, ChunkFingerprint] = {}

    def compare(shape: TableShape, batch: list[_Read], a: dict[tuple[Any, ...], PartitionPrint],
                b: dict[tuple[Any, ...], PartitionPrint]) -> None:
        for r in batch:
            # Each side's partitions holding rows (most planned ones hold none) that this read
            # plans: the intersection walks the smaller of the two.
            pa = {pk: a[pk] for pk in a.keys() & r.partitions}
            pb = {pk: b[pk] for pk in b.keys() & r.partitions}
            fp, bad = _compare(pa, pb, shape, r.chunks[0].chunk_id)
            report.partitions += bad
            for chunk in r.chunks:
                fps[chunk.chunk_id] = replace(fp, chunk_id=chunk.chunk_id, mismatched=list(fp.mismatched))

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fingerprint-scan") as pool, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="fingerprint-settle") as settling:
        # Every table's scan queued at once, one after the other on the target, while the source
        # is read table by table (two clusters, each at its own pace).
        scans = ([pool.submit(_scan_target, target, shape, reads, opts, day_column, days, total)
                  for shape, day_column, total, reads in plans]
                 if scan_target and not exact else [None] * len(plans))
        settled: list[tuple[TableShape, list[_Read], Future[tuple[dict[tuple[Any, ...], PartitionPrint],
                                                                   dict[tuple[Any, ...], PartitionPrint]]]]] = []
        for (shape, _, _, reads), scanning in zip(plans, scans, strict=True):
            for batch in _batches(reads, BATCH_PARTITIONS):
                groups = [g for r in batch for g in r.groups]
                if scanning is None:  # no scan in this call: each batch read and settled here
                    compare(shape, batch, *_prints(source, target, shape, groups, opts, max_writetime, exact))
                    continue
                wanted = set().union(*(r.partitions for r in batch))
                agg_a, agg_b = _read_aggregates(source, target, shape, groups, opts, partial(_restrict, scanning, wanted))
                # Settled on one worker (its re-checks never overlap each other) while the next
                # table is read here: the two keep to their own spellings, no race between them.
                settled.append((shape, batch, settling.submit(_settle, source, target, shape, agg_a, agg_b,
                                                              opts, max_writetime)))
        for shape, batch, future in settled:
            compare(shape, batch, *future.result())
    report.chunks = [fps[c.chunk_id] for c in chunks]
    return report


def foreign_bases(session: Session, shape: TableShape, base_columns: Sequence[str], owned: set[tuple[Any, ...]],
                  limit: int = 20) -> tuple[int, int, list[tuple[str, tuple[Any, ...]]]]:
    """On a cluster that should hold one tenant only (the target): its partitions of ``shape`` whose
    base key (``base_columns``, the partition key without the day bucket) is not in ``owned``.
    One paged ``SELECT DISTINCT`` of the partition keys (the first row of each partition is read,
    not the partition). Returns (partitions read, foreign partitions, the first ``limit`` as
    (label, base key as the driver read it, dates plain) pairs, to look up whose they are)."""
    from cassandra.query import SimpleStatement

    pk = ", ".join(cql_ident(c) for c in shape.partition_key)
    where = [shape.partition_key.index(c) for c in base_columns]
    stmt = SimpleStatement(f"SELECT DISTINCT {pk} FROM {shape.qualified}", fetch_size=5000)
    seen = foreign = 0
    found: list[tuple[str, tuple[Any, ...]]] = []
    for row in session.execute(stmt):
        seen += 1
        base = _plain([row[i] for i in where])
        if base not in owned:
            foreign += 1
            if len(found) < limit:
                found.append((partition_label(shape, _plain(tuple(row))), base))
    return seen, foreign, found
