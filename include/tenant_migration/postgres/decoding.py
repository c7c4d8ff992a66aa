"""Reading the change stream: LSNs, and the ``test_decoding`` text format parsed into changes and
transactions (``postgres.cdc`` applies them). Values are single-quoted with doubled quotes as
escapes, numbers and booleans bare; they stay text, bound with psycopg's *unknown* type on the
target."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

log = logging.getLogger(__name__)


Op = Literal["INSERT", "UPDATE", "DELETE", "TRUNCATE"]
Row = dict[str, str | None]


class CdcError(RuntimeError):
    """Change capture cannot proceed safely (a foreign slot, a truncate of a shared table, ...)."""


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
