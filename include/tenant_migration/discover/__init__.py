"""Discovery: draft a platform's tenant map from its live catalogs.

``python -m tenant_migration.discover --connection <id> --schema S --tenant-table T`` walks the
foreign keys of schema ``S`` from the tenant root ``T`` (``placement``), and, given a Cassandra
connection and a keyspace, matches each table's partition key to the relational rows that supply
it (``cassandra``). The output is a tenant map in YAML (``render``), checked by the same loader a
profile's ``tenant_map`` goes through before it is printed, and a summary of what was placed and
what was refused, with the reasons. Read-only: catalog tables only (the README: Migrating your own platform).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
import yaml

from tenant_migration.discover.cassandra import KeyspaceDraft, draft_keyspace
from tenant_migration.discover.placement import Catalog, DiscoveryError, Draft, place
from tenant_migration.discover.read import cassandra_tables, postgres_catalog
from tenant_migration.discover.render import render
from tenant_migration.tenant_map import TenantMap, parse_tenant_map

__all__ = ["Discovery", "DiscoveryError", "discover", "draft_from"]


@dataclass(frozen=True)
class Discovery:
    draft: Draft
    keyspace: KeyspaceDraft | None
    text: str  # the tenant map's YAML
    tenant_map: TenantMap  # the text, loaded back
    seconds: float

    def summary(self) -> str:
        d, lines = self.draft, []
        lines.append(f"schema {d.schema}: {len(d.placed)} tenant tables placed from root {d.root} "
                     f"({', '.join(d.placed)}); {len(d.shared)} shared ({', '.join(d.shared) or 'none'})")
        for r in d.refused:
            lines.append(f"  {'left behind' if r.kind == 'no-path' else 'refused'} {d.schema}.{r.table}: {r.reason}")
        for note in d.notes:
            lines.append(f"  note: {note}")
        if self.keyspace is not None:
            k = self.keyspace
            lines.append(f"keyspace {k.keyspace}: {len(k.tables)} tables placed"
                         + "".join(f"\n  {n}: partitions from {s.partitions_from_table} ({', '.join(s.partitions_from_columns)})"
                                   + (f", day bucket {s.day_column}" if s.day_column else "") for n, s in k.tables.items())
                         + f"\n  retention_days {k.retention_days}")
            for r in k.refused:
                lines.append(f"  refused {k.keyspace}.{r.table}: {r.reason}")
        lines.append(f"discovered in {self.seconds:.2f} s")
        return "\n".join(lines)


def draft_from(cat: Catalog, root: str, platform: str, source: str, *, choose: Mapping[str, str] | None = None,
               keyspace: str | None = None, cql_tables: list[Any] | None = None,
               started: float | None = None) -> Discovery:
    """The draft of catalogs already read (the pure half, for tests and for ``discover``)."""
    started = time.monotonic() if started is None else started
    draft = place(cat, root, choose)
    ks = draft_keyspace(keyspace, cql_tables or [], draft, cat) if keyspace else None
    text = render(draft, platform, source, ks)
    return Discovery(draft, ks, text, check_text(text), time.monotonic() - started)


def check_text(text: str) -> TenantMap:
    """The draft as a profile's ``tenant_map`` is loaded: its shape (``profile.TenantMapDoc``),
    then its meaning (``parse_tenant_map``). A failure here is a defect of discovery."""
    from tenant_migration.profile import TenantMapDoc

    doc = yaml.safe_load(text)
    TenantMapDoc.model_validate(doc)
    return parse_tenant_map(doc)


def discover(conn: psycopg.Connection, schema: str, root: str, platform: str, *, source: str = "",
             session: Any = None, keyspace: str | None = None,
             choose: Mapping[str, str] | None = None) -> Discovery:
    """Read the catalogs (PostgreSQL on ``conn``; Cassandra on ``session`` when a keyspace is named)
    and draft the tenant map."""
    started = time.monotonic()
    cat = postgres_catalog(conn, schema)
    if not cat.tables:
        raise DiscoveryError(f"schema {schema!r}: no tables (it does not exist, or this role may not see it)")
    cql = None
    if keyspace:
        if session is None:
            raise DiscoveryError("a keyspace needs a Cassandra connection (--cassandra-connection)")
        cql = cassandra_tables(session, keyspace)
        if not cql:
            raise DiscoveryError(f"keyspace {keyspace!r}: no tables (it does not exist on this cluster)")
    return draft_from(cat, root, platform, source or schema, choose=choose, keyspace=keyspace, cql_tables=cql,
                      started=started)
