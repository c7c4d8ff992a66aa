"""Benchmark: the highest datapoint write rate this machine sustains against the TARGET within a
latency threshold, with the load check's generator (``fleet.loadcheck``: the tenant's own
(device, property) shape, straight at the target's Cassandra, sentinel day bucket, short TTL).

The offered rate is stepped up (bounded list of steps); a step passes when the target acknowledged
at least 95 % of the offered rate with p99 under ``--max-p99-ms`` and no error. The sustained rate
is the achieved rate of the highest passing step. The generator runs in ``--processes`` processes
(default: one per core): one CPython process tops out at a few thousand writes/s.

Prints each step, processes/cores, and as LAST line ``load_rate_ratio=<sustained / 10000>``
(the 10 000 writes/s reference of the issue). Loopback addresses of the local stack only.
"""

from __future__ import annotations

import argparse
import os
import sys

from tenant_migration.endpoints import Endpoints
from tenant_migration.sample.fleet.loadcheck import clean_up, run_load
from tenant_migration.sample.fleet.simulator import tenant_profile
from tenant_migration.stack.topology import default_topology

REFERENCE_RATE = 10_000.0
STEPS = (250, 500, 1000, 2000, 3000, 4000, 6000, 8000, 10_000, 12_000, 16_000)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenant", type=int, default=1, help="tenant whose (device, property) shape is used")
    parser.add_argument("--seconds", type=float, default=6.0, help="duration of each step")
    parser.add_argument("--max-p99-ms", type=float, default=50.0)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--devices", type=int, default=10_000)
    args = parser.parse_args(argv)
    topo = default_topology()
    ep = Endpoints.from_file(topo.state_dir / "connections.json")
    for host in (ep.cassandra_target.host,):
        if not host.startswith("127."):
            print(f"refusing a non-loopback target {host}", file=sys.stderr)
            return 2
    profile = tenant_profile(ep.replica, args.tenant, args.devices)
    if not profile.pairs:
        print(f"tenant {args.tenant} has no (device, property) pairs: load a dataset (make data)", file=sys.stderr)
        return 2
    cores = os.cpu_count() or 1
    print(f"target {ep.cassandra_target.label}; tenant {args.tenant}: {len({d for d, _ in profile.pairs})} devices, "
          f"{len(profile.pairs)} properties; generator: {args.processes} processes on {cores} cores "
          f"(shared with both Cassandra nodes and PostgreSQL); threshold p99 < {args.max_p99_ms} ms, 0 errors")
    sustained = 0.0
    try:
        for rate in STEPS:
            res = run_load(ep, profile, float(rate), args.seconds, args.processes, args.devices)
            ok = res.passes(args.max_p99_ms, 0)
            print(f"offered {rate:>6}/s  achieved {res.achieved_rate:>8.1f}/s  p50 {res.p50_ms} ms  "
                  f"p99 {res.p99_ms} ms  errors {res.errors}  {'pass' if ok else 'FAIL'}", flush=True)
            if not ok:
                break
            sustained = max(sustained, res.achieved_rate)
    finally:
        clean_up(ep, profile)
    print(f"sustained {sustained:.0f} writes/s within p99 < {args.max_p99_ms} ms with {args.processes} processes "
          f"on {cores} cores")
    print(f"load_rate_ratio={sustained / REFERENCE_RATE:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
