"""
### Tenant rollback: back to the shared platform after a DNS flip

Reverses a tenant's migration after `flip_dns`: the tenant's DNS records go back to the shared
platform, then everything the tenant changed on its dedicated target since the flip is brought
back to the shared primary and cluster, behind a Great Expectations gate. After the flip the
target's rows are authoritative: per table, one primary transaction deletes the tenant's rows and
re-loads the target's (children first, platform triggers off); Cassandra cells written after the
flip are copied with their WRITETIME and TTL (idempotent). Progress is in the ledger under the run
id `tenant_rollback/<dag run>/back`.

**Safe default:** nothing is written unless `confirm_tenant_slug` equals the tenant's slug.

#### Runbook
| task | safe to clear? | notes |
|---|---|---|
| `check_rollback` | yes | refuses (writes nothing) unless confirmed; marks a live migration run aborted (a red `drop_cdc_slot` of that run, cleared, then drops its slot: ADR 7); plans the chunks |
| `flip_dns_back` | **by hand only** (retries=0) | UPSERT converges; then waits out the record TTL (`max_ttl_wait_s`) |
| `copy_back_postgres` | yes | tables already done are skipped; a failed table rolled back as a whole |
| `copy_back_cassandra` | yes | chunks already done are skipped; re-copy is idempotent |
| `gate_copy_back` | yes | counts + checksums target vs shared, now; evidence in the reports folder |
| `finish_rollback` | yes | closes the ledger run, writes `rollback_summary.json` |

**Abort.** Before `flip_dns_back`: mark the run failed, nothing changed. After it: the tenant is
served by the shared platform again; finish the copy-back (clear the failed task) before anyone
deletes the target, because until `gate_copy_back` passes the target holds the only copy of the
tenant's post-flip changes. A write that reached the shared platform between the flip back and the
copy-back of its table is superseded by the target's row (the TTL wait keeps that window short).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, task

RETRY = {"retries": 2, "retry_delay": timedelta(seconds=10), "retry_exponential_backoff": True}
CUTOVER = {"retries": 0}
PARAMS = {
    "tenant_id": Param(type="integer", minimum=1, title="Tenant id",
                       description="The tenant whose migration is rolled back."),
    "confirm_tenant_slug": Param("", type="string", title="Confirm tenant slug",
                                 description="Type the tenant's slug to confirm. Anything else: nothing is written."),
    "migration_run_id": Param("", type="string", title="Migration run id",
                              description="Ledger run id of the migration (empty: the tenant's latest flipped run)."),
    "dns_zone": Param("iot.example.test.", type="string", title="DNS zone",
                      description="Route53 hosted zone of the tenant's records."),
    "target_endpoint_prefix": Param("vpc", type="string", title="Target endpoint prefix",
                                    description="Dedicated endpoints are <service>.<prefix>-<slug>.<zone>."),
    "max_ttl_wait_s": Param(300, type="integer", minimum=0, title="Max wait for the TTL (s)",
                            description="After the flip back, wait out the records' TTL, at most this long."),
    "cassandra_concurrency": Param(64, type="integer", minimum=1, maximum=1024, title="Cassandra concurrency",
                                   description="Requests in flight for the Cassandra copy-back."),
}


def _call(name: str, context: dict, *args):
    from tenant_migration import rollback, runtime

    with runtime.fail_fast(), rollback.refusals_fail():
        spec = rollback.parse_rollback_spec(dict(context["params"]))
        from tenant_migration.endpoints import Endpoints

        return getattr(rollback, name)(Endpoints.from_airflow(), spec, runtime.run_key(context) + "/back", *args)


@dag(dag_id="tenant_rollback", schedule=None, start_date=datetime(2026, 1, 1), catchup=False, params=PARAMS,
     doc_md=__doc__, tags=["tenant-migration", "rollback"], max_active_runs=1,
     default_args={"owner": "data-infra", "execution_timeout": timedelta(hours=2)})
def tenant_rollback() -> None:
    @task(**CUTOVER)
    def check_rollback(**ctx) -> dict: return _call("check_rollback", ctx)
    @task(**CUTOVER)
    def flip_dns_back(checked: dict, **ctx) -> dict: return _call("flip_dns_back", ctx, checked["slug"])
    @task(**RETRY)
    def copy_back_postgres(**ctx) -> dict: return _call("copy_back_postgres", ctx)
    @task(**RETRY)
    def copy_back_cassandra(**ctx) -> dict: return _call("copy_back_cassandra", ctx)
    @task(**CUTOVER)
    def gate_copy_back(**ctx) -> dict: return _call("gate_copy_back", ctx)
    @task(retries=1)
    def finish_rollback(**ctx) -> dict: return _call("finish_rollback", ctx)

    checked = check_rollback()
    flip_dns_back(checked) >> [copy_back_postgres(), copy_back_cassandra()] >> gate_copy_back() >> finish_rollback()


tenant_rollback()
