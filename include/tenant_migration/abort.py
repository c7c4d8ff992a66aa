"""``python -m tenant_migration.abort RUN_ID``: give up a failed migration run instead of resuming it.

After a failure before the flip, the teardowns ``reattach_replica`` and ``drop_cdc_slot`` keep the
replica detached and the change-capture slot alive so that clearing the failed tasks can resume the
run (ADR 7); they fail on purpose to show it. Aborting marks the ledger run ``aborted``: cleared
again, those teardowns then release both (resume replay, drop the slot). Writes only the ledger.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tenant_migration import ledger
from tenant_migration.endpoints import Endpoints


def abort_run(ep: Endpoints, run_id: str) -> str:
    """Mark a live run aborted; returns its previous status (a finished run is left as it is)."""
    with ep.target.connect(autocommit=True) as conn:
        run = ledger.run_row(conn, run_id)
        if run is None:
            raise SystemExit(f"no run {run_id!r} in the ledger (the ledger run id is '<dag_id>/<dag run id>')")
        if run["status"] == "running":
            ledger.finish_run(conn, run_id, "aborted")
            ledger.record_event(conn, run_id, "abort", "info", {"by": "tenant_migration.abort"})
        return str(run["status"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_id", help="ledger run id, e.g. 'tenant_migration/manual__2026-11-26T10:00:00+00:00'")
    parser.add_argument("--connections", type=Path, default=None,
                        help="a connections JSON file (the local stack's: .stack/connections.json); "
                             "default: Airflow's connections (tm_target)")
    args = parser.parse_args(argv)
    ep = Endpoints.from_file(args.connections) if args.connections else Endpoints.from_airflow()
    before = abort_run(ep, args.run_id)
    print(f"run {args.run_id}: {before} -> {'aborted' if before == 'running' else before}. Now clear "
          "ready.reattach_replica and drop_cdc_slot of that DAG run: they release the replica and the slot.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
