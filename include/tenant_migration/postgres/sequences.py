"""Sequences and identities on the target, advanced past the source before the flip.

Rows are copied with their keys, but a sequence is not a row: on the target every ``serial``,
``GENERATED ... AS IDENTITY`` and ``DEFAULT nextval(...)`` column's sequence is still where the
schema's creation left it (``last_value`` 1), and the tenant's first insert on its own deployment
after the flip would take a key that a copied row already holds.

So, in the final catch-up (registrations suspended, the change stream applied up to now), each
sequence that a column of the tenant's tables (and of the shared tables copied with them) draws
from is set on the target to

    max(the source sequence's next value, the target column's maximum + 1) + headroom

``headroom`` (the ``sequence_headroom`` param) leaves room for the stragglers: rows the shared
platform still takes after the flip draw keys from the *source* sequence, and the drain copies them
with those keys. A sequence is only ever moved forward (a clear or a rerun is a no-op or a further
step). ``gate_pre_flip`` checks every one of them (``check``), and ``gate_final`` that no target
sequence would hand out a key at or below its column's maximum.

The source is the primary itself, read with the change stream's read-only role (the replica may
still be detached or behind).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from psycopg import sql

if TYPE_CHECKING:
    import psycopg

# Every sequence a column of the given tables draws from: owned ones (serial: deptype 'a',
# identity: 'i') and those a column default calls (nextval('s')): deptype 'n' of the default.
_USES = """
SELECT c.relname, a.attname, sn.nspname, s.relname, a.attidentity <> '', seq.seqincrement, seq.seqmax
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  JOIN LATERAL (
        SELECT d.objid AS seqid FROM pg_depend d
         WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
           AND d.refobjid = c.oid AND d.refobjsubid = a.attnum AND d.deptype IN ('a', 'i')
        UNION
        SELECT d.refobjid FROM pg_attrdef ad
          JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid
                          AND d.refclassid = 'pg_class'::regclass
         WHERE ad.adrelid = c.oid AND ad.adnum = a.attnum
       ) u ON true
  JOIN pg_class s ON s.oid = u.seqid AND s.relkind = 'S'
  JOIN pg_namespace sn ON sn.oid = s.relnamespace
  JOIN pg_sequence seq ON seq.seqrelid = s.oid
 WHERE n.nspname = %s AND c.relname = ANY(%s)
 ORDER BY 1, 2, 3, 4
"""


class SequenceError(RuntimeError):
    """A sequence cannot be set past the source (its maximum is too small for the headroom)."""


@dataclass(frozen=True)
class SequenceUse:
    table: str
    column: str
    schema: str  # the sequence's
    sequence: str
    identity: bool
    increment: int
    max_value: int

    @property
    def label(self) -> str:
        return f"{self.schema}.{self.sequence} ({self.table}.{self.column})"

    def ident(self) -> sql.Composable:
        return sql.Identifier(self.schema, self.sequence)


@dataclass
class SequenceState:
    """One sequence: the next value each side would hand out, the target column's maximum, and
    what ``advance`` set (None when it was far enough already)."""

    use: SequenceUse
    source_next: int
    target_next: int
    target_max: int | None
    set_to: int | None = None

    def ok(self, headroom: int = 0) -> bool:
        """The target hands out no key the source gave (plus ``headroom``) or a target row holds."""
        return self.target_next >= self.needed(headroom)

    def needed(self, headroom: int) -> int:
        floor = self.source_next if self.target_max is None else max(self.source_next, self.target_max + 1)
        return floor + headroom

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["use"] = self.use.label
        return out


def sequence_uses(conn: psycopg.Connection, schema: str, tables: Iterable[str]) -> list[SequenceUse]:
    """The sequences the columns of ``schema.tables`` draw from, from ``conn``'s catalog."""
    return [SequenceUse(r[0], r[1], r[2], r[3], bool(r[4]), int(r[5]), int(r[6]))
            for r in conn.execute(_USES, (schema, list(tables))).fetchall()]


def next_value(conn: psycopg.Connection, use: SequenceUse) -> int:
    """What ``nextval`` would return now (without calling it)."""
    row = conn.execute(sql.SQL("SELECT last_value, is_called FROM {}").format(use.ident())).fetchone()
    assert row is not None
    return int(row[0]) + (use.increment if row[1] else 0)


def column_max(conn: psycopg.Connection, schema: str, use: SequenceUse) -> int | None:
    row = conn.execute(sql.SQL("SELECT max({}) FROM {}").format(
        sql.Identifier(use.column), sql.Identifier(schema, use.table))).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def states(source: psycopg.Connection, target: psycopg.Connection, schema: str,
           tables: Sequence[str]) -> list[SequenceState]:
    """Each sequence of the target's ``tables`` with both sides' next values. A sequence missing
    on the source (the target's schema differs) is a ``SequenceError``: schema drift the preflight
    should have refused."""
    out = []
    src_uses = {(u.table, u.column): u for u in sequence_uses(source, schema, tables)}
    for use in sequence_uses(target, schema, tables):
        src = src_uses.get((use.table, use.column))
        if src is None:
            raise SequenceError(f"{use.label}: the column draws from a sequence on the target but from none on the "
                                "source")
        out.append(SequenceState(use, next_value(source, src), next_value(target, use), column_max(target, schema, use)))
    return out


def advance(source: psycopg.Connection, target: psycopg.Connection, schema: str, tables: Sequence[str],
            headroom: int) -> list[SequenceState]:
    """Set each target sequence past the source (see the module note); only ever forward."""
    result = states(source, target, schema, tables)
    for st in result:
        if st.ok(headroom):
            continue
        if st.use.increment < 0:
            raise SequenceError(f"{st.use.label}: a descending sequence (increment {st.use.increment}) is not "
                                "supported; set it on the target by hand before the flip")
        value = st.needed(headroom)
        if value > st.use.max_value:
            raise SequenceError(f"{st.use.label}: the source is at {st.source_next} and the target column's maximum "
                                f"is {st.target_max}; with a headroom of {headroom} the sequence would pass its "
                                f"maximum {st.use.max_value}: lower 'sequence_headroom'")
        target.execute(sql.SQL("SELECT setval({}::regclass, %s, false)").format(sql.Literal(_quoted(st.use))), (value,))
        st.set_to, st.target_next = value, value
    return result


def _quoted(use: SequenceUse) -> str:
    """The sequence's name as ``setval``'s regclass text wants it (each part double-quoted)."""
    return ".".join('"' + p.replace('"', '""') + '"' for p in (use.schema, use.sequence))
