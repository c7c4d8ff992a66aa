"""Tenant rollback: back to the shared platform after a DNS flip. The wiring only: each task runs
one step of ``tenant_migration.rollback``; the Docs tab shows the runbook
(``include/tenant_migration/runbooks/tenant_rollback.md``)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from airflow.sdk import Param, dag, task

from tenant_migration.alerts import WebhookNotifier
from tenant_migration.evidence import attach as evidence_links
from tenant_migration.lazy import lazy_module, runbook
from tenant_migration.params import migration_params

if TYPE_CHECKING:
    from tenant_migration import rollback
else:  # imported when a task first uses it, never while Airflow parses this file
    rollback = lazy_module("tenant_migration.rollback")

RETRY = {"retries": 2, "retry_delay": timedelta(seconds=10), "retry_exponential_backoff": True}
CUTOVER = {"retries": 0}
PARAMS = {
    **migration_params("platform"),
    "tenant_id": Param(type="integer", minimum=1, title="Tenant id",
                       description="The tenant whose migration is rolled back."),
    "confirm_tenant_slug": Param("", type="string", title="Confirm tenant slug",
                                 description="Type the tenant's slug to confirm. Anything else: nothing is written."),
    "migration_run_id": Param("", type="string", title="Migration run id",
                              description="Ledger run id of the migration (empty: the tenant's latest flipped run)."),
    "dns_zone": Param("iot.example.test.", type="string", title="DNS zone",
                      description="Route53 hosted zone of the tenant's records."),
    "target_endpoint_prefix": Param("vpc", type="string", title="Target endpoint prefix",
                                    description="{prefix} in the profile's DNS templates of the dedicated endpoints."),
    "max_ttl_wait_s": Param(300, type="integer", minimum=0, title="Max wait for the TTL (s)",
                            description="After the flip back, wait out the records' TTL, at most this long."),
    "cassandra_concurrency": Param(64, type="integer", minimum=1, maximum=1024, title="Cassandra concurrency",
                                   description="Requests in flight for the Cassandra copy-back."),
}


def _call(fn, context: dict, *args):
    from tenant_migration import runtime
    from tenant_migration.endpoints import Endpoints

    ep = Endpoints.from_airflow()
    runtime.announce(ep, context, fn, runtime.run_key(context) + "/back")
    with runtime.fail_fast(), rollback.refusals_fail():
        spec = rollback.parse_rollback_spec(dict(context["params"]))
        return fn(ep, spec, runtime.run_key(context) + "/back", *args)


def _opening(fn, context: dict) -> dict:
    """The step that opens the run; then the run's note names its tenant and platform."""
    from tenant_migration import run_note

    return run_note.note_run(context, _call(fn, context))


@dag(dag_id="tenant_rollback", description="Return a migrated tenant to the shared platform: copy its data back, flip DNS back (asks for the tenant's slug to confirm).", schedule=None, start_date=datetime(2026, 1, 1), catchup=False, params=PARAMS,
     doc_md=runbook("tenant_rollback"), tags=["tenant-migration", "rollback"], max_active_runs=1,
     default_args={"owner": "data-infra", "execution_timeout": timedelta(hours=2),
                   "on_failure_callback": [WebhookNotifier()]})
def tenant_rollback() -> None:
    @task(**CUTOVER)
    def check_rollback(**ctx) -> dict: return _opening(rollback.check_rollback, ctx)
    @task(**CUTOVER)
    def flip_dns_back(checked: dict, **ctx) -> dict: return _call(rollback.flip_dns_back, ctx, checked["slug"])
    @task(**RETRY)
    def copy_back_postgres(**ctx) -> dict: return _call(rollback.copy_back_postgres, ctx)
    @task(**RETRY)
    def copy_back_cassandra(**ctx) -> dict: return _call(rollback.copy_back_cassandra, ctx)
    @task(**CUTOVER)
    def gate_copy_back(**ctx) -> dict: return _call(rollback.gate_copy_back, ctx)
    @task(retries=1)
    def finish_rollback(**ctx) -> dict: return _call(rollback.finish_rollback, ctx)

    checked = check_rollback()
    flip_dns_back(checked) >> [copy_back_postgres(), copy_back_cassandra()] >> gate_copy_back() >> finish_rollback()


evidence_links(tenant_rollback())
