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

import hashlib
import logging
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import date
from functools import partial
from itertools import product
from typing import TYPE_CHECKING, Any, NamedTuple

from tenant_migration.cassandra.copy import CopyOptions, TableShape, cql_ident, iter_pages, table_shape
from tenant_migration.cassandra.plan import ReadGroup, planned_count, read_groups
from tenant_migration.ledger import Chunk
from tenant_migration.tenant_map import TenantMap

if TYPE_CHECKING:
    from cassandra.cluster import Session

_MASK = (1 << 64) - 1


_PREPARED: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()
_PREPARED_LOCK = threading.Lock()


def _prepare(session: Session, query: str) -> Any:
    """``session.prepare(query)``, once per session: a gate reads three tables on two clusters,
    up to 16 spellings each (one round trip per prepare otherwise)."""
    with _PREPARED_LOCK:
        known = _PREPARED.setdefault(session, {})
        stmt = known.get(query)
    if stmt is None:
        stmt = session.prepare(query)
        with _PREPARED_LOCK:
            known[query] = stmt
    return stmt


@dataclass(frozen=True)
class PartitionPrint:
    rows: int
    digest: int


def _cell_digest(key: tuple[Any, ...], column: str, value: Any, writetime: Any) -> int:
    blob = repr((key, column, value, writetime)).encode()
    return int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "big")


def partition_prints(session: Session, shape: TableShape, groups: Sequence[ReadGroup],
                     opts: CopyOptions | None = None, max_writetime: int | None = None) -> dict[tuple[Any, ...], PartitionPrint]:
    """Per partition that holds rows (plain keys, ``_plain``): (rows, digest). Partitions without
    rows are absent.

    With ``max_writetime`` (microseconds) only cells written at or before it count, and a row
    counts only if one of its cells does: the data as of a watermark, on a cluster that keeps
    taking writes (the copy carries WRITETIME, so both sides filter the same cells).
    """
    opts = opts or CopyOptions()
    cols = ", ".join(f"{cql_ident(c)}, {_writetime(shape, c)}" for c in shape.regular)
    kinds = [shape.kind(c) for c in shape.regular]
    where = shape.partitions_in
    key_cols = ", ".join(cql_ident(c) for c in shape.primary_key)
    stmt = _prepare(session, f"SELECT {key_cols}{', ' + cols if cols else ''} FROM {shape.qualified} WHERE {where}")
    npk, nkey = len(shape.partition_key), len(shape.primary_key)
    rows: dict[tuple[Any, ...], int] = {}
    digests: dict[tuple[Any, ...], int] = {}
    for page in iter_pages(session, stmt, groups, read_concurrency=opts.read_concurrency, fetch_size=opts.fetch_size,
                           opts=opts, retry_server_errors=True):
        for row in page:
            pk, key = _plain(row[:npk]), tuple(row[:nkey])
            d = digests.get(pk, 0)
            counted = not shape.regular
            for i, col in enumerate(shape.regular):
                value, wt = row[nkey + 2 * i], row[nkey + 2 * i + 1]
                if kinds[i] in ("set", "map") and wt is not None:
                    # Element by element: each has its own writetime, kept by the copy.
                    value, wt = _elements(value, wt, kinds[i] == "map", max_writetime)
                    if not wt:
                        continue
                elif max_writetime is not None and wt is not None and wt > max_writetime:
                    continue
                if wt is not None:
                    counted = True
                d += _cell_digest(key, col, value, wt)
            if not shape.regular:
                d += _cell_digest(key, "", None, None)
            if not counted:
                continue
            digests[pk] = d & _MASK
            rows[pk] = rows.get(pk, 0) + 1
    return {pk: PartitionPrint(rows[pk], digests[pk]) for pk in rows}


def _writetime(shape: TableShape, column: str) -> str:
    """The writetime a fingerprint compares: a cell's; each element's of a set or map (a list,
    compared as JSON server-side); a list's newest element's (the copy writes a list's elements
    at its newest writetime, see ``copy.ChunkCopier._list_batches``)."""
    c = cql_ident(column)
    return f"MAXWRITETIME({c})" if shape.kind(column) == "list" else f"WRITETIME({c})"


def _elements(value: Any, writetimes: list[int], is_map: bool,
              max_writetime: int | None) -> tuple[tuple[Any, ...], tuple[int, ...]]:
    """A set's or map's elements (map: items) and their writetimes as tuples, without those
    written after ``max_writetime``."""
    items = list(value.items()) if is_map else list(value)
    kept = [(e, w) for e, w in zip(items, writetimes, strict=True) if max_writetime is None or w <= max_writetime]
    return tuple(e for e, _ in kept), tuple(w for _, w in kept)


class PartitionAggregate(NamedTuple):
    rows: int
    digest: int
    newest: int | None  # the newest WRITETIME of any cell (None: no regular cell)


def _sha256_spellings() -> tuple[str, ...]:
    """Every name the JDK resolves to SHA-256 (``MessageDigest.getInstance`` ignores case and knows
    the ``SHA256`` alias and the OID), ``SHA-256`` first: 25 in all."""
    def cases(word: str) -> list[str]:
        return ["".join(p) for p in product(*[(c.upper(), c.lower()) if c.isalpha() else (c,) for c in word])]

    return (*cases("SHA-256"), *cases("SHA256"), *cases("OID.2.16.840.1.101.3.4.2.1"), "2.16.840.1.101.3.4.2.1")


# ``mask_hash`` keeps one MessageDigest per algorithm *name*, in a static map keyed by the name's
# bytes as the request gave it, shared by all of a node's threads (``HashMaskingFunction.DIGESTS``,
# Cassandra 5.0): two requests hashing under the same name at the same time can corrupt each
# other's hashes (210-305 of the demo tenant's 1,506 partitions at 16 requests in flight) or throw.
# The JDK resolves the name case-insensitively and by alias, so each spelling of SHA-256 below gets
# its own MessageDigest and the very same hash: every request in flight on a node gets a spelling
# of its own -- no race -- and every read's digests compare with every other's (scans, look-ups,
# re-checks, both clusters, any grouping). One process's reads keep to disjoint sets: the target's
# scans (one request at a time), a read's requests in flight, and the re-checks that run beside
# the next table's read. Another process hashing on the same node at the same moment can still
# race: a difference is never reported from the aggregates alone (see ``_settle``).
SHA256 = _sha256_spellings()
SCAN_SPELLING = SHA256[0]
READ_SPELLINGS = SHA256[1:17]
RECHECK_SPELLINGS = SHA256[17:]


def aggregate_statement(shape: TableShape, whole_table: bool = False, algorithm: str = SCAN_SPELLING,
                        day_column: str | None = None) -> str:
    """Per partition of an IN group (or, ``whole_table``, of the whole table -- only its partitions
    whose ``day_column`` is IN a bound list, when given): row count, summed row hashes (SHA-256,
    under ``algorithm``, one of its spellings ``SHA256``), newest writetime (server-side)."""
    if algorithm not in SHA256:
        raise ValueError(f"not a spelling of SHA-256: {algorithm!r}")
    pk = ", ".join(cql_ident(c) for c in shape.partition_key)
    parts = [cql_ident(c) for c in shape.clustering_key]
    for c in shape.regular:
        if shape.kind(c) is None:
            parts += [cql_ident(c), f"WRITETIME({cql_ident(c)})"]
        else:  # mask_hash takes no non-frozen collection (nor a list of writetimes): their JSON
            parts += [f"toJson({cql_ident(c)})", f"toJson({_writetime(shape, c)})"]
    row = parts[0] if len(parts) == 1 else "(" + ", ".join(parts) + ")"
    newest = "".join(f", max({'MAX' if shape.kind(c) else ''}WRITETIME({cql_ident(c)}))" for c in shape.regular)
    where = shape.partitions_in
    digest = f"sum(blobAsVarint(mask_hash({row}, '{algorithm}')))" if parts else "0"
    if whole_table and day_column is not None:
        return (f"SELECT {pk}, count(*), {digest}{newest} FROM {shape.qualified} WHERE {cql_ident(day_column)} IN ? "
                f"GROUP BY {pk} ALLOW FILTERING")
    return (f"SELECT {pk}, count(*), {digest}{newest} FROM {shape.qualified}"
            + ("" if whole_table else f" WHERE {where}") + f" GROUP BY {pk}")


_DATE: Any = None  # cassandra.util.Date, imported at the first key (the DAG parser never loads the driver)


def _plain(key: Sequence[Any]) -> tuple[Any, ...]:
    """A partition key read from Cassandra, comparable with the plan's: the driver returns ``date``
    columns as ``cassandra.util.Date``, the plan holds ``datetime.date`` (and the two never compare
    equal). The plan's own keys are plain already (``_planned``), and so are the keys of every
    print this module returns: converted once, as each row is read."""
    global _DATE
    if _DATE is None:
        from cassandra.util import Date

        _DATE = Date
    date_type = _DATE
    return tuple([v.date() if v.__class__ is date_type else v for v in key])


def _planned(groups: Iterable[ReadGroup]) -> set[tuple[Any, ...]]:
    """Every partition key ``groups`` name, as a set (plain values: ints, ``datetime.date``...)."""
    out: set[tuple[Any, ...]] = set()
    for g in groups:
        out.update(g.partitions())
    return out


_AGGREGATE_WARNINGS = ("Aggregation query used on multiple partition keys",
                       "Aggregation query used without partition key")


class _DropAggregateWarning(logging.Filter):
    """Cassandra warns on every aggregate over an IN of partitions or a whole table; here that is
    the point (one request for many small partitions, one scan of the tenant's own target), so
    the driver's log line per request is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(w in message for w in _AGGREGATE_WARNINGS)


logging.getLogger("cassandra.protocol").addFilter(_DropAggregateWarning())


def merge_groups(groups: Sequence[ReadGroup], max_partitions: int = 64) -> list[ReadGroup]:
    """Fewer, wider reads: consecutive groups' IN lists united while their cartesian product stays
    under ``max_partitions``. The product then also names partitions no group asked for (another
    device's property id, say): absent ones cost a look-up each, and the caller keeps only the
    partitions of ``groups`` (a wider read never lets another tenant's partition in). 64 measured
    best on the demo tenant (2.3 s against 2.9 s unmerged, 4.2 s at 1024)."""
    merged: list[ReadGroup] = []
    current: list[list[Any]] | None = None
    for g in groups:
        if current is None:
            current = [list(v) for v in g.values]
            continue
        union = [c + [v for v in new if v not in c] for c, new in zip(current, g.values, strict=True)]
        size = 1
        for col in union:
            size *= len(col)
        if size <= max_partitions:
            current = union
        else:
            merged.append(ReadGroup(tuple(current)))
            current = [list(v) for v in g.values]
    if current is not None:
        merged.append(ReadGroup(tuple(current)))
    return merged


# A probe (``present_partitions``) unites a partition's neighbours that differ in one column only --
# one device's properties over every day window of the plan -- into reads of up to this many
# partitions: exact (no partition nobody asked for), and fewer round trips. Over the demo tenant's
# 91-day plan (409 k planned partitions, 1,998 holding rows) post_copy's Cassandra part 7.6-8.8 s
# -> 5.7-6.3 s (512), 6.6 s (1024), 6.5 s (2048).
PROBE_EXACT_PARTITIONS = 512


def merge_exact(groups: Sequence[ReadGroup], max_partitions: int = PROBE_EXACT_PARTITIONS) -> list[ReadGroup]:
    """Consecutive groups equal in every IN list but one, united in that one while their product
    stays under ``max_partitions``: the same partitions in fewer reads, none added."""
    merged: list[ReadGroup] = []
    current: list[list[Any]] | None = None
    for g in groups:
        new = [list(v) for v in g.values]
        if current is not None:
            differ = [i for i, (a, b) in enumerate(zip(current, new, strict=True)) if a != b]
            if len(differ) == 1:
                i = differ[0]
                union = current[i] + [v for v in new[i] if v not in current[i]]
                size = len(union)
                for j, col in enumerate(current):
                    if j != i:
                        size *= len(col)
                if size <= max_partitions:
                    current[i] = union
                    continue
            merged.append(ReadGroup(tuple(current)))
        current = new
    if current is not None:
        merged.append(ReadGroup(tuple(current)))
    return merged


def spelled_statements(session: Session, shape: TableShape, spellings: Sequence[str]) -> tuple[Any, ...]:
    """``aggregate_statement`` prepared once per spelling, for ``iter_pages`` to give every request
    in flight its own (no ``mask_hash`` race). Prepared at the same time (a round trip each: one
    after the other cost 19 ms per table and cluster in every gate that re-checked a partition)."""
    texts = [aggregate_statement(shape, algorithm=a) for a in spellings]
    with _PREPARED_LOCK:
        known = dict(_PREPARED.get(session, {}))
    missing = [t for t in texts if t not in known]
    if len(missing) > 1:
        with ThreadPoolExecutor(max_workers=len(missing), thread_name_prefix="prepare") as pool:
            known.update(zip(missing, pool.map(lambda text: _prepare(session, text), missing), strict=True))
    return tuple(known[t] if t in known else _prepare(session, t) for t in texts)


def _sorted_merge(groups: Iterable[ReadGroup]) -> list[ReadGroup]:
    # Sorted first: a device's groups from different chunks (the plan's day windows) become
    # neighbours and merge into one exact read, instead of each widening a merge with other
    # devices (the big tenant's source look-ups: 1,075,720 partitions in 26,760 requests, 19.7 s,
    # against 758,472 in 19,846, 15.6 s).
    return merge_groups(sorted(groups, key=lambda g: tuple(tuple(v) for v in g.values)))


def present_partitions(session: Session, shape: TableShape, merged: Sequence[ReadGroup],
                       wanted: set[tuple[Any, ...]], opts: CopyOptions) -> set[tuple[Any, ...]]:
    """The partitions of ``wanted`` (plain keys) that hold rows, found with ``SELECT DISTINCT`` of the
    partition key over the ``merged`` reads, unpaged (one row per partition holding data, nothing
    hashed). A look-up costs Cassandra less this way than under an aggregate: the demo tenant's
    17,972 planned partitions (1,506 holding rows) 0.25 s against 0.55 s aggregated, today's 4,493
    (none holding rows) 0.12 s against 0.17 s."""
    pk = ", ".join(cql_ident(c) for c in shape.partition_key)
    where = shape.partitions_in
    stmt = _prepare(session, f"SELECT DISTINCT {pk} FROM {shape.qualified} WHERE {where}")
    present: set[tuple[Any, ...]] = set()
    for page in iter_pages(session, stmt, merged, read_concurrency=opts.read_concurrency, fetch_size=None,
                           opts=opts, retry_server_errors=True):
        for row in page:
            key = _plain(row)
            if key in wanted:
                present.add(key)
    return present


def aggregate_prints(session: Session, shape: TableShape, groups: Sequence[ReadGroup],
                     opts: CopyOptions | None = None, spellings: Sequence[str] = READ_SPELLINGS,
                     probe: bool = True) -> dict[tuple[Any, ...], PartitionAggregate]:
    """Per partition of ``groups`` that holds rows: (rows, digest, newest writetime), computed by
    Cassandra, in merged reads (a request's round trip, not the data, is what costs here).

    ``probe``: first find the partitions holding rows (``present_partitions``: most planned
    partitions are empty -- a device's property reports on some days only, today's buckets before
    the devices wrote), then aggregate those only, a device's present partitions per read. Off for
    reads of partitions known to hold rows (the re-check of differing ones). A partition created
    between the two reads is left out: its cells are all newer than the probe, later than any
    watermark a gate compares at (and the target's side of it, if any, makes it differ: re-read).

    SHA-256 throughout (comparable with ``scan_prints`` and with any other read), every request in
    flight under its own spelling of ``spellings``: at most that many in flight, race-free while
    no other read on the node uses the same spellings at the same time."""
    opts = opts or CopyOptions()
    npk = len(shape.partition_key)
    wanted = _planned(groups)
    merged = _sorted_merge(groups)
    spelled = spellings[:max(1, min(len(spellings), len(merged)))]
    if probe:
        # The aggregate's statements are prepared (a round trip each) while the probe reads.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare-aggregate") as pool:
            preparing = pool.submit(spelled_statements, session, shape, spelled)
            probes = merge_groups(merge_exact(sorted(groups, key=lambda g: tuple(tuple(v) for v in g.values))))
            wanted = present_partitions(session, shape, probes, wanted, opts)
            prepared = preparing.result()
        if not wanted:
            return {}
        merged = _sorted_merge(ReadGroup(tuple([v] for v in pk)) for pk in wanted)
        stmt = prepared[:len(merged)]
    else:
        stmt = spelled_statements(session, shape, spelled)
    concurrency = min(opts.read_concurrency, len(stmt))
    # retry_server_errors: mask_hash's race sometimes throws on the server (``copy._server_failure``).
    # Unpaged: the answer is one row per partition of a read (a few hundred at most), and the
    # server aggregates in its own internal pages whatever the client asks; a client page size
    # only added a paging round per request (catch-up gate's recent look-ups 0.34 -> 0.29 s,
    # median of 6).
    return _aggregates(iter_pages(session, stmt, merged, read_concurrency=concurrency,
                                  fetch_size=None, opts=opts, retry_server_errors=True), npk, wanted)


def _aggregates(pages: Iterable[list[tuple[Any, ...]]], npk: int,
                wanted: set[tuple[Any, ...]]) -> dict[tuple[Any, ...], PartitionAggregate]:
    """``aggregate_statement``'s rows, by partition key (plain, ``_plain``), for the partitions in
    ``wanted`` holding rows."""
    out: dict[tuple[Any, ...], PartitionAggregate] = {}
    for page in pages:
        for row in page:
            if not row[npk]:
                continue
            pk = _plain(row[:npk])
            if pk not in wanted:
                continue
            times = [t for t in row[npk + 2:] if t is not None]
            out[pk] = PartitionAggregate(int(row[npk]), int(row[npk + 1] or 0) & _MASK, max(times) if times else None)
    return out


# The whole-table scan of the target (``scan_prints``) keeps every partition's aggregate in memory
# until the chunks are compared (~250 bytes each): above this many planned partitions the gate
# reads the target partition by partition instead, like the source.
SCAN_MAX_PARTITIONS = 2_000_000


def scan_prints(session: Session, shape: TableShape, wanted: set[tuple[Any, ...]],
                opts: CopyOptions | None = None, day_column: str | None = None,
                days: Sequence[date] | None = None) -> dict[tuple[Any, ...], PartitionAggregate]:
    """Per partition of the whole table that is in ``wanted`` (plain keys, see ``_plain``): (rows,
    digest, newest writetime), computed by Cassandra in ONE paged scan.

    For a cluster that holds the tenant only (the target): the partitions the plan names are then
    read in token order, without a look-up per planned partition (most of a plan's day buckets
    are empty: 1,506 of 17,972 held rows on the demo tenant) -- 0.6 s against 1.1 s of ``IN``
    reads there. One request in flight, under ``SCAN_SPELLING`` (no other read of this process uses
    it): one spelling hashed by two requests at once gives wrong hashes (4 parallel token ranges
    under one name: 244 of 1,506 partitions differed from a serial scan).

    ``day_column`` and ``days``: only the partitions of those day buckets are aggregated (the scan
    still walks every partition key of the table, skipping the others without reading them)."""
    opts = opts or CopyOptions()
    if day_column is None or days is None:
        day_column, group = None, ReadGroup(())
    else:
        group = ReadGroup((list(days),))
    stmt = _prepare(session, aggregate_statement(shape, whole_table=True, day_column=day_column))
    return _aggregates(iter_pages(session, stmt, [group], read_concurrency=1, fetch_size=opts.fetch_size,
                                  opts=opts, retry_server_errors=True), len(shape.partition_key), wanted)


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
    """A readable partition name, e.g. ``datapoints(device_id=12, property_id=5, day=2026-01-02)``."""
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
            bad.append({"chunk_id": chunk_id, "table": shape.table, "partition": partition_label(shape, pk),
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

Prints = dict[tuple[Any, ...], PartitionAggregate]


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


def foreign_partitions(session: Session, shape: TableShape, base_columns: Sequence[str],
                       owned: set[tuple[Any, ...]], limit: int = 20) -> tuple[int, int, list[str]]:
    """On a cluster that should hold one tenant only (the target): its partitions of ``shape`` whose
    base key (``base_columns``, the partition key without the day bucket) is not in ``owned``.
    One paged ``SELECT DISTINCT`` of the partition keys (the first row of each partition is read,
    not the partition). Returns (partitions read, foreign partitions, the first ``limit`` named)."""
    seen, foreign, found = foreign_bases(session, shape, base_columns, owned, limit)
    return seen, foreign, [label for label, _ in found]


def foreign_bases(session: Session, shape: TableShape, base_columns: Sequence[str], owned: set[tuple[Any, ...]],
                  limit: int = 20) -> tuple[int, int, list[tuple[str, tuple[Any, ...]]]]:
    """``foreign_partitions`` with each of the first ``limit`` foreign partitions' base key (as
    the driver read it, dates plain): (label, base) pairs, to look up whose they are."""
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
