"""Partition-key values as the Cassandra driver sends and returns them, from relational rows.

Design note. A tenant's partition keys come from PostgreSQL rows (``partitions_from``), but a
value is only useful if it is the exact Python value the driver binds *and* reads back for the
Cassandra column's type: the plan's keys are compared with the keys Cassandra returns (the
fingerprints, the ownership check). PostgreSQL and the driver disagree on several types: an
``inet`` is an ``ipaddress`` object from psycopg and a ``str`` from the driver, a ``timestamptz``
an aware datetime with microseconds from psycopg and a naive UTC datetime in milliseconds from the
driver, a uuid may be stored as text on one side. ``converter(cql_type)`` maps any of them onto
the driver's form, once, when the plan is made; the ledger stores them exactly (``keycodec``).

``supported(cql_type)`` tells the preflight which key types can be planned: collections other
than tuples (frozen lists, sets, maps) and durations cannot, and are refused before anything is
written.
"""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

Converter = Callable[[Any], Any]

_TEXT = {"text", "varchar", "ascii"}
_INTS = {"int", "bigint", "smallint", "tinyint", "varint", "counter"}
_FLOATS = {"double", "float"}


class UnsupportedKeyType(ValueError):
    """A partition-key column type the plan cannot derive from relational rows."""


def _split_args(inner: str) -> list[str]:
    """``"int, frozen<tuple<text, int>>"`` -> ``["int", "frozen<tuple<text, int>>"]``."""
    out: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in inner:
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if cur:
        out.append("".join(cur).strip())
    return out


def _unwrap(cql_type: str) -> str:
    t = cql_type.strip()
    while t.startswith("frozen<") and t.endswith(">"):
        t = t[len("frozen<"):-1].strip()
    return t


def _to_uuid(v: Any) -> uuid.UUID:
    return v if isinstance(v, uuid.UUID) else uuid.UUID(str(v))


def _to_inet(v: Any) -> str:
    # psycopg: ip_address, or ip_interface when the value has a prefix; the driver: the address text.
    if isinstance(v, ipaddress.IPv4Interface | ipaddress.IPv6Interface):
        return str(v.ip)
    return str(ipaddress.ip_address(str(v).split("/")[0]))


def _to_decimal(v: Any) -> Decimal:
    return v if isinstance(v, Decimal) else Decimal(str(v))


def _to_date(v: Any) -> date:
    if isinstance(v, datetime):
        return (v.astimezone(UTC) if v.tzinfo else v).date()
    if isinstance(v, date):
        return v
    if hasattr(v, "date"):  # cassandra.util.Date
        return v.date()  # type: ignore[no-any-return]
    return date.fromisoformat(str(v))


def _to_timestamp(v: Any) -> datetime:
    if not isinstance(v, datetime):
        v = datetime.fromisoformat(str(v)) if not isinstance(v, date) else datetime(v.year, v.month, v.day)
    if v.tzinfo is not None:
        v = v.astimezone(UTC).replace(tzinfo=None)
    # The driver sends whole milliseconds (it truncates) and reads back naive UTC.
    return v.replace(microsecond=v.microsecond // 1000 * 1000)


def _to_blob(v: Any) -> bytes:
    if isinstance(v, bytes | bytearray | memoryview):
        return bytes(v)
    if isinstance(v, str) and v.startswith("\\x"):
        return bytes.fromhex(v[2:])
    raise TypeError(f"a blob key needs bytes, not {type(v).__name__}")


def _to_text(v: Any) -> str:
    return v.isoformat() if isinstance(v, date) else str(v)


def _to_bool(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("t", "true", "1", "yes", "on")
    return bool(v)


def converter(cql_type: str) -> Converter:
    """The function that turns a relational value into the driver's value of ``cql_type``
    (``None`` stays ``None``). ``UnsupportedKeyType`` for a type no plan can hold."""
    fn = _convert(_unwrap(cql_type), cql_type)
    return lambda v: None if v is None else fn(v)


# The Python type a value already has when it needs no conversion for a CQL type (a bigint from
# PostgreSQL is an int already): ``convert_bases`` leaves such values alone (a plan converts tens of
# thousands of bases per gate: 0.2 s through the converters, for nothing, on the demo tenant).
_NATIVE: dict[str, type] = {"uuid": uuid.UUID, "timeuuid": uuid.UUID, "inet": str, "decimal": Decimal,
                            "date": date, "blob": bytes, "boolean": bool, **dict.fromkeys(_TEXT, str),
                            **dict.fromkeys(_INTS, int), **dict.fromkeys(_FLOATS, float)}


def native_type(cql_type: str) -> type | None:
    """The type whose values ``converter(cql_type)`` returns unchanged (None: always convert)."""
    return _NATIVE.get(_unwrap(cql_type))


def _convert(t: str, cql_type: str) -> Converter:
    simple: dict[str, Converter] = {"uuid": _to_uuid, "timeuuid": _to_uuid, "inet": _to_inet,
                                    "decimal": _to_decimal, "date": _to_date, "timestamp": _to_timestamp,
                                    "blob": _to_blob, "boolean": _to_bool}
    if t in simple:
        fn = simple[t]
    elif t in _TEXT:
        fn = _to_text
    elif t in _INTS:
        fn = int
    elif t in _FLOATS:
        fn = float
    elif t.startswith("tuple<") and t.endswith(">"):
        parts = [converter(a) for a in _split_args(t[len("tuple<"):-1])]

        def fn(v: Any) -> tuple[Any, ...]:
            values = tuple(v)
            if len(values) != len(parts):
                raise ValueError(f"a {t} key needs {len(parts)} values, got {len(values)}")
            return tuple(p(x) for p, x in zip(parts, values, strict=True))
    elif t in ("time",):
        fn = _identity
    else:
        raise UnsupportedKeyType(f"partition-key type {cql_type} cannot be planned from relational rows "
                                 "(supported: scalars, uuid/timeuuid, inet, decimal, date, timestamp, blob, tuples)")
    return fn


def _identity(v: Any) -> Any:
    return v


def supported(cql_type: str) -> bool:
    try:
        converter(cql_type)
    except UnsupportedKeyType:
        return False
    return True


def column_types(columns: Sequence[tuple[str, str, int, str]]) -> dict[str, str]:
    """Name -> CQL type from ``schema.table_columns`` rows."""
    return {c[0]: c[3] for c in columns}


def base_converters(types: dict[str, str], base_columns: Sequence[str]) -> list[Converter]:
    """One converter per base column (the partition key without the day column); each carries the
    type its values need no conversion from (``native``)."""
    missing = [c for c in base_columns if c not in types]
    if missing:
        raise KeyError(f"partition-key columns {missing} are not in the table")
    out: list[Converter] = []
    for c in base_columns:
        fn = converter(types[c])
        fn.native = native_type(types[c])  # type: ignore[attr-defined]
        out.append(fn)
    return out


def convert_bases(bases: Sequence[Sequence[Any]], convs: Sequence[Converter]) -> list[tuple[Any, ...]]:
    """Each base tuple with its values in the driver's form. A column whose every value already has
    its converter's native type (ints for a bigint, say) is left as it is."""
    if not bases:
        return []
    columns = list(zip(*bases, strict=True))
    for i, f in enumerate(convs):
        native = getattr(f, "native", None)
        if native is not None and all(v.__class__ is native for v in columns[i]):
            continue
        columns[i] = tuple(f(v) for v in columns[i])
    return list(zip(*columns, strict=True))
