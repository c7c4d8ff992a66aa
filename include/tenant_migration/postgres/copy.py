"""Copying one chunk of a tenant's rows from the detached replica to the target.

Invariant: the chunk's target rows are deleted, re-loaded and the chunk marked ``done`` in ONE
target transaction. A crash or kill at any point rolls back to the complete old chunk; a commit
gives the complete new one. A retry therefore never doubles or loses rows.

The apply runs with ``session_replication_role = replica``: the platform's triggers do not fire
(``updated_at`` keeps the source's value; the registration check does not refuse copied rows) and
foreign keys are not checked row by row (the post-copy gate checks orphans instead).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import psycopg
from psycopg import sql

from tenant_migration import ledger
from tenant_migration.postgres.catalog import columns
from tenant_migration.tenant_map import TenantMap


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
    """Source and target disagree on a chunk after the copy."""


def checksum_query(tmap: TenantMap, table: str, cols: list[str]) -> sql.Composed:
    """Row count and an order-independent checksum of the tenant's rows of ``table``.

    Each row's text form is hashed (md5, first 60 bits) and the hashes summed: equal multisets of
    rows give equal sums whatever the physical order.
    """
    row_expr = sql.SQL("ROW({})::text").format(
        sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in cols)
    )
    return sql.SQL(
        "SELECT count(*), COALESCE(sum(('x' || substr(md5({}), 1, 15))::bit(60)::bigint), 0)::text "
        "FROM {} AS t WHERE {}"
    ).format(row_expr, tmap.qualified(table), tmap.tenant_predicate(table))


def table_checksum(conn: psycopg.Connection, tmap: TenantMap, table: str, tenant_id: int) -> tuple[int, str]:
    cols = [c for c, _ in columns(conn, tmap.schema, table)]
    row = conn.execute(checksum_query(tmap, table, cols), {"tenant_id": tenant_id}).fetchone()
    assert row is not None
    return int(row[0]), f"{row[0]}:{row[1]}"


def copy_table(
    replica: psycopg.Connection,
    target: psycopg.Connection,
    tmap: TenantMap,
    table: str,
    tenant_id: int,
    run_id: str,
    chunk_id: str,
) -> ChunkResult:
    """Replace the tenant's rows of ``table`` on the target with the replica's, as one chunk."""
    if ledger.chunk_status(target, run_id, chunk_id) == ledger.ChunkStatus.DONE:
        return ChunkResult(chunk_id, table, 0, 0, 0.0, "", "", skipped=True)
    started = time.monotonic()
    cols = [c for c, _ in columns(replica, tmap.schema, table)]
    params = {"tenant_id": tenant_id}
    ledger.mark_chunk_running(target, run_id, chunk_id)
    src_rows, src_sum = table_checksum(replica, tmap, table, tenant_id)
    copy_out = sql.SQL("COPY ({}) TO STDOUT (FORMAT binary)").format(tmap.select_tenant_rows(table, cols))
    copy_in = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(
        tmap.qualified(table), sql.SQL(", ").join(sql.Identifier(c) for c in cols)
    )
    nbytes = 0
    try:
        with target.transaction():
            target.execute("SET LOCAL session_replication_role = replica")
            target.execute(
                sql.SQL("DELETE FROM {} AS t WHERE {}").format(tmap.qualified(table), tmap.tenant_predicate(table)),
                params,
            )
            with replica.cursor() as rcur, target.cursor() as tcur:
                with rcur.copy(copy_out, params) as src, tcur.copy(copy_in) as dst:
                    for block in src:
                        nbytes += len(block)
                        dst.write(block)
            dst_rows, dst_sum = table_checksum(target, tmap, table, tenant_id)
            if (dst_rows, dst_sum) != (src_rows, src_sum):
                raise ChecksumMismatch(
                    f"{table} chunk {chunk_id}: source {src_rows} rows checksum {src_sum}, "
                    f"target {dst_rows} rows checksum {dst_sum}"
                )
            ledger.mark_chunk_done(target, run_id, chunk_id, dst_rows, nbytes, src_sum, dst_sum)
    except Exception as exc:
        ledger.mark_chunk_failed(target, run_id, chunk_id, f"{type(exc).__name__}: {exc}")
        raise
    return ChunkResult(chunk_id, table, src_rows, nbytes, time.monotonic() - started, src_sum, dst_sum)
