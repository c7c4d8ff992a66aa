"""Applying the change stream on the target: one source transaction in one target transaction,
filtered to the tenant (``postgres.cdc``'s module note has the rules), idempotent by key."""

from __future__ import annotations

import logging

import psycopg
from psycopg import sql

from tenant_migration.postgres.decoding import (
    CdcError,
    Change,
    Row,
)
from tenant_migration.tenant_map import TableSpec, TenantMap

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# Applying changes on the target
# --------------------------------------------------------------------------------------------------


class Applier:
    """Applies one tenant's changes on the target (statements cached per table and column set)."""

    def __init__(self, target: psycopg.Connection, tmap: TenantMap, tenant_id: int,
                 source: psycopg.Connection | None = None) -> None:
        self.target, self.tmap, self.tenant_id = target, tmap, str(tenant_id)
        self.source = source  # for back-filling rows that move into the tenant; None disables it
        self._upserts: dict[tuple[str, tuple[str, ...]], sql.Composed] = {}
        self._children = self._child_tables()
        self._always: dict[str, frozenset[str]] = {}
        self.backfilled_rows = 0

    def _always_identity(self, table: str) -> frozenset[str]:
        """The table's ``GENERATED ALWAYS`` identity columns on the target (asked once per table):
        an insert must say ``OVERRIDING SYSTEM VALUE`` to keep the source's values, and an update
        cannot set them (they never change on the source either)."""
        found = self._always.get(table)
        if found is None:
            rows = self.target.execute(
                "SELECT a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s "
                "AND a.attnum > 0 AND NOT a.attisdropped AND a.attidentity = 'a'",
                (self.tmap.schema, table)).fetchall()
            found = self._always[table] = frozenset(str(r[0]) for r in rows)
        return found

    def _child_tables(self) -> dict[str, list[str]]:
        kids: dict[str, list[str]] = {name: [] for name in self.tmap.tables}
        for name in self.tmap.load_order():
            spec = self.tmap.tables[name]
            if spec.via is not None:
                kids[spec.via.table].append(name)
        return kids

    def _upsert_sql(self, spec: TableSpec, cols: tuple[str, ...]) -> sql.Composed:
        cached = self._upserts.get((spec.name, cols))
        if cached is not None:
            return cached
        always = self._always_identity(spec.name)
        rest = [c for c in cols if c not in spec.key and c not in always]
        # Last writer wins by updated_at: after the DNS flip the target takes the tenant's writes,
        # and a straggler's older change drained from the source must not overwrite a newer one.
        # Before the flip the source is the only writer, so its changes are always the newer.
        newer = (
            sql.SQL(" WHERE {}.updated_at <= EXCLUDED.updated_at").format(sql.Identifier(spec.name))
            if "updated_at" in rest
            else sql.SQL("")
        )
        action = (
            sql.SQL("DO UPDATE SET {}{}").format(
                sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in rest), newer
            )
            if rest
            else sql.SQL("DO NOTHING")
        )
        overriding = sql.SQL(" OVERRIDING SYSTEM VALUE") if always & set(cols) else sql.SQL("")
        stmt = sql.SQL("INSERT INTO {} ({}){} VALUES ({}) ON CONFLICT ({}) {} RETURNING (xmax = 0)").format(
            self.tmap.qualified(spec.name),
            sql.SQL(", ").join(sql.Identifier(c) for c in cols),
            overriding,
            sql.SQL(", ").join(sql.Placeholder() * len(cols)),
            sql.SQL(", ").join(sql.Identifier(c) for c in spec.key),
            action,
        )
        self._upserts[(spec.name, cols)] = stmt
        return stmt

    def is_member(self, spec: TableSpec, row: Row) -> bool:
        if spec.tenant_column is not None:
            return row.get(spec.tenant_column) == self.tenant_id
        assert spec.via is not None
        parent_value = row.get(spec.via.column)
        if parent_value is None:
            return False
        found = self.target.execute(
            sql.SQL("SELECT 1 FROM {} WHERE {} = %s").format(
                self.tmap.qualified(spec.via.table), sql.Identifier(spec.via.parent_column)
            ),
            (parent_value,),
        ).fetchone()
        return found is not None

    def upsert(self, spec: TableSpec, row: Row) -> bool:
        """Insert or update by key; True when the row was new on the target."""
        cols = tuple(row)
        res = self.target.execute(self._upsert_sql(spec, cols), [row[c] for c in cols]).fetchone()
        return bool(res and res[0])

    def delete(self, spec: TableSpec, key: Row) -> int:
        missing = [k for k in spec.key if k not in key]
        if missing:
            raise CdcError(f"delete on {spec.name} lacks key columns {missing}")
        cur = self.target.execute(
            sql.SQL("DELETE FROM {} WHERE {}").format(
                self.tmap.qualified(spec.name),
                sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k in spec.key),
            ),
            [key[k] for k in spec.key],
        )
        return cur.rowcount

    def apply(self, change: Change) -> bool:
        """Apply one change if it concerns the tenant; True when the target was written."""
        if change.schema != self.tmap.schema or change.table not in self.tmap.tables:
            if change.op == "TRUNCATE":
                hit = [t for s, t in change.truncated if s == self.tmap.schema and t in self.tmap.tables]
                if hit:
                    raise CdcError(
                        f"TRUNCATE of tenant-scoped tables {hit} on the source: it cannot be filtered to one "
                        "tenant; stop and re-copy"
                    )
            return False
        spec = self.tmap.tables[change.table]
        if change.op == "TRUNCATE":
            raise CdcError(f"TRUNCATE of tenant-scoped table {change.table} on the source; stop and re-copy")
        if change.op == "DELETE":
            assert change.old_key is not None
            return self.delete(spec, change.old_key) > 0
        assert change.new is not None
        wrote = False
        if change.old_key:  # the key itself changed: the old key is gone on the source
            wrote = self.delete(spec, change.old_key) > 0
        if self.is_member(spec, change.new):
            new_on_target = self.upsert(spec, change.new)
            if new_on_target and change.op == "UPDATE" and spec.via is None:
                self.backfill_children(spec.name, change.new)
            return True
        if change.op == "UPDATE":
            key = {k: change.new.get(k) for k in spec.key}
            if self.delete(spec, key) > 0:
                # The row left the tenant: its descendants on the target left with it.
                self.delete_children(spec.name, change.new)
                wrote = True
        return wrote

    def delete_children(self, table: str, row: Row) -> None:
        """Delete the target rows reached through ``row`` (deepest first), e.g. a device moved out."""
        for child in self._children[table]:
            hop = self.tmap.tables[child].via
            assert hop is not None
            value = row.get(hop.parent_column)
            if value is None:
                continue
            needed = sorted({g.via.parent_column for g in (self.tmap.tables[c] for c in self._children[child]) if g.via})
            if needed:
                cur = self.target.execute(
                    sql.SQL("SELECT {} FROM {} WHERE {} = %s").format(
                        sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in needed),
                        self.tmap.qualified(child), sql.Identifier(hop.column),
                    ),
                    (value,),
                )
                for values in cur.fetchall():
                    self.delete_children(child, dict(zip(needed, values, strict=True)))
            self.target.execute(
                sql.SQL("DELETE FROM {} WHERE {} = %s").format(self.tmap.qualified(child), sql.Identifier(hop.column)),
                (value,),
            )

    def backfill_children(self, table: str, row: Row) -> None:
        """A row moved into the tenant: copy its descendants from the primary (current state)."""
        if self.source is None:
            log.warning("%s row moved into tenant %s; no source connection to back-fill its children", table, self.tenant_id)
            return
        for child in self._children[table]:
            hop = self.tmap.tables[child].via
            assert hop is not None
            parent_value = row.get(hop.parent_column)
            if parent_value is None:
                continue
            cols = [
                r[0]
                for r in self.source.execute(
                    "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
                    "AND NOT attisdropped ORDER BY attnum",
                    (f"{self.tmap.schema}.{child}",),
                ).fetchall()
            ]
            query = sql.SQL("SELECT {} FROM {} WHERE {} = %s").format(
                sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in cols),
                self.tmap.qualified(child),
                sql.Identifier(hop.column),
            )
            for values in self.source.execute(query, (parent_value,)).fetchall():
                child_row = dict(zip(cols, values, strict=True))
                self.upsert(self.tmap.tables[child], child_row)
                self.backfilled_rows += 1
                self.backfill_children(child, child_row)
