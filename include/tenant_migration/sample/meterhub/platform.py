"""meterhub on the local stack (a hosted platform of ``python -m tenant_migration.stack``): its
schema and grants on the primary (reaching the standby) and the target, its keyspace on both
Cassandra nodes, its admin API as a process on loopback, its DNS records in moto, its dataset, and
the reset between demo runs."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psycopg

from tenant_migration.endpoints import AwsEndpoint
from tenant_migration.sample.meterhub import PROFILES as PROFILES_DIR
from tenant_migration.sample.meterhub import admin_api, generate
from tenant_migration.stack import airflow_env, postgres
from tenant_migration.stack.common import (
    StackError,
    as_service_user,
    own_dir,
    read_pid,
    require_port_free,
    stop_pidfile_process,
    wait_for,
)
from tenant_migration.stack.topology import Topology

NAME = "meterhub"
PROFILES = PROFILES_DIR  # the folder of its profile: the demo runs with it
ADMIN_CONN = "meterhub_admin"
ZONE = "iot.example.test."  # the run's default zone (MigrationSpec.dns_zone)
SHARED = {"ingest-pool": "127.0.0.2", "portal": "127.0.0.1"}
DEDICATED = "127.0.0.3"


def _say(msg: str) -> None:
    print(f"[meterhub] {msg}", flush=True)


def _dir(topo: Topology) -> Path:
    return topo.state_dir / "meterhub"


def admin_port(topo: Topology) -> int:
    return topo.moto_port + 20  # shifts with the stack's slot like every port


def _credentials(topo: Topology) -> dict[str, str]:
    path = _dir(topo) / "credentials.json"
    if not path.exists():
        own_dir(_dir(topo))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"user": "migration-switch", "password": secrets.token_urlsafe(24)}, fh)
        from tenant_migration.stack.common import is_root

        if is_root():  # the API runs as the service user and reads it
            import pwd

            from tenant_migration.stack.common import ensure_service_user

            user = pwd.getpwnam(ensure_service_user())
            os.chown(path, user.pw_uid, user.pw_gid)
    return dict(json.loads(path.read_text()))


def connections(topo: Topology) -> dict[str, dict[str, Any]]:
    """The Airflow connections the platform's profile names (its admin API)."""
    creds = _credentials(topo)
    return {ADMIN_CONN: admin_api.connection("127.0.0.1", admin_port(topo), creds["user"], creds["password"])}


# ------------------------------------------------------------------------------- the admin API


def _pidfile(topo: Topology) -> Path:
    return _dir(topo) / "admin_api.pid"


def _state_file(topo: Topology) -> Path:
    return _dir(topo) / "registrations.json"


def _answers(topo: Topology) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port(topo)}/", timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # 401: it answers
    except OSError:
        return False


def api_up(topo: Topology) -> None:
    """Start the admin API if it is not running (its state survives restarts: a file)."""
    own_dir(_dir(topo))
    own_dir(topo.logs_dir)
    _credentials(topo)
    if not _state_file(topo).exists():
        admin_api.register_orgs(_state_file(topo), [])
    if read_pid(_pidfile(topo)) is not None:
        if _answers(topo):
            return
        api_down(topo)  # ours, but not answering: start it again
    require_port_free("127.0.0.1", admin_port(topo), "meterhub admin API")
    log = topo.logs_dir / "meterhub-admin.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            as_service_user([sys.executable, "-m", "tenant_migration.sample.meterhub.admin_api",
                             "--port", str(admin_port(topo)), "--state", str(_state_file(topo)),
                             "--credentials", str(_dir(topo) / "credentials.json")]),
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])},
        )
    _pidfile(topo).write_text(str(proc.pid))
    wait_for(lambda: _answers(topo), 30, "meterhub admin API", log)


def api_down(topo: Topology) -> None:
    stop_pidfile_process(_pidfile(topo))


def down(topo: Topology) -> None:
    api_down(topo)


def status(topo: Topology) -> list[Any]:
    from tenant_migration.stack.common import ServiceStatus

    pid = read_pid(_pidfile(topo))
    return [ServiceStatus("meterhub-admin", f"127.0.0.1:{admin_port(topo)}", pid is not None and _answers(topo),
                          f"pid {pid}" if pid else "")]


# ------------------------------------------------------------------------------- the platform


def _dsn(topo: Topology, server: Any) -> str:
    return postgres.superuser_dsn(topo, server, topo.pg_dbname)


def _grants(topo: Topology, server: Any) -> None:
    generate.apply_pg_schema(_dsn(topo, server))
    with psycopg.connect(_dsn(topo, server), autocommit=True) as conn:
        for role, password in airflow_env.role_passwords(topo).items():
            conn.execute(psycopg.sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                psycopg.sql.Identifier(role), psycopg.sql.Literal(password)))
        conn.execute(psycopg.sql.SQL("GRANT CREATE ON DATABASE {} TO migration_writer").format(
            psycopg.sql.Identifier(topo.pg_dbname)))


def bootstrap(topo: Topology) -> None:
    """Schema and grants on both PostgreSQL sides, the keyspace on both nodes, the admin API, the
    DNS records of the orgs loaded so far. Idempotent."""
    for server in (topo.pg_primary, topo.pg_target):
        _grants(topo, server)
    from tenant_migration.postgres.warmup import PREWARM_EXTENSION

    with psycopg.connect(_dsn(topo, topo.pg_target), autocommit=True) as conn:
        conn.execute(PREWARM_EXTENSION)
    for node in topo.cassandra_nodes:
        generate.apply_cql_schema(node.host, node.native_port)
    api_up(topo)
    seed_dns(topo, reset=False)


def _handles(topo: Topology) -> list[tuple[int, str]]:
    with psycopg.connect(_dsn(topo, topo.pg_primary)) as conn:
        return [(int(r[0]), str(r[1])) for r in conn.execute("SELECT org_id, handle FROM hub.orgs ORDER BY org_id")]


def seed_dns(topo: Topology, reset: bool) -> int:
    """Shared and dedicated endpoints (A) and every org's names (CNAME to the shared ones; with
    ``reset`` back to them after a flip)."""
    from tenant_migration.cutover import dns
    from tenant_migration.profile import load
    from tenant_migration.sample import aws
    from tenant_migration.sample.meterhub import PROFILE

    r53 = AwsEndpoint("us-east-1", topo.moto_url, "testing", "testing").client("route53")
    zid = aws.ensure_zone(r53, ZONE)
    sets = dns.record_sets(r53, zid)
    weighted = {name for name, rrs in sets.items() if any("SetIdentifier" in rr for rr in rrs)}
    records = load(PROFILE).dns.records
    changes = [aws._upsert(f"{svc}.{ZONE}", "A", addr, 300) for svc, addr in SHARED.items()]
    plans = [p for _, handle in _handles(topo) for p in dns.tenant_records(records, ZONE, handle, "vpc")]
    for plan in plans:
        changes.append(aws._upsert(plan.tenant_target, "A", DEDICATED, 300))
        if (reset or plan.name not in sets) and plan.name not in weighted:
            changes.append(aws._upsert(plan.name, "CNAME", plan.shared_target, 300))
    for i in range(0, len(changes), 500):
        r53.change_resource_record_sets(HostedZoneId=zid, ChangeBatch={"Changes": changes[i:i + 500]})
    stuck = [p for p in plans if p.name in weighted]
    if stuck and reset:
        dns.shift_records(r53, zid, stuck, 0, ttl=300)
    return len(changes)


def load_data(topo: Topology, preset: str, seed: int = 7, force: bool = False) -> dict[str, Any]:
    """The preset on the source, the target's schema emptied, the orgs known to the admin API
    (open), their DNS records, the standby caught up."""
    from tenant_migration.sample.platform import wait_standby_caught_up

    started = time.monotonic()
    bootstrap(topo)
    result = generate.generate(preset, seed, _dsn(topo, topo.pg_primary), topo.cassandra_source.host,
                               topo.cassandra_source.native_port, force=force)
    if not result["reused"]:
        generate.empty(_dsn(topo, topo.pg_target), topo.cassandra_target.host, topo.cassandra_target.native_port)
    admin_api.register_orgs(_state_file(topo), [o for o, _ in _handles(topo)])
    seed_dns(topo, reset=not result["reused"])
    wait_standby_caught_up(topo)
    counts = result["counts"]
    _say(f"dataset {preset} (seed {seed}) {'kept' if result['reused'] else 'generated'} in "
         f"{time.monotonic() - started:.1f}s: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return result


def demo_reset(topo: Topology) -> None:
    """The target emptied of meterhub's data, live runs aborted, every org open and on the shared
    platform's DNS again."""
    from tenant_migration.sample.platform import _has_ledger

    generate.empty(_dsn(topo, topo.pg_target), topo.cassandra_target.host, topo.cassandra_target.native_port)
    with psycopg.connect(_dsn(topo, topo.pg_target), autocommit=True) as conn:
        if _has_ledger(conn):
            conn.execute("UPDATE tm_control.runs SET status = 'aborted', finished_at = clock_timestamp() "
                         "WHERE status = 'running'")
    state = _state_file(topo)
    if state.exists():
        admin_api.register_orgs(state, [])
    admin_api.register_orgs(state, [o for o, _ in _handles(topo)])
    seed_dns(topo, reset=True)
    _say("target emptied, registrations open, DNS reset to the shared platform")


def require_up(topo: Topology) -> None:
    if not _answers(topo):
        raise StackError(f"meterhub's admin API does not answer on 127.0.0.1:{admin_port(topo)}: run `make stack-up`")
