"""The sample platform's relational write workload at a fixed rate (``bench/bench_catchup.py``): what
the change stream must keep up with, in the sample's own tables."""

from __future__ import annotations

import multiprocessing as mp
import random
import time

from tenant_migration.endpoints import PgEndpoint


def write_load(ep: PgEndpoint, tenant_id: int, rate: float, seconds: float, out: mp.Queue) -> None:
    """Fixed-rate writer: 40 % property inserts, 40 % device updates, 20 % deletes of its inserts."""
    rng = random.Random()  # fresh ids every run: earlier runs leave their rows on the primary
    done = 0
    with ep.connect(autocommit=True) as conn:
        devices = [r[0] for r in conn.execute("SELECT device_id FROM platform.devices WHERE tenant_id = %s", (tenant_id,))]
        mine: list[int] = []
        start = time.monotonic()
        while (now := time.monotonic() - start) < seconds:
            roll = rng.random()
            if roll < 0.4 or not mine:
                pid = rng.randint(10**14, 10**15)
                conn.execute("INSERT INTO platform.properties (property_id, device_id, name, data_type) "
                             "VALUES (%s, %s, 'bench', 'float')", (pid, rng.choice(devices)))
                mine.append(pid)
            elif roll < 0.8:
                conn.execute("UPDATE platform.devices SET name = %s WHERE device_id = %s",
                             (f"bench {done}", rng.choice(devices)))
            else:
                conn.execute("DELETE FROM platform.properties WHERE property_id = %s", (mine.pop(rng.randrange(len(mine))),))
            done += 1
            sleep = done / rate - (time.monotonic() - start)
            if sleep > 0:
                time.sleep(sleep)
        out.put((done, now))
