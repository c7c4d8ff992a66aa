"""Copying a tenant's Cassandra partitions, cell by cell, with their WRITETIME and remaining TTL.

Design note. Cassandra resolves conflicts last-write-wins by write timestamp. Every cell is written
on the target ``USING TIMESTAMP <source writetime> AND TTL <remaining ttl>``: a retry, a re-run or a
re-copy after the DNS flip is idempotent and never overwrites a newer value written directly on the
target (its timestamp is higher), and an expired cell is never resurrected (it is not returned by
the read, and a cell whose TTL runs out between read and write is dropped).

The engine is a pipeline in one thread plus the driver's I/O thread:

* reads: multi-partition ``IN`` queries (see ``plan``), at most ``read_concurrency`` in flight, each
  paged (``fetch_size`` + paging state, so a large partition never sits in memory whole); a page that
  fails with a timeout/unavailable/overloaded error is retried from its own paging state with
  exponential backoff and jitter;
* writes: prepared INSERTs (optionally grouped into single-partition UNLOGGED batches) sent with
  ``execute_async`` under a semaphore of ``concurrency`` permits: the reader blocks when the target
  falls behind (backpressure); failed writes are retried with backoff while holding their permit;
* a token bucket charged with rows read caps the run's rows/s on the shared source.

Non-frozen collections (ADR 11) hold a cell per element, each with its own WRITETIME and TTL: a
set's or a map's elements are added (``c = c + ?``) per group sharing both, which is idempotent; a
list is rewritten whole at its newest element's writetime, in one batch that keeps its order, unless
the target holds it at that time or later (a second append would double it). Such tables are read
through a session with the pure-Python decoder (``reader_for``).

Several processes (``CopyOptions.processes``) split the ledger's pending chunks between them: one
CPython process tops out at a few thousand to ~10 k writes/s, far below what the servers take.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Any

from tenant_migration import ledger
from tenant_migration.cassandra.pipeline import (  # noqa: F401  (the copy's API, in one place)
    CopyOptions,
    CopyStats,
    RetryExhausted,
    Writer,
    backoff_delay,
    iter_pages,
    ttl_age,
)
from tenant_migration.cassandra.plan import ENGINE, ReadGroup, copy_order, read_groups
from tenant_migration.cassandra.ratelimit import TokenBucket
from tenant_migration.cassandra.shape import (  # noqa: F401
    TableShape,
    collection_kind,
    cql_ident,
    newest,
    reader_for,
    shape_of,
    table_shape,
)
from tenant_migration.tenant_map import TenantMap

if TYPE_CHECKING:
    import psycopg
    from cassandra.cluster import Session

    from tenant_migration.endpoints import Endpoints
log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------- copier


def select_cells(session: Session, shape: TableShape) -> Any:
    """The read of every live cell of a group's partitions: the primary key, then for each regular
    column its value, WRITETIME and TTL (lists of them, per element, for a non-frozen collection:
    read those through ``reader_for``)."""
    meta_cols = ", ".join(f"{cql_ident(c)}, WRITETIME({cql_ident(c)}), TTL({cql_ident(c)})" for c in shape.regular)
    key_cols = ", ".join(cql_ident(c) for c in shape.primary_key)
    return session.prepare(f"SELECT {key_cols}, {meta_cols} FROM {shape.qualified} WHERE {shape.partitions_in}")


class ChunkCopier:
    """Copies the partitions of one table's chunks from ``source`` to ``target``."""

    def __init__(self, source: Session, target: Session, shape: TableShape, day_column: str | None,
                 opts: CopyOptions | None = None, limiter: TokenBucket | None = None) -> None:
        self.source = source
        self.target = target
        self.shape = shape
        self.day_column = day_column
        self.opts = opts or CopyOptions()
        self.limiter = limiter
        self.reader = reader_for(source, shape)
        self.select = select_cells(self.reader, shape)
        self._inserts: dict[tuple[str, ...], Any] = {}
        self._ttl_at: dict[int, int] = {}  # id of a prepared write -> where its TTL is among the params
        self._set_of_add: dict[int, Any] = {}  # id of a list's ``SET l = l + ?`` -> its ``SET l = ?``
        self._all_insert = self._insert_for(shape.regular)
        kinds = dict(shape.collections)
        # (index among the regular columns, kind) of the collections; the other columns' indexes.
        self._colls = tuple((i, kinds[c]) for i, c in enumerate(shape.regular) if c in kinds)
        self._scalars = tuple(i for i, c in enumerate(shape.regular) if c not in kinds)
        self._updates: dict[tuple[str, str], Any] = {}
        self._list_reads: Any = None

    def _update(self, column: str, op: str) -> Any:
        """``UPDATE ... USING TIMESTAMP ? AND TTL ? SET c = c + ?`` (``op`` "add") or ``SET c = ?``
        ("set"), keyed by the whole primary key."""
        stmt = self._updates.get((column, op))
        if stmt is None:
            c = cql_ident(column)
            where = " AND ".join(f"{cql_ident(k)} = ?" for k in self.shape.primary_key)
            stmt = self.target.prepare(f"UPDATE {self.shape.qualified} USING TIMESTAMP ? AND TTL ? "
                                       f"SET {c} = {c + ' + ?' if op == 'add' else '?'} WHERE {where}")
            self._updates[(column, op)] = stmt
            self._ttl_at[id(stmt)] = 1  # (writetime, ttl, value, *key)
            if op == "add":
                self._set_of_add[id(stmt)] = self._update(column, "set")
        return stmt

    def _target_list_times(self, keys: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """Per primary key, the target's newest writetime of each list column (None: no element)."""
        lists = [self.shape.regular[i] for i, k in self._colls if k == "list"]
        if self._list_reads is None:
            where = " AND ".join(f"{cql_ident(k)} = ?" for k in self.shape.primary_key)
            self._list_reads = self.target.prepare(
                f"SELECT {', '.join(f'MAXWRITETIME({cql_ident(c)})' for c in lists)} FROM {self.shape.qualified} "
                f"WHERE {where}")
        out: list[tuple[Any, ...]] = []
        for start in range(0, len(keys), self.opts.concurrency):
            futures = [self.target.execute_async(self._list_reads, k) for k in keys[start:start + self.opts.concurrency]]
            for fut in futures:
                row = fut.result().one()
                out.append(tuple(row) if row is not None else (None,) * len(lists))
        return out

    def _cell_writes(self, row: tuple[Any, ...], key: tuple[Any, ...], columns: Iterable[int], elapsed: int,
                     floor: int, watch: int | None, stats: CopyStats, late: list[int]) -> list[tuple[Any, Any]]:
        """The INSERTs of a row's ``columns`` (indexes among the regular ones), one per group of
        cells sharing a writetime and TTL; counts what is skipped (older than ``floor``, expired)
        and, with ``watch``, the cells written after it in ``late`` ([count, newest])."""
        nkey, regular = len(self.shape.primary_key), self.shape.regular
        groups_by: dict[tuple[int, int], list[int]] = {}
        for i in columns:
            wt, ttl_i = row[nkey + 3 * i + 1], row[nkey + 3 * i + 2]
            if wt is None:  # no live cell in this column
                continue
            if watch is not None and wt > watch:
                late[0] += 1
                late[1] = max(late[1], wt)
            ttl = _remaining_ttl(wt, ttl_i, elapsed, floor, stats)
            if ttl is not None:
                groups_by.setdefault((wt, ttl), []).append(i)
        writes = []
        for (wt, ttl), idx in groups_by.items():
            cols = tuple(regular[i] for i in idx)
            writes.append((self._insert_for(cols), (*key, *(row[nkey + 3 * i] for i in idx), wt, ttl)))
            stats.cells += len(idx)
        return writes

    def _collection_writes(self, row: tuple[Any, ...], key: tuple[Any, ...], elapsed: int, floor: int,
                           watch: int | None, stats: CopyStats, late: list[int]) -> tuple[list[tuple[Any, Any]],
                                                                                         list[tuple[int, list[Any]]]]:
        """The writes of a row of a table with collections: its other columns as the plain path
        writes them (grouped by writetime and TTL), each set or map as ``c = c + ?`` per group of
        elements sharing a writetime and TTL (idempotent: an element is a cell), and each list as
        a candidate (index, its live elements as (value, ttl)) with its newest writetime first:
        lists are written by ``_list_batches`` once the target's own is known."""
        nkey, regular = len(self.shape.primary_key), self.shape.regular
        writes = self._cell_writes(row, key, self._scalars, elapsed, floor, watch, stats, late)
        lists: list[tuple[int, list[Any]]] = []
        for i, kind in self._colls:
            value, wts, ttls = row[nkey + 3 * i], row[nkey + 3 * i + 1], row[nkey + 3 * i + 2]
            if value is None or wts is None:
                continue  # no live element (an empty non-frozen collection is no cell at all)
            elements = list(value.items()) if kind == "map" else list(value)
            ttls = ttls if ttls is not None else [None] * len(elements)
            if watch is not None:
                for wt in wts:
                    if wt > watch:
                        late[0] += 1
                        late[1] = max(late[1], wt)
            if kind == "list":
                if max(wts) < floor:
                    stats.skipped_older += len(elements)
                    continue
                live = []
                for element, ttl_i in zip(elements, ttls, strict=True):
                    ttl = _remaining_ttl(floor, ttl_i, elapsed, floor, stats)  # the list is not older
                    if ttl is not None:
                        live.append((element, ttl))
                if live:
                    lists.append((i, [max(wts), *live]))
                continue
            by: dict[tuple[int, int], list[Any]] = {}
            for element, wt, ttl_i in zip(elements, wts, ttls, strict=True):
                ttl = _remaining_ttl(wt, ttl_i, elapsed, floor, stats)
                if ttl is not None:
                    by.setdefault((wt, ttl), []).append(element)
            stmt = self._update(regular[i], "add")
            for (wt, ttl), items in by.items():
                writes.append((stmt, (wt, ttl, dict(items) if kind == "map" else set(items), *key)))
                stats.cells += len(items)
        return writes, lists

    def _list_batches(self, pending: list[tuple[tuple[Any, ...], list[tuple[int, list[Any]]], int]],
                      stats: CopyStats) -> list[tuple[list[tuple[Any, Any]], int]]:
        """One UNLOGGED batch per list of ``pending`` rows that the target lacks: ``SET l = ?`` with
        the first run of elements sharing a TTL, then ``SET l = l + ?`` per further run (a batch
        keeps their order), all at the list's newest writetime. The whole-list write drops older
        elements on the target (its tombstone is at that writetime - 1); a list the target holds
        at that writetime or later (this copy, done before, or the tenant's own newer write) is left
        alone: a second append of the same elements would double them. Each batch is a list of
        (statement, params) for the Writer, with the seconds already taken off its TTLs."""
        if not pending:
            return []
        list_cols = [i for i, k in self._colls if k == "list"]
        held = self._target_list_times([key for key, _, _ in pending])
        batches = []
        for (key, lists, elapsed), times in zip(pending, held, strict=True):
            for i, (wt, *live) in lists:
                theirs = times[list_cols.index(i)]
                if theirs is not None and theirs >= wt:
                    stats.skipped_older += len(live)
                    continue
                batch: list[tuple[Any, Any]] = []
                col = self.shape.regular[i]
                start = 0
                while start < len(live):
                    end = start
                    while end < len(live) and live[end][1] == live[start][1]:
                        end += 1
                    batch.append((self._update(col, "set" if start == 0 else "add"),
                                  (wt, live[start][1], [e for e, _ in live[start:end]], *key)))
                    start = end
                batches.append((batch, elapsed))
                stats.cells += len(live)
        return batches

    def _insert_for(self, cols: tuple[str, ...]) -> Any:
        stmt = self._inserts.get(cols)
        if stmt is None:
            all_cols = self.shape.primary_key + cols
            stmt = self.target.prepare(
                f"INSERT INTO {self.shape.qualified} ({', '.join(cql_ident(c) for c in all_cols)}) "
                f"VALUES ({', '.join('?' for _ in all_cols)}) USING TIMESTAMP ? AND TTL ?"
            )
            self._inserts[cols] = stmt
            self._ttl_at[id(stmt)] = -1  # (*key, *values, writetime, ttl)
        return stmt

    def _age(self, stmt: Any, params: Any, extra: int) -> tuple[Any, Any] | None:
        """The write (a prepared statement and its params, or a batch: a list of them) with
        ``extra`` seconds more taken off each TTL, the Writer's ``aging``: a statement whose cells
        expired in flight is left out (None: all of them). A list written as ``SET l = ?`` then
        ``l = l + ?`` runs stays a whole-list write when its first run expired: the next one sets it."""
        if not isinstance(stmt, list):
            return self._age_one(stmt, params, extra)
        items = [aged for one, args in stmt if (aged := self._age_one(one, args, extra)) is not None]
        if not items:
            return None
        if items[0][0] is not stmt[0][0] and id(items[0][0]) in self._set_of_add:
            items[0] = (self._set_of_add[id(items[0][0])], items[0][1])
        return items, None

    def _age_one(self, stmt: Any, params: Any, extra: int) -> tuple[Any, Any] | None:
        at = self._ttl_at[id(stmt)]
        ttl = params[at]
        if ttl == 0:  # no TTL on the source
            return stmt, params
        if ttl <= extra:
            return None
        aged = list(params)
        aged[at] = ttl - extra
        return stmt, tuple(aged)

    def copy_groups(self, groups: Sequence[ReadGroup], min_writetime: int | None = None,
                    watch_after: int | None = None) -> CopyStats:
        """Copy every live cell of the groups' partitions; cells with a writetime below
        ``min_writetime`` are skipped (they were copied by an earlier pass). With ``watch_after``
        (microseconds), also count the live cells written after it and the newest of them
        (``late_cells``, ``newest_writetime``): the drain's watch on writes after the flip."""
        started = time.monotonic()
        stats = CopyStats(self.shape.table, sum(_group_size(g) for g in groups), 0, 0, 0.0)
        writer = Writer(self.target, self.opts, aging=self._age)
        nkey, npk = len(self.shape.primary_key), len(self.shape.partition_key)
        regular = self.shape.regular
        nreg = len(regular)
        all_insert = self._all_insert
        batch_rows = self.opts.batch_rows
        seen: set[tuple[Any, ...]] = set()
        floor = min_writetime if min_writetime is not None else -(1 << 63)
        watching = watch_after is not None
        watch = watch_after if watch_after is not None else 1 << 63
        late = 0
        newest_wt = -(1 << 63)

        def on_retry() -> None:
            stats.retries += 1

        def flush(batch: list[tuple[Any, Any]], asked_at: float, elapsed: int) -> None:
            if len(batch) == 1:
                writer.submit(*batch[0], asked_at=asked_at, elapsed=elapsed)
            else:
                writer.submit(batch, asked_at=asked_at, elapsed=elapsed)
            stats.writes += 1

        throttled0 = self.limiter.waited if self.limiter else 0.0
        colls = bool(self._colls)
        tally = [0, -(1 << 63)]  # late cells and the newest of them, as _cell_writes counts them
        for page in iter_pages(self.reader, self.select, groups, read_concurrency=self.opts.read_concurrency,
                               fetch_size=self.opts.fetch_size, opts=self.opts, limiter=self.limiter,
                               on_retry=on_retry):
            read_at = page.asked_at  # the server read the page's TTLs after this, maybe long before now
            batch: list[tuple[Any, Any]] = []
            batch_pk: tuple[Any, ...] | None = None
            batch_elapsed = 0  # the least taken off the TTLs of the batch's writes (its first's)
            lists_pending: list[tuple[tuple[Any, ...], list[tuple[int, list[Any]]], int]] = []
            for row in page:
                stats.rows += 1
                pk = row[:npk]
                if pk not in seen:
                    seen.add(pk)
                key = row[:nkey]
                # Remaining TTL shrinks while the row is in flight: never let a cell outlive its source.
                # Taken off here as far as it is known (a page fetched ahead has waited while the one
                # before it was written: seen 6 s on a partition of 5,600 rows), and again by the
                # Writer for the seconds until the write is sent (queued behind others, retried).
                elapsed = ttl_age(read_at)
                if colls:
                    cwrites, lists = self._collection_writes(row, key, elapsed, floor, watch_after, stats, tally)
                    if lists:
                        lists_pending.append((key, lists, elapsed))
                    for w in cwrites:
                        writer.submit(*w, asked_at=read_at, elapsed=elapsed)
                        stats.writes += 1
                    continue
                wt0, ttl0 = row[nkey + 1], row[nkey + 2]
                uniform = all(row[nkey + 3 * i + 1] == wt0 and row[nkey + 3 * i + 2] == ttl0 for i in range(1, nreg))
                writes: list[tuple[Any, Any]] = []
                if uniform and wt0 is not None:
                    if watching and wt0 > watch:
                        late += nreg
                        newest_wt = max(newest_wt, wt0)
                    if wt0 < floor:
                        stats.skipped_older += nreg
                    else:
                        ttl = 0 if ttl0 is None else ttl0 - elapsed
                        if ttl0 is not None and ttl <= 0:
                            stats.skipped_expired += nreg
                        else:
                            writes.append((all_insert, (*key, *row[nkey::3], wt0, ttl)))
                            stats.cells += nreg
                else:
                    writes = self._cell_writes(row, key, range(nreg), elapsed, floor, watch_after, stats, tally)
                if not writes:
                    continue
                if batch_rows <= 1:
                    for w in writes:
                        writer.submit(*w, asked_at=read_at, elapsed=elapsed)
                        stats.writes += 1
                    continue
                if batch and (pk != batch_pk or len(batch) + len(writes) > batch_rows):
                    flush(batch, read_at, batch_elapsed)
                    batch = []
                if not batch:
                    batch_elapsed = elapsed
                batch_pk = pk
                batch.extend(writes)
            if batch:
                flush(batch, read_at, batch_elapsed)
            for list_batch, list_elapsed in self._list_batches(lists_pending, stats):
                writer.submit(list_batch, asked_at=read_at, elapsed=list_elapsed)
                stats.writes += 1
        writer.drain()
        stats.retries += writer.retries
        stats.skipped_expired += writer.expired
        stats.nonempty = len(seen)
        late += tally[0]
        newest_wt = max(newest_wt, tally[1])
        stats.late_cells = late
        stats.newest_writetime = newest_wt if late else None
        stats.throttled_seconds = (self.limiter.waited if self.limiter else 0.0) - throttled0
        stats.seconds = time.monotonic() - started
        return stats

    def copy_chunk(self, bounds: dict[str, Any], days: Sequence[date] | None = None,
                   min_writetime: int | None = None) -> CopyStats:
        groups = read_groups(bounds, self.shape.partition_key, self.day_column, self.opts.in_limit, days)
        return self.copy_groups(groups, min_writetime)


def _remaining_ttl(writetime: int, ttl: int | None, elapsed: int, floor: int, stats: CopyStats) -> int | None:
    """The TTL to write a cell with (0: none), or None when it is not copied: older than ``floor``
    (an earlier pass copied it) or expired while in flight (never outlive the source)."""
    if writetime < floor:
        stats.skipped_older += 1
        return None
    remaining = 0 if ttl is None else ttl - elapsed
    if ttl is not None and remaining <= 0:
        stats.skipped_expired += 1
        return None
    return remaining


def _group_size(group: ReadGroup) -> int:
    n = 1
    for values in group.values:
        n *= len(values)
    return n


# ----------------------------------------------------------------------------------- ledger runner


@dataclass
class CopyReport:
    """What ``copy_pending`` did: per-table totals and chunks copied, skipped (already done) or failed."""

    tables: dict[str, CopyStats] = field(default_factory=dict)
    chunks_done: list[str] = field(default_factory=list)
    chunks_failed: dict[str, str] = field(default_factory=dict)
    processes: int = 1
    seconds: float = 0.0

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.tables.values())

    def merge(self, other: CopyReport) -> None:
        for name, st in other.tables.items():
            if name in self.tables:
                self.tables[name].add(st)
            else:
                self.tables[name] = st
        self.chunks_done += other.chunks_done
        self.chunks_failed.update(other.chunks_failed)

    def to_dict(self) -> dict[str, Any]:
        return {"tables": {k: v.to_dict() for k, v in self.tables.items()}, "chunks_done": len(self.chunks_done),
                "chunks_failed": self.chunks_failed, "processes": self.processes, "seconds": round(self.seconds, 3),
                "rows": self.rows}


def copy_chunks(ep: Endpoints, run_id: str, tmap: TenantMap, chunks: Sequence[ledger.Chunk],
                opts: CopyOptions, rate_share: int = 1) -> CopyReport:
    """Copy ``chunks`` in order in this process, marking each in the ledger. A chunk is marked
    ``running`` before and ``done`` after all of its writes were acknowledged; a crash in between
    leaves it not done, and the re-copy is idempotent (last-write-wins on writetime)."""
    report = CopyReport()
    rate = opts.rows_per_second / rate_share if opts.rows_per_second else None
    limiter = TokenBucket(rate)
    copiers: dict[str, ChunkCopier] = {}
    # Autocommit: every ledger call below is its own transaction and is visible (and survives a
    # crash) at once; on a non-autocommit connection a prior read would turn them into savepoints
    # of one long transaction that a SIGKILL rolls back.
    with ep.target.connect(autocommit=True, application_name="tenant_migration_cql") as tconn, \
            ep.cassandra_sessions() as (src, dst):
        for chunk in chunks:
            if ledger.chunk_status(tconn, run_id, chunk.chunk_id) == ledger.ChunkStatus.DONE:
                continue
            ledger.mark_chunk_running(tconn, run_id, chunk.chunk_id)
            try:
                copier = copiers.get(chunk.table_name)
                if copier is None:
                    spec = tmap.cassandra_tables[chunk.table_name]
                    shape = table_shape(src, tmap.keyspace, chunk.table_name)
                    copier = copiers[chunk.table_name] = ChunkCopier(src, dst, shape, spec.day_column, opts, limiter)
                stats = copier.copy_chunk(chunk.bounds)
            except Exception as exc:
                ledger.mark_chunk_failed(tconn, run_id, chunk.chunk_id, f"{type(exc).__name__}: {exc}")
                report.chunks_failed[chunk.chunk_id] = f"{type(exc).__name__}: {exc}"[:500]
                raise
            with tconn.transaction():
                ledger.mark_chunk_done(tconn, run_id, chunk.chunk_id, stats.rows, 0, "", "", partitions=stats.nonempty)
            report.chunks_done.append(chunk.chunk_id)
            if chunk.table_name in report.tables:
                report.tables[chunk.table_name].add(stats)
            else:
                report.tables[chunk.table_name] = stats
    return report


def _worker(args: tuple[Endpoints, str, TenantMap, list[ledger.Chunk], CopyOptions, int]) -> CopyReport:
    ep, run_id, tmap, chunks, opts, share = args
    return copy_chunks(ep, run_id, tmap, chunks, opts, share)


def copy_pending(ep: Endpoints, run_id: str, tmap: TenantMap, opts: CopyOptions | None = None,
                 tconn: psycopg.Connection | None = None) -> CopyReport:
    """Copy every Cassandra chunk of ``run_id`` not yet ``done``, newest window first.

    With ``opts.processes > 1`` the chunks are dealt round-robin to that many spawned processes
    (each with its own driver sessions and ledger connection), so recent windows still go first in
    every process. Raises after all processes stopped if any chunk failed; the ledger names it.
    """
    opts = opts or CopyOptions()
    started = time.monotonic()
    if tconn is None:
        with ep.target.connect(autocommit=True) as conn:
            pending = ledger.pending_chunks(conn, run_id, ENGINE)
    else:
        pending = ledger.pending_chunks(tconn, run_id, ENGINE)
    chunks = copy_order(pending)
    nproc = max(1, min(opts.processes, len(chunks)))
    if nproc == 1:
        report = copy_chunks(ep, run_id, tmap, chunks, opts)
    else:
        ctx = multiprocessing.get_context("spawn")
        shares = [chunks[i::nproc] for i in range(nproc)]
        report = CopyReport()
        errors: list[str] = []
        with ctx.Pool(nproc) as pool:
            results = [pool.apply_async(_worker, ((ep, run_id, tmap, s, opts, nproc),)) for s in shares]
            for r in results:
                try:
                    report.merge(r.get())
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
        if errors:
            raise RuntimeError(f"cassandra copy failed in {len(errors)} process(es): {errors[0]}")
    report.processes = nproc
    report.seconds = time.monotonic() - started
    return report
