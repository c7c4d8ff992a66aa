"""Catch-up throughput under a live write load.

A separate process writes to one tenant's rows on the primary at a fixed rate (inserts, updates and
deletes, one transaction each) for N seconds. Catch-up starts halfway, so it first drains the backlog
of the first half (that drain is its capacity), then follows the live stream until the writer stops
and the lag target is met. The last line is ``catchup_rate_ratio=<capacity / write rate>``: above 1
means catch-up converges while writes continue.

    TM_STATE_DIR=... .venv/bin/python bench/bench_catchup.py --tenant 1 --rate 300 --seconds 20
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
import uuid

import psycopg
from psycopg import sql

from tenant_migration import ledger
from tenant_migration.endpoints import Endpoints, PgEndpoint
from tenant_migration.postgres import cdc
from tenant_migration.postgres.copy import copy_pending_chunks
from tenant_migration.replica import LocalReplicaController
from tenant_migration.sample import SAMPLE_MAP
from tenant_migration.sample.writes import write_load
from tenant_migration.stack import postgres
from tenant_migration.stack.topology import default_topology
from tenant_migration.tenant_map import load_tenant_map


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tenant", type=int, default=1)
    ap.add_argument("--rate", type=float, default=300.0, help="write transactions per second")
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    topo = default_topology()
    ep = Endpoints.from_file(topo.state_dir / "connections.json")
    tmap = load_tenant_map(SAMPLE_MAP)
    with psycopg.connect(postgres.superuser_dsn(topo, topo.pg_target, topo.pg_dbname), autocommit=True) as adm:
        adm.execute(sql.SQL("TRUNCATE {} CASCADE").format(sql.SQL(", ").join(tmap.qualified(t) for t in tmap.tables)))
    with ep.target.connect() as t:
        ledger.ensure_schema(t)
        with t.transaction():
            t.execute("UPDATE tm_control.runs SET status = 'aborted', finished_at = clock_timestamp() "
                      "WHERE tenant_id = %s AND status = 'running'", (args.tenant,))
    run_id = f"bench-{uuid.uuid4().hex[:8]}"
    slot = cdc.slot_name_for(run_id)
    src_ep = PgEndpoint(topo.pg_primary.host, topo.pg_primary.port, ep.replica.user, ep.replica.password, ep.replica.dbname)
    replica_ctl = LocalReplicaController(ep.replica_control)
    with src_ep.connect(autocommit=True) as source, ep.target.connect() as target:
        try:
            info = cdc.create_slot(source, slot)
            point = LocalReplicaController(ep.replica_control, min_lsn=info.consistent_lsn).detach()
            assert point.lsn is not None
            # The copy phase, through the project's copier, bound to the detach point.
            ledger.start_run(target, run_id, args.tenant, "bench", {"bench": True})
            ledger.record_detach(target, run_id, point.lsn, point.commit_time)
            target.commit()
            copy_pending_chunks(ep.replica, ep.target, tmap, run_id, args.tenant, workers=2)
            q: mp.Queue = mp.Queue()
            writer = mp.Process(target=write_load, args=(ep.source_primary, args.tenant, args.rate, args.seconds, q))
            writer.start()
            time.sleep(args.seconds / 2)
            drain = cdc.catch_up(source, target, tmap, args.tenant, run_id, slot, point.lsn,
                                 max_lag_bytes=256 * 1024, timeout=args.seconds * 10)
            writes, write_seconds = q.get()
            writer.join()
            final = cdc.catch_up(source, target, tmap, args.tenant, run_id, slot, point.lsn,
                                 max_lag_bytes=0, timeout=args.seconds * 10)
        finally:
            target.rollback()
            ledger.finish_run(target, run_id, "aborted")
            target.commit()
            cdc.drop_slot(source, slot)
            replica_ctl.reattach()
    write_rate = writes / write_seconds
    rate = drain.changes_per_second
    print(f"tenant={args.tenant} writes={writes} write_rate={write_rate:.1f}/s over {write_seconds:.1f}s")
    print(f"backlog_drain: changes={drain.changes_applied} txns={drain.txns_applied} seconds={drain.seconds:.2f} "
          f"rate={rate:.1f}/s batches={drain.batches}")
    print(f"follow_and_finish: changes={final.changes_applied} lag_bytes={final.lag_bytes} converged={final.converged}")
    print(f"catchup_rate_ratio={rate / write_rate:.2f}")


if __name__ == "__main__":
    main()
