"""What ``sample.generate`` writes, predicted without a database: rows per tenant and table in
PostgreSQL and Cassandra (the tests and the generator's own check compare against these)."""

from __future__ import annotations

import numpy as np

from tenant_migration.sample.data import CASSANDRA_TABLES, PG_TABLES, SHARED_TABLES, TENANT_COUNT, Preset, build_dataset


def expected_counts(preset: Preset, seed: int) -> dict[int, dict[str, int]]:
    """Rows per tenant and table (PostgreSQL and Cassandra), exactly as ``generate`` writes them.

    Shared tables are under tenant 0. Cassandra counts assume nothing had expired at generation time,
    which holds for every preset (see ``valid_until``).
    """
    ds = build_dataset(preset, seed)
    out: dict[int, dict[str, int]] = {t: {} for t in range(TENANT_COUNT + 1)}
    for name, table in ds.tables.items():
        counts = np.bincount(table.tenant, minlength=TENANT_COUNT + 1)
        for t in range(TENANT_COUNT + 1):
            if t == 0 and name not in SHARED_TABLES:
                continue
            if t > 0 and name in SHARED_TABLES:
                continue
            out[t][name] = int(counts[t])
    tel = ds.telemetry
    props = np.bincount(tel.prop_tenant, minlength=TENANT_COUNT + 1)
    devs = np.bincount(tel.device_tenant, minlength=TENANT_COUNT + 1)
    for t in range(1, TENANT_COUNT + 1):
        out[t]["datapoints"] = int(props[t]) * preset.days * preset.points_per_day
        out[t]["latest_values"] = int(props[t])
        out[t]["connection_events"] = int(devs[t]) * preset.days * preset.events_per_day
    return out


def table_totals(counts: dict[int, dict[str, int]]) -> dict[str, int]:
    """Per-table totals of a per-tenant count mapping, in load order."""
    totals: dict[str, int] = {}
    for name in (*PG_TABLES, *CASSANDRA_TABLES):
        totals[name] = sum(per.get(name, 0) for per in counts.values())
    return totals


def tenant_sizes(preset: Preset, seed: int) -> dict[int, int]:
    """Total rows (PostgreSQL and Cassandra) of each tenant, predicted without a database."""
    return {t: sum(per.values()) for t, per in expected_counts(preset, seed).items() if t > 0}
