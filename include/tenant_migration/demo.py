"""``python -m tenant_migration.demo --tenant N``: run the migration DAG for one tenant of the
local stack with ``airflow dags test`` and print the run's summary (rows and partitions per table,
time per step, DNS answer before and after).

Airflow's own log goes to ``.stack/logs/demo-<tenant>.log``; its tail is printed if the run fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tenant_migration.endpoints import Endpoints
from tenant_migration.flows.common import reports_dir, safe_name
from tenant_migration.stack import airflow_env
from tenant_migration.stack.common import tail
from tenant_migration.stack.topology import default_topology


def demo_params(tenant: int, dry_run: bool = False) -> dict[str, Any]:
    """The demo's conf (also what ``bench/bench_airflow_overhead.py --standalone`` fills in the form).

    `dags test` has no human to answer the approval: the demo runs in rehearsal mode, with short
    TTL wait and drain windows (the form's defaults are the production values). The load check's
    limits are p99 250 ms and 80 % of the offered rate, not the production 50 ms and 95 %: here
    the target shares 2 cores with the whole stack and Airflow, and says little about a real one.
    """
    return {"tenant_id": tenant, "dry_run": dry_run, "require_approval": False,
            "max_ttl_wait_s": 5, "drain_seconds": 10, "drain_quiet_s": 5, "load_rate": 200, "load_seconds": 5,
            "load_max_p99_ms": 250, "load_min_rate_pct": 80}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tenant", type=int, required=True)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--platform", default=None,
                        help="a platform the stack hosts (default: the first); one that ships its own profiles "
                             "folder (PROFILES) runs with it")
    parser.add_argument("--set", action="append", default=[], metavar="PARAM=JSON",
                        help="override one DAG param of the demo's conf, e.g. --set load_max_p99_ms=1000")
    args = parser.parse_args(argv)
    topo = default_topology()
    os.environ.update(airflow_env.environment(topo))
    params = demo_params(args.tenant, args.dry_run)
    if args.platform:
        from tenant_migration.stack.platforms import hosted_platform

        folder = getattr(hosted_platform(args.platform), "PROFILES", None)
        if folder is not None:  # the platform's own profiles folder, and its profile chosen by name
            os.environ["TM_PROFILES_DIR"] = str(folder)
            params["platform"] = args.platform
    env = dict(os.environ)
    log = topo.logs_dir / f"demo-{args.tenant}.log"
    for item in args.set:
        key, _, value = item.partition("=")
        params[key] = json.loads(value)
    conf = json.dumps(params)
    airflow = str(Path(sys.executable).with_name("airflow"))
    print(f"[demo] migrating tenant {args.tenant} with `airflow dags test tenant_migration` (log: {log})", flush=True)
    started = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.run([airflow, "dags", "test", "tenant_migration", "-c", conf], env=env, stdout=out,
                              stderr=subprocess.STDOUT)
    elapsed = time.monotonic() - started
    ep = Endpoints.from_file(topo.state_dir / "connections.json")
    with ep.target.connect() as conn:
        row = conn.execute(
            "SELECT run_id, status FROM tm_control.runs WHERE tenant_id = %s ORDER BY started_at DESC LIMIT 1",
            (args.tenant,),
        ).fetchone()
    if row is None:
        print(tail(log, 60))
        print(f"[demo] no run was registered for tenant {args.tenant} (see {log})", file=sys.stderr)
        return 1
    summary = reports_dir() / safe_name(row[0]) / "summary.txt"
    if summary.exists():
        print(summary.read_text())
    print(f"[demo] run {row[0]}: {row[1]}; DAG wall time {elapsed:.1f}s; airflow exit code {proc.returncode}")
    if proc.returncode != 0 or row[1] != "succeeded":
        print(tail(log, 60))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
