"""``python -m tenant_migration.discover``: draft a tenant map (the README: Migrating your own platform)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tenant_migration.discover import DiscoveryError, discover
from tenant_migration.endpoints import CassandraEndpoint, PgEndpoint


def _connection(conn_id: str, path: Path | None) -> dict[str, Any]:
    """A connection by id: from a connections file (the local stack's ``.stack/connections.json``,
    ``AIRFLOW_CONN_*``-shaped), else through Airflow (environment, secrets backend, metadata DB)."""
    if path is not None:
        conns = json.loads(path.read_text())
        if conn_id not in conns:
            raise DiscoveryError(f"connection {conn_id!r} is not in {path} (it has {', '.join(sorted(conns))})")
        return dict(conns[conn_id])
    try:
        from airflow.sdk import BaseHook

        c = BaseHook.get_connection(conn_id)
    except Exception as exc:
        raise DiscoveryError(f"connection {conn_id!r} is not defined ({type(exc).__name__}); define it "
                             "(AIRFLOW_CONN_*), or name a connections file with --connections") from None
    return {"host": c.host, "port": c.port, "login": c.login, "password": c.password, "schema": c.schema}


def _choices(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        table, sep, column = pair.partition("=")
        if not sep or not table or not column:
            raise DiscoveryError(f"--choose {pair!r}: expected TABLE=COLUMN (the hop column to keep)")
        out[table] = column
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tenant_migration.discover",
        description="Draft a platform's tenant map from its catalogs' foreign keys (read-only). The YAML goes to "
                    "stdout (or --out), what was placed and refused, with the reasons, to stderr.")
    parser.add_argument("--connection", required=True, help="PostgreSQL connection id (the replica's read-only role)")
    parser.add_argument("--schema", required=True, help="the platform's schema")
    parser.add_argument("--tenant-table", required=True, help="the tenant root table (one row per tenant)")
    parser.add_argument("--cassandra-connection", help="Cassandra connection id, to draft the keyspace's tables")
    parser.add_argument("--keyspace", help="the platform's keyspace (with --cassandra-connection)")
    parser.add_argument("--platform", help="the platform's name in the map (default: the schema)")
    parser.add_argument("--choose", action="append", default=[], metavar="TABLE=COLUMN",
                        help="for a table reached two ways, the hop column to keep (repeatable)")
    parser.add_argument("--connections", type=Path, help="a connections file (default: Airflow's connections)")
    parser.add_argument("--out", type=Path, help="write the YAML here instead of stdout")
    args = parser.parse_args(argv)
    try:
        if bool(args.keyspace) != bool(args.cassandra_connection):
            raise DiscoveryError("--keyspace and --cassandra-connection go together")
        c = _connection(args.connection, args.connections)
        pg = PgEndpoint(str(c["host"]), int(c.get("port") or 5432), str(c["login"]), c.get("password") or "",
                        str(c["schema"]))
        session_cm = None
        if args.cassandra_connection:
            cc = _connection(args.cassandra_connection, args.connections)
            session_cm = CassandraEndpoint(str(cc["host"]), int(cc.get("port") or 9042), "").session()
        with pg.connect(autocommit=True, application_name="tenant_migration.discover") as conn:
            conn.execute("SET default_transaction_read_only = on")
            if session_cm is None:
                found = discover(conn, args.schema, args.tenant_table, args.platform or args.schema,
                                 source=f"{pg.label} as {pg.user}", choose=_choices(args.choose))
            else:
                with session_cm as session:
                    found = discover(conn, args.schema, args.tenant_table, args.platform or args.schema,
                                     source=f"{pg.label} as {pg.user}", session=session, keyspace=args.keyspace,
                                     choose=_choices(args.choose))
    except (DiscoveryError, ConnectionError) as exc:
        print(f"discover: {exc}", file=sys.stderr)
        return 1
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(found.text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(found.text)
    print(found.summary(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
