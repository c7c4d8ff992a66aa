"""Key values in JSON, exactly: what a ledger chunk's bounds hold survives a store and a reload.

Design note. Chunk bounds name key values (a Cassandra chunk's partition keys, a PostgreSQL
chunk's range ends). JSON has numbers, strings, lists and objects; keys are also uuids, inets,
decimals, dates, timestamps, blobs, tuples. ``json.dumps`` refuses most of them (a uuid key once
left a run with no Cassandra plan at all) and silently turns a tuple into a list. So every value
JSON cannot hold as itself becomes a tagged object ``{"$k": <tag>, "v": <text>}`` and is rebuilt
on load. Plain ints, floats, strings, booleans and nulls stay as they are, so the ledger stays
readable in ``psql``.

Invariants: ``decode(encode(x)) == x`` with the same Python type, for every type below; a string
holding NUL (which PostgreSQL's ``jsonb`` refuses) and a non-finite float are tagged too; an
object that happens to carry the tag key is itself wrapped, so no user value is ever mistaken for
a tag.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import math
import uuid
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

TAG = "$k"

_IP_TYPES = (ipaddress.IPv4Address, ipaddress.IPv6Address, ipaddress.IPv4Interface, ipaddress.IPv6Interface,
             ipaddress.IPv4Network, ipaddress.IPv6Network)


class KeyCodecError(TypeError):
    """A value that cannot be stored as a key (its type is named)."""


def encode(value: Any) -> Any:
    """``value`` as a JSON-native structure (dicts, lists, str, int, float, bool, None)."""
    cls = value.__class__
    if cls is int or cls is bool or value is None:
        return value
    if cls is str:
        return value if "\x00" not in value else {TAG: "str", "v": base64.b64encode(value.encode()).decode()}
    if cls is list:
        return [encode(v) for v in value]
    if cls is dict:
        out = {k: encode(v) for k, v in value.items()}
        if TAG in value or not all(isinstance(k, str) for k in value):
            return {TAG: "dict", "v": [[encode(k), encode(v)] for k, v in value.items()]}
        return out
    if cls is float:
        return value if math.isfinite(value) else {TAG: "float", "v": repr(value)}
    if cls is tuple:
        return {TAG: "tuple", "v": [encode(v) for v in value]}
    if isinstance(value, uuid.UUID):
        return {TAG: "uuid", "v": str(value)}
    if isinstance(value, Decimal):
        return {TAG: "decimal", "v": str(value)}
    if isinstance(value, datetime):  # before date: a datetime is a date
        return {TAG: "datetime", "v": value.isoformat()}
    if isinstance(value, date):
        return {TAG: "date", "v": value.isoformat()}
    if isinstance(value, time):
        return {TAG: "time", "v": value.isoformat()}
    if isinstance(value, bytes | bytearray | memoryview):
        return {TAG: "bytes", "v": bytes(value).hex()}
    if isinstance(value, _IP_TYPES):
        return {TAG: type(value).__name__, "v": str(value)}
    if isinstance(value, int):  # IntEnum and friends: their value
        return int(value)
    if isinstance(value, str):
        return encode(str(value))
    if hasattr(value, "date") and type(value).__module__.startswith("cassandra"):  # cassandra.util.Date
        return {TAG: "date", "v": value.date().isoformat()}
    raise KeyCodecError(f"cannot store a key value of type {type(value).__module__}.{type(value).__qualname__}")


_DECODERS: dict[str, Any] = {
    "str": lambda v: base64.b64decode(v).decode(),
    "float": float,
    "tuple": lambda v: tuple(decode(x) for x in v),
    "dict": lambda v: {decode(k): decode(x) for k, x in v},
    "uuid": uuid.UUID,
    "decimal": Decimal,
    "datetime": datetime.fromisoformat,
    "date": date.fromisoformat,
    "time": time.fromisoformat,
    "bytes": bytes.fromhex,
    **{t.__name__: t for t in _IP_TYPES},
}


def _tagged(obj: dict[str, Any]) -> Any:
    tag = obj.get(TAG)
    if tag is None or len(obj) != 2 or "v" not in obj:
        return obj
    try:
        return _DECODERS[tag](obj["v"])
    except KeyError as exc:
        raise KeyCodecError(f"unknown key tag {tag!r}") from exc


def decode(value: Any) -> Any:
    """The inverse of ``encode`` on an already parsed JSON structure."""
    if isinstance(value, list):
        return [decode(v) for v in value]
    if isinstance(value, dict):
        if TAG in value:
            return _tagged(value)
        return {k: decode(v) for k, v in value.items()}
    return value


def dumps(value: Any) -> str:
    """``encode`` then JSON text (for a ``jsonb`` parameter)."""
    return json.dumps(encode(value), separators=(",", ":"), allow_nan=False)


def loads(text: str) -> Any:
    """JSON text back to values: tags are rebuilt by the C parser's object hook, bottom-up."""
    return json.loads(text, object_hook=_hook)


def _hook(obj: dict[str, Any]) -> Any:
    # Inner objects arrive decoded already (the parser calls the hook bottom-up): only this
    # object's own tag is left to rebuild.
    if TAG in obj and len(obj) == 2 and "v" in obj:
        tag = obj[TAG]
        v = obj["v"]
        if tag == "tuple":
            return tuple(v)
        if tag == "dict":
            return {k: x for k, x in v}
        try:
            return _DECODERS[tag](v)
        except KeyError as exc:
            raise KeyCodecError(f"unknown key tag {tag!r}") from exc
    return obj
