"""Shared reference tables (device models, firmware releases...) belong to no tenant but the
tenant's rows reference them: the dedicated deployment needs its own copy, or the first device
registered there after the flip fails its foreign key. They are small, so each is replaced whole,
in one target transaction (idempotent; a retry leaves the old or the new copy, never half)."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from tenant_migration.postgres.catalog import columns
from tenant_migration.tenant_map import TenantMap


@dataclass(frozen=True)
class SharedCopy:
    table: str
    rows: int


def copy_shared_tables(replica: psycopg.Connection, target: psycopg.Connection, tmap: TenantMap) -> list[SharedCopy]:
    out: list[SharedCopy] = []
    for table in tmap.shared_tables:
        cols = [c for c, _ in columns(replica, tmap.schema, table)]
        col_list = sql.SQL(", ").join(sql.Identifier(c) for c in cols)
        with target.transaction():
            target.execute("SET LOCAL session_replication_role = replica")
            target.execute(sql.SQL("DELETE FROM {}").format(tmap.qualified(table)))
            with replica.cursor() as rc, target.cursor() as tc:
                with rc.copy(sql.SQL("COPY (SELECT {} FROM {}) TO STDOUT (FORMAT binary)").format(
                        col_list, tmap.qualified(table))) as src, \
                        tc.copy(sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(
                            tmap.qualified(table), col_list)) as dst:
                    for block in src:
                        dst.write(block)
            src_n = replica.execute(sql.SQL("SELECT count(*) FROM {}").format(tmap.qualified(table))).fetchone()
            dst_n = target.execute(sql.SQL("SELECT count(*) FROM {}").format(tmap.qualified(table))).fetchone()
            if src_n != dst_n:
                raise RuntimeError(f"shared table {table}: {src_n} rows on the replica, {dst_n} on the target")
        out.append(SharedCopy(table, int(dst_n[0]) if dst_n else 0))
    return out
