"""A Cassandra table as the copy sees it: its key columns in key order, its other columns, which of
them are non-frozen collections, and the session to read its cells with (ADR 11)."""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tenant_migration.cassandra.schema import table_columns

if TYPE_CHECKING:
    from cassandra.cluster import Session

from tenant_migration.cassandra.pipeline import (  # noqa: F401  (re-exported: the old home of these names)
    CopyOptions,
    CopyStats,
    RetryExhausted,
    Writer,
    _retryable,
    _server_failure,
    _ServerFailure,
    _tuple_profile,
    backoff_delay,
    iter_pages,
)

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------- table shape


@dataclass(frozen=True)
class TableShape:
    keyspace: str
    table: str
    partition_key: tuple[str, ...]
    clustering_key: tuple[str, ...]
    regular: tuple[str, ...]
    # The regular columns that are non-frozen collections, with their kind ("set", "list", "map"):
    # each element is a cell of its own, with its own WRITETIME and TTL (module ``collections`` note).
    collections: tuple[tuple[str, str], ...] = ()

    @property
    def primary_key(self) -> tuple[str, ...]:
        return self.partition_key + self.clustering_key

    def kind(self, column: str) -> str | None:
        """``set``, ``list`` or ``map`` for a non-frozen collection column, else None."""
        return dict(self.collections).get(column)

    @property
    def qualified(self) -> str:
        return f"{cql_ident(self.keyspace)}.{cql_ident(self.table)}"

    @property
    def partitions_in(self) -> str:
        """The ``WHERE`` of a read of some partitions: an ``IN ?`` per partition-key column (bound
        to a ``ReadGroup``'s lists; their cartesian product is the partitions read)."""
        return " AND ".join(f"{cql_ident(c)} IN ?" for c in self.partition_key)


def table_shape(session: Session, keyspace: str, table: str) -> TableShape:
    """Key columns in key order, the other columns (regular and static) by name. ``KeyError``
    when the table does not exist."""
    return shape_of(keyspace, table, table_columns(session, keyspace, table))


def shape_of(keyspace: str, table: str, cols: list[tuple[str, str, int, str]]) -> TableShape:
    if not cols:
        raise KeyError(f"{keyspace}.{table}")
    pk = tuple(c[0] for c in sorted((c for c in cols if c[1] == "partition_key"), key=lambda c: c[2]))
    ck = tuple(c[0] for c in sorted((c for c in cols if c[1] == "clustering"), key=lambda c: c[2]))
    regular = tuple(sorted(c[0] for c in cols if c[1] not in ("partition_key", "clustering")))
    kinds = {c[0]: collection_kind(c[3]) for c in cols}
    return TableShape(keyspace, table, pk, ck, regular, tuple((c, k) for c in regular if (k := kinds[c])))


def collection_kind(cql_type: str) -> str | None:
    """``set``, ``list`` or ``map`` when ``cql_type`` is a non-frozen collection (``frozen<...>``
    is one value with one writetime, like a scalar)."""
    for kind in ("set", "list", "map"):
        if cql_type.startswith(kind + "<"):
            return kind
    return None


_PY_SESSIONS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_PY_LOCK = threading.Lock()


def reader_for(session: Session, shape: TableShape) -> Session:
    """The session to read ``shape``'s cells with. ``TTL(c)`` of a non-frozen collection is a list
    holding a null for each element without a TTL, which the driver's compiled decoder cannot read
    (``Length must be positive``, and the connection is left defunct): such a table is read through
    a second session of the same cluster with the pure-Python decoder (about 2x the decode time,
    for those tables only). Made once per session, shut down with its cluster."""
    if not shape.collections:
        return session
    from cassandra.protocol import _ProtocolHandler

    with _PY_LOCK:
        py = _PY_SESSIONS.get(session)
        if py is None:
            py = session.cluster.connect()
            py.client_protocol_handler = _ProtocolHandler
            _PY_SESSIONS[session] = py
    return py


def newest(writetime: Any) -> Any:
    """A cell's writetime, or a collection's newest element's (its ``WRITETIME`` is a list)."""
    return max(writetime) if isinstance(writetime, list) else writetime


def cql_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'

