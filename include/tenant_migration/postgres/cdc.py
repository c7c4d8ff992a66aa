"""Exact change capture: the primary's changes after the detach point, filtered to one tenant and
applied on the target in commit order.

Design note (the seam). A logical slot is created on the live PRIMARY first; its consistent point
``C`` is the first commit the slot can decode completely. The standby is then paused at a replay
LSN ``L >= C`` (``replica.LocalReplicaController(min_lsn=C)`` waits for that). A transaction is in
the replica's snapshot exactly when its commit record was replayed, i.e. when the commit's END
LSN is ``<= L`` (``pg_last_wal_replay_lsn()`` is the end of the last replayed record). The SQL
interface reports each COMMIT row at the commit's end LSN, so "apply iff commit_lsn > L" leaves
no gap and no overlap between the copy and the stream.

Decoder: ``test_decoding``. It ships with every PostgreSQL (and RDS), so the migration needs no
extra server package on a platform we do not own; its text format is small and unambiguous (values
are single-quoted with ``''`` escapes, numbers and booleans bare), parsed by ``parse_change``
below and covered by unit tests. Values stay text and are bound with psycopg's *unknown* type, so
the target column types do the conversion exactly as ``COPY`` would.

Tenant filter, decided per change while applying in commit order:
- a table with its own tenant column: member iff the new tuple's column equals the tenant id;
- a table reached through a hop (rules -> properties -> devices -> tenant): member iff its parent
  row exists on the TARGET right now. The target holds exactly the tenant's rows as of the
  previous change (snapshot at ``L`` plus every earlier change, applied in order), so one lookup
  of the immediate parent decides membership for any depth of hops;
- deletes carry only the replica-identity key (we keep the platform's default identity, the
  primary key: REPLICA IDENTITY FULL would need an ACCESS EXCLUSIVE ``ALTER TABLE`` on the live
  platform's tables and would log every old row in full). Deleting by key is exact anyway: keys
  are unique across tenants in a shared table and the target holds only this tenant's rows, so a
  delete of another tenant's key removes nothing;
- an update whose new row is not a member deletes the key on the target (the row left the
  tenant, or was never there: then nothing happens);
- an update that makes a tenant-column row a member which was not on the target (a user or device
  moved INTO the tenant after the detach) also back-fills its descendants (properties, rules, ...)
  from the primary's current state. They are newer than the stream position; later changes in the
  stream re-apply over them idempotently, so the target converges to the source by the end of
  catch-up.

Exactly once. Each source transaction is applied in ONE target transaction with
``session_replication_role = replica``, and the same transaction advances
``tm_control.cdc_progress.applied_lsn``. The slot is only advanced (``pg_replication_slot_advance``)
after that commit, and transactions with ``commit_lsn <= applied_lsn`` are skipped when re-read.
A crash anywhere therefore re-reads at most what was applied already and skips it. Apply itself is
idempotent too (upserts by key, deletes by key).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import psycopg
from psycopg import sql

from tenant_migration.tenant_map import TableSpec, TenantMap

log = logging.getLogger(__name__)

PLUGIN = "test_decoding"
PLUGIN_OPTIONS = ("include-xids", "1", "include-timestamp", "1", "skip-empty-xacts", "1")

Op = Literal["INSERT", "UPDATE", "DELETE", "TRUNCATE"]
Row = dict[str, str | None]

_CREATE_PROGRESS = sql.SQL(
    """
    CREATE SCHEMA IF NOT EXISTS tm_control;
    CREATE TABLE IF NOT EXISTS tm_control.cdc_progress (
        run_id              text PRIMARY KEY,
        slot_name           text NOT NULL,
        tenant_id           bigint NOT NULL,
        start_lsn           pg_lsn NOT NULL,
        applied_lsn         pg_lsn NOT NULL,
        applied_commit_time timestamptz,
        txns_applied        bigint NOT NULL DEFAULT 0,
        txns_skipped        bigint NOT NULL DEFAULT 0,
        changes_applied     bigint NOT NULL DEFAULT 0,
        changes_filtered    bigint NOT NULL DEFAULT 0,
        updated_at          timestamptz NOT NULL DEFAULT clock_timestamp()
    );
    """
)


class CdcError(RuntimeError):
    """Change capture cannot proceed safely (a foreign slot, a truncate of a shared table, ...)."""


class CatchUpTimeout(CdcError):
    """Catch-up did not reach the lag target in time. ``report`` holds the last numbers."""

    def __init__(self, message: str, report: CatchUpReport) -> None:
        super().__init__(message)
        self.report = report


# --------------------------------------------------------------------------------------------------
# LSNs
# --------------------------------------------------------------------------------------------------


def lsn_to_int(lsn: str) -> int:
    hi, lo = lsn.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def int_to_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


# --------------------------------------------------------------------------------------------------
# Parsing test_decoding output
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One row change. Values are PostgreSQL text forms (``None`` is SQL NULL)."""

    lsn: str
    schema: str
    table: str
    op: Op
    new: Row | None = None
    old_key: Row | None = None
    unchanged_toast: frozenset[str] = frozenset()
    truncated: tuple[tuple[str, str], ...] = ()


@dataclass
class Transaction:
    xid: int | None
    commit_lsn: str = ""
    commit_time: datetime | None = None
    changes: list[Change] = field(default_factory=list)


class _Scanner:
    """A cursor over one test_decoding line."""

    def __init__(self, text: str, pos: int = 0) -> None:
        self.text, self.pos = text, pos

    def peek(self, s: str) -> bool:
        return self.text.startswith(s, self.pos)

    def expect(self, s: str) -> None:
        if not self.peek(s):
            raise CdcError(f"unexpected test_decoding output at {self.pos}: {self.text[self.pos:self.pos + 40]!r}")
        self.pos += len(s)

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def ident(self, stop: str) -> str:
        """An identifier as ``quote_identifier`` prints it: bare, or double-quoted with ``""``."""
        if self.peek('"'):
            self.pos += 1
            out: list[str] = []
            while True:
                j = self.text.index('"', self.pos)
                out.append(self.text[self.pos:j])
                self.pos = j + 1
                if self.peek('"'):
                    out.append('"')
                    self.pos += 1
                else:
                    return "".join(out)
        j = self.pos
        while j < len(self.text) and self.text[j] not in stop:
            j += 1
        name, self.pos = self.text[self.pos:j], j
        return name

    def type_name(self) -> str:
        """``format_type`` output between the brackets; arrays bring their own ``[]``."""
        self.expect("[")
        depth, start = 1, self.pos
        while depth:
            c = self.text[self.pos]
            depth += 1 if c == "[" else -1 if c == "]" else 0
            self.pos += 1
        return self.text[start:self.pos - 1]

    def value(self) -> tuple[str | None, bool]:
        """A literal: returns (text, unchanged_toast)."""
        if self.peek("'"):
            self.pos += 1
            out: list[str] = []
            while True:
                j = self.text.index("'", self.pos)
                out.append(self.text[self.pos:j])
                self.pos = j + 1
                if self.peek("'"):
                    out.append("'")
                    self.pos += 1
                else:
                    return "".join(out), False
        if self.peek("B'"):  # bit strings: B'0101'
            self.pos += 1
            return self.value()
        j = self.text.find(" ", self.pos)
        j = len(self.text) if j < 0 else j
        token, self.pos = self.text[self.pos:j], j
        if token == "null":
            return None, False
        if token == "unchanged-toast-datum":
            return None, True
        return token, False

    def tuple_(self) -> tuple[Row, set[str]]:
        row: Row = {}
        toast: set[str] = set()
        while self.peek(" ") and not self.peek(" new-tuple:"):
            self.pos += 1
            name = self.ident("[")
            self.type_name()
            self.expect(":")
            val, unchanged = self.value()
            if unchanged:
                toast.add(name)
            else:
                row[name] = val
        return row, toast


def parse_change(lsn: str, data: str) -> Change | None:
    """Parse one test_decoding change line (``table s.t: OP: ...``); ``None`` for other lines."""
    if not data.startswith("table "):
        return None
    sc = _Scanner(data, len("table "))
    rels: list[tuple[str, str]] = []
    while True:
        schema = sc.ident(".")
        sc.expect(".")
        rels.append((schema, sc.ident(":,")))
        if not sc.peek(", "):
            break
        sc.pos += 2  # only TRUNCATE names several relations
    sc.expect(": ")
    if len(rels) > 1 or sc.peek("TRUNCATE:"):
        return Change(lsn, rels[0][0], rels[0][1], "TRUNCATE", truncated=tuple(rels))
    schema, table = rels[0]
    op_text = sc.ident(":")
    sc.expect(":")
    if op_text not in ("INSERT", "UPDATE", "DELETE"):
        raise CdcError(f"unknown test_decoding operation {op_text!r} on {schema}.{table}")
    op: Op = op_text  # type: ignore[assignment]
    if sc.peek(" (no-tuple-data)"):
        raise CdcError(
            f"{op} on {schema}.{table} carries no tuple data: the table needs a primary key "
            "(or a replica identity) for its changes to be applied"
        )
    old_key: Row | None = None
    if op == "UPDATE" and sc.peek(" old-key:"):
        sc.expect(" old-key:")
        old_key, _ = sc.tuple_()
        sc.expect(" new-tuple:")
    row, toast = sc.tuple_()
    if not sc.at_end():
        raise CdcError(f"trailing test_decoding output on {schema}.{table}: {data[sc.pos:sc.pos + 40]!r}")
    if op == "DELETE":
        return Change(lsn, schema, table, op, old_key=row)
    return Change(lsn, schema, table, op, new=row, old_key=old_key, unchanged_toast=frozenset(toast))


def _parse_commit_time(text: str) -> datetime | None:
    # timestamptz_to_str: "2026-11-26 10:00:00.123456+00" (or "+05:30"); fromisoformat wants "+00:00".
    if len(text) >= 3 and text[-3] in "+-" and text[-2:].isdigit():
        text += ":00"
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def group_transactions(rows: Iterable[tuple[str, Any, str]]) -> Iterator[Transaction]:
    """Group ``(lsn, xid, data)`` rows of ``pg_logical_slot_peek_changes`` into whole transactions.

    The SQL interface reports BEGIN at the transaction's first LSN, changes at their own LSN and
    COMMIT at the END of the commit record (the value compared with the detach point)."""
    txn: Transaction | None = None
    for lsn, xid, data in rows:
        if data.startswith("BEGIN"):
            txn = Transaction(xid=int(xid) if xid is not None else None)
        elif data.startswith("COMMIT"):
            if txn is None:
                raise CdcError(f"COMMIT without BEGIN at {lsn}")
            txn.commit_lsn = lsn
            at = data.find("(at ")
            if at >= 0:
                txn.commit_time = _parse_commit_time(data[at + 4 : data.rindex(")")])
            yield txn
            txn = None
        else:
            change = parse_change(lsn, data)
            if change is not None:
                if txn is None:
                    raise CdcError(f"change outside a transaction at {lsn}")
                txn.changes.append(change)


# --------------------------------------------------------------------------------------------------
# Slot lifecycle (on the primary, as a role with REPLICATION)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlotInfo:
    slot_name: str
    consistent_lsn: str
    created: bool


def slot_name_for(run_id: str) -> str:
    """A slot name derived from the run id: lowercase, [a-z0-9_], <= 63 bytes, prefixed ``tm_``."""
    clean = "".join(c if c.isalnum() else "_" for c in run_id.lower())
    return ("tm_cdc_" + clean)[:63]


def create_slot(source: psycopg.Connection, slot_name: str) -> SlotInfo:
    """Create the logical slot (idempotent). Must run BEFORE the replica is detached.

    An existing slot of ours is reused and reports its ``confirmed_flush_lsn`` (its consistent point
    when nothing was consumed yet). A slot with that name but another plugin, database or a physical
    one is refused: we will not decode through somebody else's slot.
    """
    row = source.execute(
        "SELECT slot_type, plugin, database, confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
        (slot_name,),
    ).fetchone()
    if row is not None:
        dbname = source.execute("SELECT current_database()").fetchone()
        if row[0] != "logical" or row[1] != PLUGIN or dbname is None or row[2] != dbname[0]:
            raise CdcError(f"replication slot {slot_name} exists but is not a {PLUGIN} slot of this database")
        return SlotInfo(slot_name, str(row[3]), created=False)
    created = source.execute(
        "SELECT lsn::text FROM pg_create_logical_replication_slot(%s, %s)", (slot_name, PLUGIN)
    ).fetchone()
    assert created is not None
    log.info("created logical slot %s at %s", slot_name, created[0])
    return SlotInfo(slot_name, str(created[0]), created=True)


def drop_slot(source: psycopg.Connection, slot_name: str, timeout: float = 30.0) -> bool:
    """Drop the slot so no WAL stays retained on the primary (idempotent: False when absent).

    Called at the end of catch-up and on abort. A slot in use by a backend still decoding (a killed
    worker whose session lingers) is waited for, then refused loudly rather than leaking WAL silently.
    """
    deadline = time.monotonic() + timeout
    while True:
        row = source.execute(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (slot_name,)
        ).fetchone()
        if row is None:
            return False
        if row[0] is None:
            try:
                source.execute("SELECT pg_drop_replication_slot(%s)", (slot_name,))
                return True
            except psycopg.errors.UndefinedObject:
                return False
            except psycopg.errors.ObjectInUse:
                pass
        if time.monotonic() > deadline:
            raise CdcError(f"slot {slot_name} is still in use by pid {row[0]}; it retains WAL until dropped")
        time.sleep(0.2)


# --------------------------------------------------------------------------------------------------
# Progress (tm_control.cdc_progress on the target)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    run_id: str
    slot_name: str
    tenant_id: int
    start_lsn: str
    applied_lsn: str
    applied_commit_time: datetime | None
    txns_applied: int
    txns_skipped: int
    changes_applied: int
    changes_filtered: int


def ensure_progress_table(target: psycopg.Connection) -> None:
    with target.transaction():
        target.execute(_CREATE_PROGRESS)


def start_progress(target: psycopg.Connection, run_id: str, slot_name: str, tenant_id: int, start_lsn: str) -> Progress:
    """Register where the stream starts (the detach LSN), or return the stored progress.

    Resuming with another slot, tenant or start point is refused: the stored ``applied_lsn`` only
    means something for the seam it was recorded against.
    """
    ensure_progress_table(target)
    with target.transaction():
        target.execute(
            "INSERT INTO tm_control.cdc_progress (run_id, slot_name, tenant_id, start_lsn, applied_lsn) "
            "VALUES (%s, %s, %s, %s::pg_lsn, %s::pg_lsn) ON CONFLICT (run_id) DO NOTHING",
            (run_id, slot_name, tenant_id, start_lsn, start_lsn),
        )
    prog = read_progress(target, run_id)
    assert prog is not None
    if (prog.slot_name, prog.tenant_id) != (slot_name, tenant_id) or lsn_to_int(prog.start_lsn) != lsn_to_int(start_lsn):
        raise CdcError(
            f"run {run_id} streams slot {prog.slot_name} for tenant {prog.tenant_id} from {prog.start_lsn}; "
            f"refusing to resume it with slot {slot_name}, tenant {tenant_id}, start {start_lsn}"
        )
    return prog


def read_progress(target: psycopg.Connection, run_id: str) -> Progress | None:
    if target.execute("SELECT to_regclass('tm_control.cdc_progress')").fetchone() in (None, (None,)):
        return None
    row = target.execute(
        "SELECT run_id, slot_name, tenant_id, start_lsn::text, applied_lsn::text, applied_commit_time, "
        "txns_applied, txns_skipped, changes_applied, changes_filtered FROM tm_control.cdc_progress WHERE run_id = %s",
        (run_id,),
    ).fetchone()
    return Progress(*row) if row else None


def _bump_progress(
    target: psycopg.Connection, run_id: str, lsn: str, commit_time: datetime | None,
    applied_txns: int, skipped_txns: int, changes: int, filtered: int,
) -> None:
    # GREATEST keeps applied_lsn monotonic even if a caller replays an old batch by mistake.
    target.execute(
        "UPDATE tm_control.cdc_progress SET applied_lsn = GREATEST(applied_lsn, %s::pg_lsn), "
        "applied_commit_time = COALESCE(%s, applied_commit_time), txns_applied = txns_applied + %s, "
        "txns_skipped = txns_skipped + %s, changes_applied = changes_applied + %s, "
        "changes_filtered = changes_filtered + %s, updated_at = clock_timestamp() WHERE run_id = %s",
        (lsn, commit_time, applied_txns, skipped_txns, changes, filtered, run_id),
    )


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


# --------------------------------------------------------------------------------------------------
# Catch-up
# --------------------------------------------------------------------------------------------------


@dataclass
class CatchUpReport:
    run_id: str
    slot_name: str
    converged: bool
    start_lsn: str
    applied_lsn: str
    head_lsn: str
    lag_bytes: int
    lag_seconds: float
    txns_applied: int
    txns_skipped: int
    changes_applied: int
    changes_filtered: int
    backfilled_rows: int
    batches: int
    seconds: float

    @property
    def changes_per_second(self) -> float:
        return self.changes_applied / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["changes_per_second"] = round(self.changes_per_second, 1)
        return out


def _peek(source: psycopg.Connection, slot_name: str, batch_changes: int) -> list[tuple[str, Any, str]]:
    query = sql.SQL("SELECT lsn::text, xid::text, data FROM pg_logical_slot_peek_changes(%s, NULL, %s, {})").format(
        sql.SQL(", ").join(sql.Literal(o) for o in PLUGIN_OPTIONS)
    )
    return [(r[0], r[1], r[2]) for r in source.execute(query, (slot_name, batch_changes)).fetchall()]


def first_pending_xid(source: psycopg.Connection, slot_name: str) -> str | None:
    """The xid of the oldest transaction with changes the stream has not consumed, or None.

    Peeked with the stream's own plugin options: without ``skip-empty-xacts`` a transaction with
    an xid but no row change (an ANALYZE, autovacuum's auto-analyze after a burst of writes, DDL)
    shows as pending, and ``catch_up`` never consumes it (it sees no rows), so the lag would read
    as that transaction's age for as long as nothing else is written (a catch_up gate failed so,
    with 12 s of "lag" right after a converged catch-up)."""
    rows = _peek(source, slot_name, 1)
    return rows[0][1] if rows else None


def apply_batch(
    target: psycopg.Connection,
    applier: Applier,
    run_id: str,
    txns: list[Transaction],
    applied_lsn: int,
    on_applied: Callable[[Transaction], None] | None = None,
    group_size: int = 100,
) -> tuple[int, int, int, int, Transaction | None]:
    """Apply whole transactions after ``applied_lsn``; returns (applied, skipped, changes, filtered, last).

    Up to ``group_size`` consecutive source transactions share one target transaction (a source
    transaction is never split across two), together with the progress update that names the last
    of them: one commit (one fsync) per group instead of per source transaction, same atomicity.
    """
    applied = skipped = changes = filtered = 0
    last: Transaction | None = None
    todo = [t for t in txns if lsn_to_int(t.commit_lsn) > applied_lsn]  # others: snapshot, or applied before
    for i in range(0, len(todo), max(1, group_size)):
        group = todo[i : i + max(1, group_size)]
        g_applied = g_skipped = g_changes = g_filtered = 0
        done: list[Transaction] = []
        with target.transaction():
            target.execute("SET LOCAL session_replication_role = replica")
            for txn in group:
                wrote = sum(1 for ch in txn.changes if applier.apply(ch))
                g_changes += wrote
                g_filtered += len(txn.changes) - wrote
                if wrote:
                    g_applied += 1
                    done.append(txn)
                else:
                    g_skipped += 1
            tail = group[-1]
            stamp = next((t.commit_time for t in reversed(done)), None)
            _bump_progress(target, run_id, tail.commit_lsn, stamp, g_applied, g_skipped, g_changes, g_filtered)
        applied, skipped = applied + g_applied, skipped + g_skipped
        changes, filtered = changes + g_changes, filtered + g_filtered
        last = done[-1] if done else last
        if on_applied is not None:
            for txn in done:
                on_applied(txn)
    return applied, skipped, changes, filtered, last


def catch_up(
    source: psycopg.Connection,
    target: psycopg.Connection,
    tmap: TenantMap,
    tenant_id: int,
    run_id: str,
    slot_name: str,
    start_lsn: str,
    *,
    max_lag_bytes: int = 64 * 1024,
    timeout: float = 600.0,
    batch_changes: int = 5000,
    group_size: int = 100,
    idle_sleep: float = 0.2,
    until_lsn: str | None = None,
    on_applied: Callable[[Transaction], None] | None = None,
    raise_on_timeout: bool = True,
) -> CatchUpReport:
    """Stream the tenant's changes after ``start_lsn`` (the detach LSN) until the lag target is met.

    ``source`` is an autocommit connection to the PRIMARY as a role with REPLICATION
    (``migration_reader``); ``target`` a connection as ``migration_writer``. Converged means: the last
    peek returned less than a full batch (everything committed before it was processed) and the
    WAL written since is at most ``max_lag_bytes``. With ``until_lsn`` it also waits until every
    transaction committed before that LSN is applied (a cutover drains to a fixed point this way).
    Safe to call again after any failure: it resumes from ``tm_control.cdc_progress``.
    """
    if not source.autocommit:
        raise CdcError("the source connection must be autocommit (slot functions must not sit in a long transaction)")
    started = time.monotonic()
    prog = start_progress(target, run_id, slot_name, tenant_id, start_lsn)
    applier = Applier(target, tmap, tenant_id, source=source)
    applied_lsn = lsn_to_int(prog.applied_lsn)
    last_commit_time = prog.applied_commit_time
    applied = skipped = changes = filtered = batches = 0
    head = lag = 0
    lag_seconds = 0.0
    until = lsn_to_int(until_lsn) if until_lsn else None
    converged = False
    while True:
        head_row = source.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert head_row is not None
        head = lsn_to_int(head_row[0])
        rows = _peek(source, slot_name, batch_changes)
        batches += 1
        txns = list(group_transactions(rows))
        a, s, c, f, last = apply_batch(target, applier, run_id, txns, applied_lsn, on_applied, group_size)
        applied, skipped, changes, filtered = applied + a, skipped + s, changes + c, filtered + f
        if txns:
            batch_end = txns[-1].commit_lsn
            applied_lsn = max(applied_lsn, lsn_to_int(batch_end))
            # Only after the target committed: a crash before this re-reads, and skips, what was applied.
            source.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (slot_name, batch_end))
        if last is not None and last.commit_time is not None:
            last_commit_time = last.commit_time
        drained = len(rows) < batch_changes
        processed_to = max(applied_lsn, head) if drained else applied_lsn
        now_row = source.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert now_row is not None
        lag = max(0, lsn_to_int(now_row[0]) - processed_to)
        lag_seconds = 0.0 if drained or last_commit_time is None else (datetime.now(UTC) - last_commit_time).total_seconds()
        log.info("cdc batch %d: %d txns applied, %d skipped, lag %d bytes %.1fs", batches, a, s, lag, lag_seconds)
        if drained and lag <= max_lag_bytes and (until is None or processed_to >= until):
            converged = True
            break
        if time.monotonic() - started > timeout:
            break
        if drained:
            time.sleep(idle_sleep)
    report = CatchUpReport(
        run_id=run_id, slot_name=slot_name, converged=converged, start_lsn=prog.start_lsn,
        applied_lsn=int_to_lsn(applied_lsn), head_lsn=int_to_lsn(head), lag_bytes=lag, lag_seconds=lag_seconds,
        txns_applied=applied, txns_skipped=skipped, changes_applied=changes, changes_filtered=filtered,
        backfilled_rows=applier.backfilled_rows, batches=batches, seconds=time.monotonic() - started,
    )
    if not converged and raise_on_timeout:
        raise CatchUpTimeout(
            f"catch-up of run {run_id} did not converge in {timeout:.0f}s: lag {lag} bytes, {lag_seconds:.1f}s", report
        )
    return report


def lag(source: psycopg.Connection, target: psycopg.Connection, run_id: str) -> dict[str, Any]:
    """Current lag of a run: WAL bytes past the applied LSN, seconds since the last applied commit."""
    prog = read_progress(target, run_id)
    if prog is None:
        raise CdcError(f"run {run_id} has no change-capture progress")
    row = source.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    seconds = (datetime.now(UTC) - prog.applied_commit_time).total_seconds() if prog.applied_commit_time else None
    return {
        "applied_lsn": prog.applied_lsn,
        "head_lsn": row[0],
        "lag_bytes": max(0, lsn_to_int(row[0]) - lsn_to_int(prog.applied_lsn)),
        "seconds_since_last_applied_commit": seconds,
    }


# --------------------------------------------------------------------------------------------------
# After the drain: what the shared platform took that the target lacks
# --------------------------------------------------------------------------------------------------

_NO_EQUALITY = ("json", "xml", "point", "line", "lseg", "box", "path", "polygon", "circle")


@dataclass(frozen=True)
class PendingChange:
    """A change of the tenant the run's stream holds, not applied, whose effect the target lacks."""

    table: str
    op: str
    key: dict[str, str | None]
    commit_time: datetime | None
    lsn: str

    def label(self) -> str:
        at = self.commit_time.isoformat() if self.commit_time else "?"
        return f"{self.table} {self.op} {self.key} committed {at}"


@dataclass
class PendingReport:
    tenant_changes: int  # the tenant's changes in the stream after the applied point
    missing: list[PendingChange]
    newest: datetime | None  # commit time of the newest of those changes
    peeked: int  # stream changes read (all tenants)
    truncated: bool  # the peek reached its limit: more may be pending

    def to_dict(self) -> dict[str, Any]:
        return {"tenant_changes": self.tenant_changes, "missing": len(self.missing),
                "missing_sample": [m.label() for m in self.missing[:20]],
                "newest": self.newest.isoformat() if self.newest else None, "peeked": self.peeked,
                "truncated": self.truncated}


def _target_has(target: psycopg.Connection, tmap: TenantMap, spec: TableSpec, types: dict[str, str],
                key: Row, values: Row | None) -> bool:
    """The target holds the row of ``key`` (``values`` None) or holds ``values`` in it, or a newer
    version (``updated_at`` at or after the change's: last writer wins, as the applier does).
    Values are the stream's text forms, read by each column's own input function."""
    where = sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k in spec.key)
    params: list[Any] = [key[k] for k in spec.key]
    if values is None:
        test: sql.Composable = sql.SQL("true")
        qparams: list[Any] = []
    else:
        parts = []
        qparams = []
        for col, value in values.items():
            if col in spec.key or col not in types:
                continue
            if types[col].split("(")[0].split("[")[0] in _NO_EQUALITY:
                parts.append(sql.SQL("{}::text IS NOT DISTINCT FROM %s").format(sql.Identifier(col)))
            else:
                parts.append(sql.SQL("{} IS NOT DISTINCT FROM %s").format(sql.Identifier(col)))
            qparams.append(value)
        same = sql.SQL(" AND ").join(parts) if parts else sql.SQL("true")
        if "updated_at" in values and "updated_at" in types and values["updated_at"] is not None:
            test = sql.SQL("({}) OR updated_at >= %s").format(same)
            qparams.append(values["updated_at"])
        else:
            test = same
    row = target.execute(sql.SQL("SELECT {} FROM {} WHERE {}").format(test, tmap.qualified(spec.name), where),
                         [*qparams, *params]).fetchone()
    return bool(row and row[0])


def pending_tenant_changes(source: psycopg.Connection, target: psycopg.Connection, tmap: TenantMap, tenant_id: int,
                           run_id: str, slot_name: str, *, limit: int = 200_000) -> PendingReport:
    """The tenant's changes the run's stream holds after its applied point (``peek``: nothing is
    consumed) whose effect the target does not show: an insert or update whose values (or a newer
    version) the target lacks, a delete of a row the target still holds. After the drain, these are
    writes the shared platform accepted that nobody copied. A change the target already shows (the
    registration switch resumed on both sides, a straggler's write the tenant repeated) is not."""
    from tenant_migration.postgres.catalog import columns_of_tables

    prog = read_progress(target, run_id)
    applied = lsn_to_int(prog.applied_lsn) if prog else 0
    rows = _peek(source, slot_name, limit)
    applier = Applier(target, tmap, tenant_id)
    types = {t: dict(cols) for t, cols in columns_of_tables(target, tmap.schema, list(tmap.tables)).items()}
    count = 0
    newest: datetime | None = None
    missing: list[PendingChange] = []
    for txn in group_transactions(rows):
        if lsn_to_int(txn.commit_lsn) <= applied:
            continue
        for ch in txn.changes:
            if ch.op == "TRUNCATE":
                hit = [t for s, t in ch.truncated if s == tmap.schema and t in tmap.tables]
                if hit:
                    count += 1
                    missing.append(PendingChange(",".join(hit), "TRUNCATE", {}, txn.commit_time, ch.lsn))
                continue
            if ch.schema != tmap.schema or ch.table not in tmap.tables:
                continue
            spec = tmap.tables[ch.table]
            if ch.op == "DELETE":
                assert ch.old_key is not None
                key, values, ours = ch.old_key, None, _target_has(target, tmap, spec, types[ch.table], ch.old_key, None)
                lacks = ours  # the tenant's row (the target holds it) is still there
            else:
                assert ch.new is not None
                key = {k: ch.new.get(k) for k in spec.key}
                values = ch.new
                ours = applier.is_member(spec, ch.new)
                lacks = ours and not _target_has(target, tmap, spec, types[ch.table], key, values)
            if not ours:
                continue
            count += 1
            newest = max(newest or txn.commit_time, txn.commit_time) if txn.commit_time else newest
            if lacks:
                missing.append(PendingChange(ch.table, ch.op, key, txn.commit_time, ch.lsn))
    return PendingReport(count, missing, newest, len(rows), len(rows) >= limit)
