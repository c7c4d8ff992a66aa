"""Warm-up on the real target: pg_prewarm of the tenant's relations, with hit ratios measured
before and after on a sample of tenant queries."""

from __future__ import annotations

import pytest
from helpers import admin
from psycopg import sql

from tenant_migration.endpoints import Endpoints
from tenant_migration.postgres import warmup
from tenant_migration.sample import SAMPLE_MAP
from tenant_migration.stack.topology import Topology
from tenant_migration.tenant_map import load_tenant_map

pytestmark = pytest.mark.integration


@pytest.fixture
def target_with_tenant(topo: Topology, endpoints: Endpoints, tiny_dataset: dict) -> None:
    """The tenant's rows on the target (superuser: setup only), and pg_prewarm created as the bootstrap should."""
    tmap = load_tenant_map(SAMPLE_MAP)
    with admin(topo, "target") as t, admin(topo, "primary") as p:
        t.execute(warmup.PREWARM_EXTENSION)
        t.execute(sql.SQL("TRUNCATE {} CASCADE").format(sql.SQL(", ").join(tmap.qualified(n) for n in tmap.tables)))
        t.execute("SET session_replication_role = replica")
        for table in tmap.load_order():
            rows = p.execute(sql.SQL("SELECT t.* FROM {} t WHERE {}").format(
                tmap.qualified(table), tmap.tenant_predicate(table)), {"tenant_id": 1}).fetchall()
            if rows:
                n = len(rows[0])
                with t.cursor() as cur:
                    cur.executemany(sql.SQL("INSERT INTO {} VALUES ({})").format(
                        tmap.qualified(table), sql.SQL(", ").join(sql.Placeholder() * n)),
                        [[sql_json(v) for v in r] for r in rows])


def sql_json(v: object) -> object:
    from psycopg.types.json import Jsonb

    return Jsonb(v) if isinstance(v, dict | list) else v


@pytest.mark.parametrize("read_through", [pytest.param(0, id="prewarm only"), pytest.param(3, id="with read-through")])
def test_warm_up_reports_hit_ratios(endpoints: Endpoints, target_with_tenant: None, read_through: int) -> None:
    with endpoints.target.connect(autocommit=True) as conn:
        report = warmup.warm_up(conn, load_tenant_map(SAMPLE_MAP), 1, read_through=read_through)
    assert report.queries == 11
    assert sum(report.prewarmed_blocks.values()) > 0
    assert report.after.shared_read == 0  # everything the sample touches is in shared buffers now
    assert report.after.hit_ratio >= report.before.hit_ratio
    assert len(report.read_through_tables) == read_through
    assert report.to_dict()["hit_ratio_after"] == 1.0
