"""
### Tenant migration (walking skeleton)

Live-migrates one tenant out of the shared platform into its dedicated deployment:
**preflight gate → detach the replica → copy the tenant's PostgreSQL rows and Cassandra partitions →
post-copy gate → DNS flip → reattach the replica → final gate → report.** Gates are Great
Expectations suites; a failing gate writes its evidence (JSON, HTML report, `tm_control.gates` row)
before it fails the task.

Trigger it from the form (*Trigger DAG w/ config*) with the tenant id. `dry_run` checks everything
(tenant exists, schemas match, DNS records exist) and writes nothing.

#### Runbook
| task | what it does | safe to clear? |
|---|---|---|
| `preflight` | checks params, tenant, schema parity, Cassandra tables, DNS records; GX preflight gate on the replica (keys unique/non-null, no orphans, no cross-tenant references); registers the run in the ledger (`tm_control.runs`) | yes |
| `detach_replica` | pauses WAL replay on the standby, records LSN and commit time | yes (pausing twice is a no-op) |
| `copy_postgres` | per table: delete + COPY + checksum + ledger row in one target transaction | yes: redoes only tables not `done` |
| `copy_cassandra` | per table: reads the tenant's partitions (from relational metadata), writes cells with their WRITETIME and TTL | yes: last-write-wins makes re-copies idempotent |
| `gate_post_copy` | GX: tenant row counts and checksums equal on both sides, per table; evidence JSON + HTML + `tm_control.gates` row before failing | yes: re-evaluates the data as it is now |
| `flip_dns` | UPSERTs the tenant's records to its dedicated endpoints and reads them back. **Not retried automatically** | yes: UPSERT converges |
| `reattach_replica` | teardown: resumes WAL replay, also when the run failed | yes |
| `gate_final` | GX: no row of another tenant on the target, every chunk of the run done | yes |
| `report` | writes `summary.txt`/`summary.json` under the reports folder and closes the run | yes |

**Abort**: mark the run failed in the UI; `reattach_replica` still runs. Before `flip_dns` nothing
user-visible changed. After it, run the DNS flip back (see README: rollback).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, task

PARAMS = {
    "tenant_id": Param(type="integer", minimum=1, title="Tenant id",
                       description="Id of the tenant to migrate (platform.tenants.tenant_id)."),
    "dry_run": Param(False, type="boolean", title="Dry run",
                     description="Run every check and write nothing: no ledger run, no copy, no DNS change."),
    "chunk_rows": Param(50_000, type="integer", minimum=100, maximum=10_000_000, title="Chunk rows",
                        description="Target number of rows per PostgreSQL chunk."),
    "cassandra_concurrency": Param(64, type="integer", minimum=1, maximum=1024, title="Cassandra concurrency",
                                   description="Requests in flight per Cassandra copy."),
    "cassandra_days": Param(4, type="integer", minimum=1, maximum=3650, title="Cassandra days",
                            description="Day buckets of datapoints to copy, newest first, counting today (UTC)."),
    "dns_zone": Param("iot.example.test.", type="string", title="DNS zone",
                      description="Route53 hosted zone that holds the tenant's endpoint records."),
    "target_endpoint_prefix": Param("vpc", type="string", pattern="^[a-z0-9][a-z0-9-]{0,62}$",
                                    title="Target endpoint prefix",
                                    description="Dedicated endpoints are <service>.<prefix>-<slug>.<zone>."),
}

RETRYABLE = {"retries": 2, "retry_delay": timedelta(seconds=10), "retry_exponential_backoff": True}


@dag(
    dag_id="tenant_migration",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params=PARAMS,
    doc_md=__doc__,
    tags=["tenant-migration"],
    max_active_runs=1,
    default_args={"owner": "data-infra", "execution_timeout": timedelta(hours=2)},
)
def tenant_migration() -> None:
    @task(**RETRYABLE)
    def preflight(**context) -> dict:
        from tenant_migration import runtime, steps

        return runtime.call(steps.preflight, context)

    @task(**RETRYABLE)
    def detach_replica(**context) -> dict:
        from tenant_migration import runtime, steps

        return runtime.call(steps.detach_replica, context)

    @task(**RETRYABLE)
    def copy_postgres(**context) -> dict:
        from tenant_migration import runtime, steps

        return runtime.call(steps.copy_postgres, context)

    @task(**RETRYABLE)
    def copy_cassandra(**context) -> dict:
        from tenant_migration import runtime, steps

        return runtime.call(steps.copy_cassandra, context)

    @task(retries=0)
    def gate_post_copy(**context) -> dict:
        from tenant_migration import runtime, steps

        return runtime.call(steps.gate_post_copy, context)

    @task(retries=0)
    def gate_final(**context) -> dict:
        from tenant_migration import runtime, steps

        return runtime.call(steps.gate_final, context)

    @task(retries=0)
    def flip_dns(pre: dict, **context) -> dict:
        from tenant_migration import runtime, steps

        return runtime.call(steps.flip_dns, context, pre["slug"])

    @task(**RETRYABLE)
    def reattach_replica(**context) -> dict:
        from tenant_migration import runtime, steps

        return runtime.call(steps.reattach_replica, context)

    @task(retries=1)
    def report(dns_result: dict, **context) -> dict:
        from tenant_migration import runtime, steps

        return runtime.call(steps.report, context, dns_result)

    pre = preflight()
    detached = detach_replica()
    copied = [copy_postgres(), copy_cassandra()]
    gate = gate_post_copy()
    flipped = flip_dns(pre)
    reattached = reattach_replica().as_teardown(setups=detached)
    pre >> detached >> copied >> gate >> flipped >> reattached >> gate_final() >> report(flipped)


tenant_migration()
