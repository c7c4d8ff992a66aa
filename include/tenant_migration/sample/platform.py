"""The sample platform on the local stack: schemas and roles on both sides, data on the source,
the moto-held AWS control plane, and the demo reset. Called by ``python -m tenant_migration.stack``.
"""

from __future__ import annotations

import json
import time

import psycopg

from tenant_migration.endpoints import AwsEndpoint
from tenant_migration.sample import aws, generate
from tenant_migration.stack import airflow_env, postgres
from tenant_migration.stack.topology import Topology


def _say(msg: str) -> None:
    print(f"[platform] {msg}", flush=True)


def _aws(topo: Topology) -> AwsEndpoint:
    return AwsEndpoint("us-east-1", topo.moto_url, "testing", "testing")


def _slugs(topo: Topology) -> list[str]:
    with psycopg.connect(postgres.superuser_dsn(topo, topo.pg_primary, topo.pg_dbname)) as conn:
        exists = conn.execute("SELECT to_regclass('platform.tenants') IS NOT NULL").fetchone()
        if not exists or not exists[0]:
            return []
        return [r[0] for r in conn.execute("SELECT slug FROM platform.tenants ORDER BY tenant_id")]


def bootstrap(topo: Topology) -> None:
    """Schemas and least-privilege roles on the primary (reaching the standby) and the target,
    keyspaces on both Cassandra nodes, the DNS zone and RDS instances in moto. Idempotent."""
    secrets = airflow_env.role_passwords(topo)
    for server in (topo.pg_primary, topo.pg_target):
        generate.apply_roles(postgres.superuser_dsn(topo, server, topo.pg_dbname), secrets)
    enable_prewarm(topo)
    for node in topo.cassandra_nodes:
        session = generate._cassandra_session(node.host, node.native_port)
        try:
            generate.apply_cql_schema(session)
        finally:
            generate._close(session)
    seed_aws(topo, reset=False)


def enable_prewarm(topo: Topology) -> None:
    """pg_prewarm is not a trusted extension: a superuser creates it where the warm-up runs."""
    from tenant_migration.postgres.warmup import PREWARM_EXTENSION

    with psycopg.connect(postgres.superuser_dsn(topo, topo.pg_target, topo.pg_dbname), autocommit=True) as conn:
        conn.execute(PREWARM_EXTENSION)


def seed_aws(topo: Topology, reset: bool) -> None:
    ep = _aws(topo)
    changes = aws.seed_dns(ep.client("route53"), _slugs(topo), reset=reset)
    aws.seed_rds(ep.client("rds"))
    _say(f"route53 zone {aws.ZONE} seeded ({changes} record upserts), rds instances present")


def load_data(topo: Topology, preset: str, seed: int, force: bool = False) -> None:
    """Generate (or reuse) the dataset on the source; ``force`` regenerates even an intact one
    (tests that change the source on purpose restore it this way)."""
    started = time.monotonic()
    result = generate.generate(
        preset, seed, postgres.superuser_dsn(topo, topo.pg_primary, topo.pg_dbname),
        topo.cassandra_source.host, topo.cassandra_source.native_port, force=force,
    )
    _say(generate.format_counts(result))
    if not result.reused:
        generate.apply_schema_to_target(
            postgres.superuser_dsn(topo, topo.pg_target, topo.pg_dbname),
            topo.cassandra_target.host, topo.cassandra_target.native_port,
        )
        # Roles grant on the tables: re-apply after the target's schema was re-created.
        generate.apply_roles(postgres.superuser_dsn(topo, topo.pg_target, topo.pg_dbname),
                             airflow_env.role_passwords(topo))
        enable_prewarm(topo)
    seed_aws(topo, reset=not result.reused)
    wait_standby_caught_up(topo)
    (topo.state_dir / "dataset.json").write_text(json.dumps({"preset": preset, "seed": seed}))
    _say(f"dataset {preset} ready in {time.monotonic() - started:.1f}s")


def wait_standby_caught_up(topo: Topology, timeout: float = 300.0) -> None:
    """The standby replays everything the primary has written (the generator writes a lot)."""
    with psycopg.connect(postgres.superuser_dsn(topo, topo.pg_primary, topo.pg_dbname), autocommit=True) as p:
        row = p.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert row is not None
        lsn = row[0]
    deadline = time.monotonic() + timeout
    with psycopg.connect(postgres.superuser_dsn(topo, topo.pg_standby, topo.pg_dbname), autocommit=True) as s:
        while True:
            state = s.execute("SELECT pg_get_wal_replay_pause_state()").fetchone()
            if state and state[0] != "not paused":
                s.execute("SELECT pg_wal_replay_resume()")
            done = s.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)).fetchone()
            if done and done[0]:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"standby did not replay up to {lsn} within {timeout:.0f}s")
            time.sleep(0.2)


def demo_reset(topo: Topology) -> None:
    """Empty the target's tenant data and point every tenant's DNS back at the shared platform."""
    generate.reset_target(
        postgres.superuser_dsn(topo, topo.pg_target, topo.pg_dbname),
        topo.cassandra_target.host, topo.cassandra_target.native_port,
    )
    with psycopg.connect(postgres.superuser_dsn(topo, topo.pg_target, topo.pg_dbname), autocommit=True) as conn:
        if _has_ledger(conn):
            # A demo run killed half-way must not block the next one (one live run per tenant).
            conn.execute("UPDATE tm_control.runs SET status = 'aborted', finished_at = clock_timestamp() "
                         "WHERE status = 'running'")
    seed_aws(topo, reset=True)
    wait_standby_caught_up(topo)
    _say("target emptied, DNS reset to the shared platform")


def _has_ledger(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT to_regclass('tm_control.runs') IS NOT NULL").fetchone()
    return bool(row and row[0])
