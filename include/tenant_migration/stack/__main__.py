"""``python -m tenant_migration.stack``: bring the local stack up, down, report status, load data.

    up [--workers N]  start every server (idempotent), bootstrap schemas/roles, Airflow home;
                  with N > 0 also Redis and N Celery workers (the CeleryExecutor)
    down          stop every server (state is kept)
    status        one line per server
    reset         down, then delete the state folder except the download cache
    data PRESET   generate the sample platform (tiny|demo|bench) on the source; empty target
    demo-reset    empty the target and point every tenant's DNS back at the shared platform
    run -- CMD    run CMD (e.g. airflow ...) with the stack's Airflow environment
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tenant_migration.stack import airflow_env, cassandra, moto, postgres, redis, workers
from tenant_migration.stack.common import StackError
from tenant_migration.stack.platforms import hosted_platform, hosted_platforms
from tenant_migration.stack.topology import Topology, default_topology

POOLS = (
    ("tm_postgres", 2, "PostgreSQL chunk copies: bounds load on the source replica and the target"),
    ("tm_cassandra", 2, "Cassandra chunk copies: bounds load on the shared cluster"),
)


def _say(msg: str) -> None:
    print(f"[stack] {msg}", flush=True)


def cmd_up(topo: Topology) -> dict[str, float]:
    timings: dict[str, float] = {}
    topo.state_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    t = time.monotonic()
    postgres.up(topo)
    timings["postgres"] = time.monotonic() - t
    _say(f"postgres ready ({timings['postgres']:.1f}s)")
    t = time.monotonic()
    cassandra.up(topo)
    timings["cassandra"] = time.monotonic() - t
    _say(f"cassandra ready ({timings['cassandra']:.1f}s)")
    t = time.monotonic()
    moto.up(topo)
    timings["moto"] = time.monotonic() - t
    t = time.monotonic()
    for hosted in hosted_platforms():
        hosted.bootstrap(topo)
    timings["bootstrap"] = time.monotonic() - t
    airflow_env.write_files(topo)
    t = time.monotonic()
    _airflow_db(topo)
    timings["airflow_db"] = time.monotonic() - t
    n = workers.wanted(topo)
    if n:
        t = time.monotonic()
        redis.up(topo)
        pids = workers.start(topo, n, {**os.environ, **airflow_env.environment(topo)})
        timings["celery"] = time.monotonic() - t
        _say(f"CeleryExecutor: redis on {redis.url(topo)}, {n} workers (pids {', '.join(map(str, pids))})")
    else:
        workers.stop(topo)  # a stack brought up with workers before, now without
    timings["total"] = time.monotonic() - started
    (topo.state_dir / "last_up.json").write_text(json.dumps(timings, indent=2))
    _say("up in " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    return timings


def _airflow_db(topo: Topology) -> None:
    """``airflow db migrate`` and the pools, once per metadata database (ADR 8: PostgreSQL; a stack
    made when it was SQLite gets its PostgreSQL database migrated here, the old file is left alone)."""
    marker = topo.airflow_home / ".migrated"
    where = f"{topo.pg_airflow.host}:{topo.pg_airflow.port}/{topo.airflow_dbname}\n"
    if postgres.airflow_db_migrated(topo) and marker.exists() and marker.read_text() == where:
        return
    env = {**os.environ, **airflow_env.environment(topo)}
    airflow = str(Path(sys.executable).with_name("airflow"))
    proc = subprocess.run([airflow, "db", "migrate"], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise StackError(f"airflow db migrate failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    # Pools bound the load the copies put on the source replica/target and on Cassandra.
    for pool, slots, what in POOLS:
        proc = subprocess.run([airflow, "pools", "set", pool, str(slots), what], env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise StackError(f"airflow pools set {pool} failed:\n{proc.stderr[-2000:]}")
    marker.write_text(where)


def cmd_down(topo: Topology) -> None:
    workers.stop(topo)
    redis.down(topo)
    for hosted in hosted_platforms():
        if hasattr(hosted, "down"):
            hosted.down(topo)
    moto.down(topo)
    cassandra.down(topo)
    postgres.down(topo)
    _say("down")


def cmd_status(topo: Topology) -> int:
    rows = postgres.status(topo) + cassandra.status(topo) + moto.status(topo)
    if workers.wanted(topo):
        rows += redis.status(topo) + workers.status(topo)
    for hosted in hosted_platforms():
        if hasattr(hosted, "status"):
            rows += hosted.status(topo)
    for row in rows:
        print(row.line())
    return 0 if all(r.running for r in rows) else 1


def cmd_reset(topo: Topology) -> None:
    cmd_down(topo)
    if topo.state_dir.exists():
        for child in topo.state_dir.iterdir():
            if child.name == "cache":
                continue
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()
    _say(f"state under {topo.state_dir} removed (download cache kept)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tenant_migration.stack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up")
    up.add_argument("--workers", type=int, default=None,
                    help="Celery workers (CeleryExecutor + Redis); 0: LocalExecutor; default: as the stack was")
    for name in ("down", "status", "reset"):
        sub.add_parser(name)
    reset = sub.add_parser("demo-reset")
    reset.add_argument("--platform", default=None, help="a hosted platform's name (default: the first)")
    data = sub.add_parser("data")
    data.add_argument("preset", choices=["tiny", "demo", "bench"])
    data.add_argument("--seed", type=int, default=7)
    data.add_argument("--platform", default=None, help="a hosted platform's name (default: the first)")
    run = sub.add_parser("run")
    run.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    topo = default_topology()
    try:
        if args.cmd == "up":
            if args.workers is not None:
                workers.set_wanted(topo, args.workers)
            cmd_up(topo)
        elif args.cmd == "down":
            cmd_down(topo)
        elif args.cmd == "status":
            return cmd_status(topo)
        elif args.cmd == "reset":
            cmd_reset(topo)
        elif args.cmd == "data":
            hosted_platform(args.platform).load_data(topo, args.preset, args.seed)
        elif args.cmd == "demo-reset":
            hosted_platform(args.platform).demo_reset(topo)
        elif args.cmd == "run":
            command = [c for c in args.command if c != "--"]
            if not command:
                parser.error("run needs a command")
            env = {**os.environ, **airflow_env.environment(topo)}
            # Airflow spawns `airflow ...` subprocesses (standalone, task runners): the venv first.
            env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
            os.execvpe(command[0], command, env)
    except StackError as exc:
        print(f"[stack] error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
