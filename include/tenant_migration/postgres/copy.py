"""Copying one chunk of a tenant's rows from the detached replica to the target.

Invariant (ADR 3): the chunk's target rows (its key range AND the tenant predicate, evaluated on
the target) are deleted, re-loaded and the chunk marked ``done`` in ONE target transaction. A
crash or kill at any point rolls back to the complete old chunk; a commit gives the complete new
one. A retry therefore never doubles or loses rows.

Fast path, and why it looks like this: pushing COPY bytes through a Python loop costs ~1.4x the
raw ``psql | psql`` pipe (docs/benchmarks.md), so Python stays out of the byte path. Per chunk:

* a source ``psql`` runs ``COPY (chunk rows) TO STDOUT (FORMAT binary)``; its bytes pass through
  ``tm-rowsum --tee`` (C, ``rowsum.c``), which counts the rows and sums a 64-bit hash of each
  row's bytes (order-independent) on their way to the target. The replica is read ONCE per
  chunk: a separate checksum query re-deriving the tenant's rows (semi-joins up to three hops)
  cost a third of the copy (``postgres_copy_ratio`` 0.59-0.65 with it);
* the target side is verified over the chunk's whole key range, not through the tenant
  predicate: the target is the tenant's dedicated deployment, so every row in the range must be
  one of the replica's tenant rows. That is stricter (a row of another tenant in the range fails
  the chunk instead of being ignored), needs no parent rows on the target (chunks of different
  tables may run in any order; a child copied before its parents still verifies) and skips the
  semi-joins (3x cheaper for the sample platform's three-hop table). The DELETE keeps the tenant
  predicate: it never removes rows that are not the tenant's;
* its stdout is the stdin of a target ``psql`` whose script arrives on a separate pipe:
  ``BEGIN; SET LOCAL session_replication_role = replica; lock the ledger row; DELETE the chunk;
  \\copy ... from pstdin`` first, then -- only once the source finished cleanly and its checksum is
  known -- the target's check, in the same transaction: ``\\copy (the chunk's key range) to
  program 'tm-rowsum'`` (the rows as the target now holds them, through the same binary encoding
  and hash), ``SELECT tm_control.complete_chunk(...)`` (compares both counts and checksums,
  raises on any difference, marks done) and ``COMMIT``. If we die before writing that epilogue, the script pipe
  reaches EOF, psql exits without COMMIT and the server rolls the chunk back: there is no implicit
  commit anywhere (no ``psql -1``).

Passwords reach psql through ``PGPASSWORD`` in its environment, never argv; identifiers are
quoted with ``psycopg.sql`` and literals rendered by the driver (``ClientCursor.mogrify``).

The apply runs with ``session_replication_role = replica``: the platform's triggers do not fire
(``updated_at`` keeps the source's value; the registration check does not refuse copied rows) and
foreign keys are not checked row by row (the post-copy gate checks orphans instead).
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import psycopg
from psycopg import sql

from tenant_migration import ledger
from tenant_migration.endpoints import PgEndpoint
from tenant_migration.postgres import rowsum
from tenant_migration.postgres.catalog import columns, schema_drift
from tenant_migration.postgres.planner import ENGINE, chunk_predicate, plan_postgres, range_predicate
from tenant_migration.tenant_map import TenantMap

PG_BIN_DEFAULT = Path("/usr/lib/postgresql/15/bin")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChunkResult:
    chunk_id: str
    table: str
    rows: int
    bytes: int
    seconds: float
    source_checksum: str
    target_checksum: str
    skipped: bool = False


class ChecksumMismatch(RuntimeError):
    """Source and target disagree on a chunk after the copy (the chunk was rolled back)."""


class ChunkCopyError(RuntimeError):
    """A chunk could not be copied (the chunk was rolled back; the ledger says why)."""


class SchemaDrift(RuntimeError):
    """Source and target tables differ; nothing was written."""


# ------------------------------------------------------------------------------------ checksums


def row_hash(cols: Sequence[str], alias: str = "t", text_cols: frozenset[str] = frozenset()) -> sql.Composed:
    """A 64-bit hash of one row, built from each column's own hash support.

    ``hash_record_extended`` (PostgreSQL 14+) hashes the typed values directly, with no text
    rendering: measured 6x cheaper than md5 of the row's text (0.63 s vs 3.8 s for 1.2 M
    ``properties`` rows), which matters because the checksum runs on both sides of every chunk.
    Hash functions are stable across versions and platforms (hash partitioning depends on it).
    Columns whose type has no hash support (json, point, ...) go in ``text_cols`` and are hashed
    through their text form.
    """
    parts = []
    for c in cols:
        ref = sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(c))
        parts.append(sql.SQL("{}::text").format(ref) if c in text_cols else ref)
    return sql.SQL("hash_record_extended(ROW({}), 0)").format(sql.SQL(", ").join(parts))


def unhashable_columns(conn: psycopg.Connection, schema: str, table: str, cols: Sequence[str]) -> frozenset[str]:
    """Columns whose type has no extended hash function (asked of the server, per column, on a
    NULL of the column's own type: the type cache raises before any row is read)."""
    whole = sql.SQL("SELECT hash_record_extended(ROW({}), 0)").format(sql.SQL(", ").join(
        sql.SQL("(SELECT t.{} FROM {} AS t LIMIT 0)").format(sql.Identifier(c), sql.Identifier(schema, table))
        for c in cols))
    try:
        with conn.transaction():
            conn.execute(whole)
        return frozenset()
    except psycopg.errors.UndefinedFunction:
        pass
    out = set()
    for c in cols:
        probe = sql.SQL("SELECT hash_record_extended(ROW((SELECT t.{} FROM {} AS t LIMIT 0)), 0)").format(
            sql.Identifier(c), sql.Identifier(schema, table))
        try:
            with conn.transaction():
                conn.execute(probe)
        except psycopg.errors.UndefinedFunction:
            out.add(c)
    return frozenset(out)


def checksum_query(
    tmap: TenantMap,
    table: str,
    cols: list[str],
    bounds: dict[str, Any] | None = None,
    text_cols: frozenset[str] = frozenset(),
    *,
    whole_range: bool = False,
) -> sql.Composed:
    """Row count and an order-independent checksum (``count:sum``) of the tenant's rows of
    ``table``, restricted to a chunk's key range when ``bounds`` is given.

    Per-row hashes are summed (as numeric: no overflow), so equal multisets of rows give equal
    sums whatever the physical order. One ``%(tenant_id)s`` placeholder (none with
    ``whole_range``: every row in the key range counts, whoever it belongs to -- used on the
    dedicated target, see ``ChunkCopier``).
    """
    if whole_range:
        assert bounds is not None
        pred = range_predicate(bounds)
    else:
        pred = chunk_predicate(tmap, table, bounds) if bounds is not None else tmap.tenant_predicate(table)
    return sql.SQL(
        "SELECT count(*), count(*)::text || ':' || COALESCE(sum({}::numeric), 0)::text FROM {} AS t WHERE {}"
    ).format(row_hash(cols, "t", text_cols), tmap.qualified(table), pred)


def table_checksum(conn: psycopg.Connection, tmap: TenantMap, table: str, tenant_id: int) -> tuple[int, str]:
    cols = [c for c, _ in columns(conn, tmap.schema, table)]
    text_cols = unhashable_columns(conn, tmap.schema, table, cols)
    row = conn.execute(checksum_query(tmap, table, cols, None, text_cols), {"tenant_id": tenant_id}).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


def chunk_checksum(
    conn: psycopg.Connection, tmap: TenantMap, chunk: ledger.Chunk, tenant_id: int, *, whole_range: bool = False
) -> tuple[int, str]:
    """Count and checksum of one chunk's rows as ``conn`` sees them: the tenant's rows in the
    chunk's range (the replica), or every row in the range (``whole_range``: the target)."""
    cols = [c for c, _ in columns(conn, tmap.schema, chunk.table_name)]
    text_cols = unhashable_columns(conn, tmap.schema, chunk.table_name, cols)
    q = checksum_query(tmap, chunk.table_name, cols, chunk.bounds, text_cols, whole_range=whole_range)
    row = conn.execute(q, {"tenant_id": tenant_id}).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


# ------------------------------------------------------------------------------------ psql plumbing


def psql_binary() -> str:
    """``$TM_PG_BIN/psql``, Debian's PostgreSQL 15 psql (no wrapper start-up cost), or ``psql``."""
    for folder in (os.environ.get("TM_PG_BIN"), str(PG_BIN_DEFAULT)):
        if folder and (Path(folder) / "psql").exists():
            return str(Path(folder) / "psql")
    found = shutil.which("psql")
    if not found:
        raise ChunkCopyError("psql not found (install postgresql-client or set TM_PG_BIN)")
    return found


def libpq_env(ep: PgEndpoint, application_name: str) -> dict[str, str]:
    """The environment of one psql: our endpoint only (inherited PG* variables dropped), the
    password in PGPASSWORD so that it never appears in a process listing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(
        PGHOST=ep.host, PGPORT=str(ep.port), PGUSER=ep.user, PGPASSWORD=ep.password, PGDATABASE=ep.dbname,
        PGAPPNAME=application_name, PGCONNECT_TIMEOUT="10", PGCLIENTENCODING="UTF8",
    )
    return env


def _render(conn: psycopg.Connection, query: sql.Composed | sql.SQL, params: dict[str, Any] | None = None) -> str:
    """SQL text with identifiers quoted and parameters rendered as literals by the driver."""
    text = psycopg.ClientCursor(conn).mogrify(query, params) if params else query.as_string(conn)
    if "\n" in text:
        text = " ".join(text.splitlines())
    return text


def _stderr_text(fh: IO[bytes]) -> str:
    fh.seek(0)
    return fh.read().decode(errors="replace").strip()


# ------------------------------------------------------------------------------------ copier


class ChunkCopier:
    """Copies planned chunks of one run from the replica to the target.

    Holds two connections: the target (ledger) and the replica in autocommit (catalog, snapshot
    checks). Use as a context manager.
    """

    def __init__(
        self,
        replica_ep: PgEndpoint,
        target_ep: PgEndpoint,
        tmap: TenantMap,
        run_id: str,
        tenant_id: int,
        on_spawn: Callable[[int, int], None] | None = None,
    ) -> None:
        self.replica_ep = replica_ep
        self.target_ep = target_ep
        self.tmap = tmap
        self.run_id = run_id
        self.tenant_id = tenant_id
        self.on_spawn = on_spawn  # test hook: (source pid, target pid), chunk transaction open
        self.psql = psql_binary()
        self.rowsum = rowsum.command()
        self._columns: dict[str, list[str]] = {}

    def __enter__(self) -> ChunkCopier:
        self.target = self.target_ep.connect(application_name="tm_copy_ledger")
        self.replica = self.replica_ep.connect(autocommit=True, application_name="tm_copy_catalog")
        try:
            ledger.check_snapshot(self.target, self.run_id, self.replica_lsn())
            self.target.commit()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for conn in (self.replica, self.target):
            conn.close()

    def refuse_drift(self) -> None:
        """Binary COPY needs identical columns and types: refuse before writing anything."""
        problems = schema_drift(self.replica, self.target, self.tmap)
        self.target.commit()
        if problems:
            raise SchemaDrift("source and target differ, nothing was copied:\n  - " + "\n  - ".join(problems))

    def replica_lsn(self) -> str | None:
        """Where the replica's data stands, when it stands still: the replay LSN of a paused
        standby (local mode) or of a promoted one (static at the end of recovery: promote mode);
        None for a standby still replaying or a server that never was one (RDS without SQL
        access records no LSN, so its runs are not bound)."""
        row = self.replica.execute(
            "SELECT CASE WHEN NOT pg_is_in_recovery() OR pg_get_wal_replay_pause_state() = 'paused' "
            "THEN pg_last_wal_replay_lsn()::text END"
        ).fetchone()
        return row[0] if row else None

    def cols(self, table: str) -> list[str]:
        if table not in self._columns:
            self._columns[table] = [c for c, _ in columns(self.replica, self.tmap.schema, table)]
        return self._columns[table]

    def copy(self, chunk: ledger.Chunk) -> ChunkResult:
        """Copy one chunk (skipped when the ledger already says done)."""
        if ledger.chunk_status(self.target, self.run_id, chunk.chunk_id) == ledger.ChunkStatus.DONE:
            self.target.commit()
            return ChunkResult(chunk.chunk_id, chunk.table_name, 0, 0, 0.0, "", "", skipped=True)
        ledger.check_snapshot(self.target, self.run_id, self.replica_lsn())
        self.target.commit()
        ledger.mark_chunk_running(self.target, self.run_id, chunk.chunk_id)
        started = time.monotonic()
        try:
            result = self._copy(chunk)
        except Exception as exc:
            self.target.rollback()
            ledger.mark_chunk_failed(self.target, self.run_id, chunk.chunk_id, f"{type(exc).__name__}: {exc}")
            raise
        return ChunkResult(chunk.chunk_id, chunk.table_name, result[0], result[1],
                           time.monotonic() - started, result[2], result[3])

    def _copy(self, chunk: ledger.Chunk) -> tuple[int, int, str, str]:
        tm, table, params = self.tmap, chunk.table_name, {"tenant_id": self.tenant_id}
        cols = self.cols(table)
        col_list = sql.SQL(", ").join(sql.Identifier(c) for c in cols)
        t0 = time.monotonic()
        select = sql.SQL("SELECT {} FROM {} AS t WHERE {}").format(
            sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in cols),
            tm.qualified(table), chunk_predicate(tm, table, chunk.bounds),
        )
        source_cmd = [
            self.psql, "-X", "-q", "-v", "ON_ERROR_STOP=1",
            "-c", _render(self.replica, sql.SQL("COPY ({}) TO STDOUT (FORMAT binary)").format(select), params),
        ]
        prelude = "\n".join([
            r"\set ON_ERROR_STOP 1",
            "BEGIN;",
            "SET LOCAL session_replication_role = replica;",
            # The target's statistics lag far behind a bulk load (tables look empty until
            # autovacuum catches up), and nested-loop semi-joins over "empty" parents took 74 s
            # for a 1.6 k-row chunk in a measured run. Hash joins are right for bulk chunks anyway.
            "SET LOCAL enable_nestloop = off;",
            _render(self.target, sql.SQL(
                "SELECT 1 FROM tm_control.chunks WHERE run_id = {} AND chunk_id = {} FOR UPDATE NOWAIT;"
            ).format(sql.Literal(self.run_id), sql.Literal(chunk.chunk_id))),
            _render(self.target, sql.SQL("DELETE FROM {} AS t WHERE {};").format(
                tm.qualified(table), chunk_predicate(tm, table, chunk.bounds)), params),
            _render(self.target, sql.SQL(r"\copy {} ({}) from pstdin with (format binary)").format(
                tm.qualified(table), col_list)),
            "",
        ])
        workdir = Path(tempfile.mkdtemp(prefix="tm-chunk-"))
        script_r, script_w = os.pipe()
        procs: list[subprocess.Popen[bytes]] = []
        with tempfile.TemporaryFile() as src_err, tempfile.TemporaryFile() as tee_err, \
                tempfile.TemporaryFile() as dst_err:
            try:
                source = subprocess.Popen(source_cmd, stdout=subprocess.PIPE, stderr=src_err,
                                          stdin=subprocess.DEVNULL, env=libpq_env(self.replica_ep, "tm_copy_source"))
                procs.append(source)
                assert source.stdout is not None
                tee = subprocess.Popen([*self.rowsum, "--tee", "--out", str(workdir / "source.sum")],
                                       stdin=source.stdout, stdout=subprocess.PIPE, stderr=tee_err)
                procs.append(tee)
                source.stdout.close()
                assert tee.stdout is not None
                target = subprocess.Popen(
                    [self.psql, "-X", "-q", "-f", f"/dev/fd/{script_r}"],
                    stdin=tee.stdout, stdout=subprocess.DEVNULL, stderr=dst_err, pass_fds=(script_r,),
                    env=libpq_env(self.target_ep, "tm_copy_target"),
                )
                procs.append(target)
                tee.stdout.close()
            except BaseException:
                os.close(script_w)
                _kill(procs)
                shutil.rmtree(workdir, ignore_errors=True)
                raise
            finally:
                os.close(script_r)
            script = os.fdopen(script_w, "w")
            try:
                script.write(prelude)
                script.flush()
                if self.on_spawn is not None:
                    self.on_spawn(source.pid, target.pid)
                src_rc, tee_rc = source.wait(), tee.wait()
                if src_rc != 0 or tee_rc != 0:
                    # A target that failed first (lock taken, DELETE refused) breaks the pipe: say all.
                    dst_rc = target.poll()
                    raise ChunkCopyError(
                        f"{table} chunk {chunk.chunk_id}: source COPY failed: "
                        + "; ".join(filter(None, [
                            _stderr_text(src_err) if src_rc else "",
                            f"checksum tee: {_stderr_text(tee_err)}" if tee_rc else "",
                            f"target: {_stderr_text(dst_err)}" if dst_rc else "",
                        ]))
                    )
                src = rowsum.StreamSum.parse((workdir / "source.sum").read_text())
                t_src = time.monotonic()
                # The target's side: the chunk's whole key range read back inside the chunk's
                # transaction and hashed by the same tool; psql hands the result to
                # complete_chunk, which compares and marks done (or raises: nothing commits).
                readback = sql.SQL("SELECT {} FROM {} AS t WHERE {}").format(
                    sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in cols),
                    tm.qualified(table), range_predicate(chunk.bounds))
                program = _psql_quote(" ".join(shlex.quote(a) for a in
                                                [*self.rowsum, "--out", str(workdir / "target.sum")]))
                target_sum = sql.SQL(
                    "SELECT tm_control.complete_chunk({run}, {chunk}, {table}, {rows}, {sum}, "
                    "split_part(:'tm_target_sum', ':', 1)::bigint, split_part(:'tm_target_sum', ' ', 1), {bytes});"
                ).format(
                    run=sql.Literal(self.run_id), chunk=sql.Literal(chunk.chunk_id),
                    table=sql.Literal(f"{tm.schema}.{table}"), rows=sql.Literal(src.rows),
                    sum=sql.Literal(src.checksum), bytes=sql.Literal(src.bytes),
                )
                script.write("\n".join([
                    rf"\copy ({_render(self.target, readback)}) to program {program} with (format binary)",
                    rf"\set tm_target_sum `cat {shlex.quote(str(workdir / 'target.sum'))}`",
                    _render(self.target, target_sum),
                    "COMMIT;",
                    "",
                ]))
                script.close()
                rc = target.wait()
                log.debug("%s: source streamed %.3fs, target verified and committed %.3fs",
                          chunk.chunk_id, t_src - t0, time.monotonic() - t0)
            except BrokenPipeError:
                # The target psql quit before reading its whole script: its own error says why.
                rc = target.wait()
                _kill(procs)
                raise ChunkCopyError(
                    f"{table} chunk {chunk.chunk_id}: target apply failed (exit {rc}): {_stderr_text(dst_err)}"
                ) from None
            except BaseException:
                _kill(procs)
                raise
            finally:
                if not script.closed:
                    script.close()
                target_text = (workdir / "target.sum").read_text() if (workdir / "target.sum").exists() else ""
                shutil.rmtree(workdir, ignore_errors=True)
            if rc != 0:
                err = _stderr_text(dst_err)
                if "checksum mismatch" in err:
                    raise ChecksumMismatch(err.split("ERROR:", 1)[-1].strip().splitlines()[0])
                raise ChunkCopyError(f"{table} chunk {chunk.chunk_id}: target apply failed: {err}")
        dst = rowsum.StreamSum.parse(target_text)
        return src.rows, src.bytes, src.checksum, dst.checksum


def _kill(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _psql_quote(text: str) -> str:
    """A psql backslash-command argument in single quotes (psql doubles embedded quotes)."""
    return "'" + text.replace("'", "''") + "'"


# ------------------------------------------------------------------------------------ entry points


def copy_chunks(
    replica_ep: PgEndpoint, target_ep: PgEndpoint, tmap: TenantMap, run_id: str, tenant_id: int,
    chunk_ids: Sequence[str],
) -> list[ChunkResult]:
    """Copy planned chunks by id, in the given order (one mapped DAG task's batch). Safe to retry
    or clear: chunks already done are skipped. One copier (connections, drift check) serves the
    whole batch, so a batch of many small chunks does not pay that set-up per chunk."""
    with ChunkCopier(replica_ep, target_ep, tmap, run_id, tenant_id) as copier:
        chunks = [ledger.get_chunk(copier.target, run_id, chunk_id) for chunk_id in chunk_ids]
        copier.target.commit()
        copier.refuse_drift()
        return [copier.copy(chunk) for chunk in chunks]


def copy_chunk(
    replica_ep: PgEndpoint, target_ep: PgEndpoint, tmap: TenantMap, run_id: str, tenant_id: int, chunk_id: str
) -> ChunkResult:
    """Copy ONE planned chunk by id. Safe to retry or clear."""
    return copy_chunks(replica_ep, target_ep, tmap, run_id, tenant_id, [chunk_id])[0]


def copy_pending_chunks(
    replica_ep: PgEndpoint,
    target_ep: PgEndpoint,
    tmap: TenantMap,
    run_id: str,
    tenant_id: int,
    chunk_rows: int | None = None,
    on_spawn: Callable[[int, int], None] | None = None,
    workers: int = 1,
) -> list[ChunkResult]:
    """Plan the run if it has no plan yet (``chunk_rows``), then copy every chunk not done.

    ``workers`` > 1 copies that many chunks at once (each worker its own connections and psql
    pair): one chunk's verification and commit then overlap another's streaming. Chunks are
    independent (the target is verified per key range), so any order is correct; they are
    started in load order. The first failure stops new chunks from starting and is raised once
    the running ones finished (the ledger holds every error; a re-run resumes).
    """
    from concurrent.futures import ThreadPoolExecutor

    from tenant_migration.postgres.planner import DEFAULT_CHUNK_ROWS

    with ChunkCopier(replica_ep, target_ep, tmap, run_id, tenant_id, on_spawn) as copier:
        copier.refuse_drift()
        chunks = plan_postgres(copier.replica, copier.target, tmap, run_id, tenant_id,
                               chunk_rows or DEFAULT_CHUNK_ROWS)
        copier.target.commit()
        if workers <= 1:
            return [copier.copy(chunk) for chunk in chunks]
    queue = list(reversed(chunks))
    results: dict[str, ChunkResult] = {}
    errors: list[BaseException] = []

    def work() -> None:
        with ChunkCopier(replica_ep, target_ep, tmap, run_id, tenant_id, on_spawn) as own:
            while queue and not errors:
                try:
                    chunk = queue.pop()
                except IndexError:
                    return
                try:
                    results[chunk.chunk_id] = own.copy(chunk)
                except BaseException as exc:
                    errors.append(exc)
                    raise

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tm-pg-copy") as pool:
        futures = [pool.submit(work) for _ in range(min(workers, len(chunks)))]
        for f in futures:
            f.exception()
    if errors:
        raise errors[0]
    return [results[c.chunk_id] for c in chunks]


@dataclass(frozen=True)
class ChunkMismatchReport:
    chunk_id: str
    table: str
    source: tuple[int, str]
    target: tuple[int, str]

    def __str__(self) -> str:
        return (f"{self.table} chunk {self.chunk_id}: source {self.source[0]} rows checksum {self.source[1]}, "
                f"target {self.target[0]} rows checksum {self.target[1]}")


def verify_chunks(
    replica: psycopg.Connection, target: psycopg.Connection, tmap: TenantMap, run_id: str, tenant_id: int
) -> list[ChunkMismatchReport]:
    """Recompute count and checksum of every planned chunk on both sides (a post-copy gate):
    every chunk whose target no longer matches the replica, named by table and chunk."""
    out: list[ChunkMismatchReport] = []
    for chunk in ledger.run_chunks(target, run_id, ENGINE):
        src = chunk_checksum(replica, tmap, chunk, tenant_id)
        dst = chunk_checksum(target, tmap, chunk, tenant_id, whole_range=True)
        if src != dst:
            out.append(ChunkMismatchReport(chunk.chunk_id, f"{tmap.schema}.{chunk.table_name}", src, dst))
    return out
