"""Tenant rehearsal: every week, the test-pool tenant to the target and back, with a go/no-go
report. The wiring only: migration steps from ``tenant_migration.flows``, the way back from
``rollback``, the rehearsal's own from ``rehearsal``; the Docs tab shows the runbook
(``include/tenant_migration/runbooks/tenant_rehearsal.md``)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from airflow.sdk import Param, TaskGroup, dag, task

from tenant_migration import deferral
from tenant_migration.alerts import WebhookNotifier
from tenant_migration.evidence import attach as evidence_links
from tenant_migration.lazy import lazy_module, runbook
from tenant_migration.params import migration_params, scheduled_platform_param

if TYPE_CHECKING:
    from tenant_migration import rehearsal, rollback
    from tenant_migration.flows import finish, go, ready
    from tenant_migration.flows import set as set_phase
else:  # imported when a task first uses them, never while Airflow parses this file
    ready, set_phase, go, finish, rollback, rehearsal = (lazy_module(f"tenant_migration.{m}") for m in (
        "flows.ready", "flows.set", "flows.go", "flows.finish", "rollback", "rehearsal"))

RETRY = {"retries": 2, "retry_delay": timedelta(seconds=10), "retry_exponential_backoff": True}
CUTOVER = {"retries": 0}
PARAMS = {
    "tenant_id": Param(5, type="integer", minimum=1, title="Rehearsal tenant id",
                       description="The test-pool tenant that goes to the target and back."),
    "tenant_slug": Param("test-pool", type="string", title="Rehearsal tenant slug",
                         description="Safety check: the run refuses a tenant whose slug is not this."),
    "reference_tenant_id": Param(1, type="integer", minimum=1, title="Reference tenant id",
                                 description="The tenant whose Migration Day durations the report predicts."),
    "history": Param(8, type="integer", minimum=0, maximum=200, title="History length",
                     description="How many earlier rehearsals the report lists for the trend."),
    # The migration's own params, with short waits: the prediction uses Migration Day's settings.
    "platform": scheduled_platform_param(),
    **migration_params("chunk_rows", "max_tasks", "cassandra_days", "max_ttl_wait_s", "drain_seconds", "drain_quiet_s",
                       "dns_zone", "target_endpoint_prefix", "time_budget_minutes", max_ttl_wait_s=5, drain_seconds=5,
                       drain_quiet_s=3, cassandra_days=4, time_budget_minutes=120),
}


def _call(fn, context: dict, *args):
    from tenant_migration.rehearsal import call

    return call(fn, context, *args)


def _opening(fn, context: dict) -> dict:
    """The step that opens the run; then the run's note names its tenant and platform."""
    from tenant_migration import run_note

    return run_note.note_run(context, _call(fn, context))


@dag(dag_id="tenant_rehearsal", description="Weekly proof of the plan on the test-pool tenant: migrate it to the target, flip DNS, roll it back, and report the Migration Day durations.", schedule="@weekly", start_date=datetime(2026, 1, 1), catchup=False, params=PARAMS,
     doc_md=runbook("tenant_rehearsal"), tags=["tenant-migration", "rehearsal"], max_active_runs=1,
     default_args={"owner": "data-infra", "execution_timeout": timedelta(hours=2),
                   "on_failure_callback": [WebhookNotifier()]})
def tenant_rehearsal() -> None:
    @task(**RETRY)
    def begin_rehearsal(**ctx) -> dict: return _call(rehearsal.begin_rehearsal, ctx)
    @task(**RETRY)
    def preflight(**ctx) -> dict: return _opening(ready.preflight, ctx)
    @task(**RETRY)
    def create_cdc_slot(**ctx) -> dict: return _call(ready.create_cdc_slot, ctx)
    @task(**RETRY)
    def detach_replica(slot: dict, **ctx) -> dict: return _call(ready.detach_replica, ctx, slot.get("consistent_lsn"))
    @task(**RETRY)
    def plan_postgres(**ctx) -> list: return _call(ready.batches, ctx, "postgres")
    @task(**RETRY)
    def plan_cassandra(**ctx) -> list: return _call(ready.batches, ctx, "cassandra")
    @task(**RETRY, pool="tm_postgres")
    def copy_postgres_batch(chunk_ids: list, **ctx) -> dict: return _call(ready.copy_postgres_batch, ctx, chunk_ids)
    @task(**RETRY, pool="tm_cassandra")
    def copy_cassandra_batch(chunk_ids: list, **ctx) -> dict: return _call(ready.copy_cassandra_batch, ctx, chunk_ids)
    @task(**CUTOVER, trigger_rule="none_failed")
    def gate_post_copy(**ctx) -> dict: return _call(ready.gate_post_copy, ctx)
    @task(**RETRY)
    def reattach_replica(**ctx) -> dict: return _call(ready.reattach_replica, ctx, False)  # unattended: release
    @task(**RETRY)
    def catch_up_postgres(**ctx) -> dict: return _call(set_phase.catch_up_postgres, ctx)
    @task(**RETRY)
    def catch_up_cassandra(**ctx) -> dict: return _call(set_phase.catch_up_cassandra, ctx)
    @task(**RETRY)
    def warm_up(**ctx) -> dict: return _call(set_phase.warm_up, ctx)
    @task(**CUTOVER)
    def gate_catch_up(**ctx) -> dict: return _call(set_phase.gate_catch_up, ctx)
    @task(**RETRY)
    def suspend_registrations(**ctx) -> dict: return _call(go.suspend_registrations, ctx)
    @task(**RETRY)
    def final_catch_up(**ctx) -> dict: return _call(go.final_catch_up, ctx)
    @task(**CUTOVER)
    def gate_pre_flip(**ctx) -> dict: return _call(go.gate_pre_flip, ctx)
    @task(**RETRY)
    def lower_dns_ttl(pre: dict, **ctx) -> dict:  # the wait is deferred: it holds no worker slot
        return deferral.until(_call(go.lower_dns_ttl, ctx, pre["slug"], False))
    @task(**CUTOVER)
    def flip_dns(pre: dict, **ctx) -> dict: return _call(go.flip_dns, ctx, pre["slug"])
    @task(**RETRY)
    def drain_stragglers(**ctx) -> dict: return _call(go.drain_stragglers, ctx)
    @task(**CUTOVER)
    def gate_post_flip(pre: dict, drained: dict, **ctx) -> dict: return _call(go.gate_post_flip, ctx, pre["slug"], drained)
    @task(**RETRY)
    def resume_registrations(**ctx) -> dict: return _call(go.resume_registrations, ctx, False)  # unattended
    @task(**RETRY)
    def drop_cdc_slot(**ctx) -> dict: return _call(finish.drop_cdc_slot, ctx, False)  # unattended: release
    @task(**CUTOVER)
    def gate_final(**ctx) -> dict: return _call(finish.gate_final, ctx)
    @task(retries=1)
    def report_migration(flipped: dict, **ctx) -> dict: return _call(finish.report, ctx, flipped)
    @task(**CUTOVER)
    def check_way_back(**ctx) -> dict: return _call(rollback.check_rollback, ctx)
    @task(**CUTOVER)
    def flip_dns_back(checked: dict, **ctx) -> dict: return _call(rollback.flip_dns_back, ctx, checked["slug"])
    @task(**RETRY)
    def copy_back_postgres(**ctx) -> dict: return _call(rollback.copy_back_postgres, ctx)
    @task(**RETRY)
    def copy_back_cassandra(**ctx) -> dict: return _call(rollback.copy_back_cassandra, ctx)
    @task(**CUTOVER)
    def gate_copy_back(**ctx) -> dict: return _call(rollback.gate_copy_back, ctx)
    @task(retries=1)
    def finish_way_back(**ctx) -> dict: return _call(rollback.finish_rollback, ctx)
    @task(**CUTOVER)
    def verify_shared_unchanged(**ctx) -> dict: return _call(rehearsal.verify_shared_unchanged, ctx)
    @task(retries=1)
    def purge_target(**ctx) -> dict: return _call(rehearsal.purge_target, ctx)
    @task(retries=1, trigger_rule="all_done")
    def write_report(**ctx) -> dict: return _call(rehearsal.write_report, ctx)

    begun = begin_rehearsal()
    pre = preflight()
    slot = create_cdc_slot()
    with TaskGroup("ready"):
        detached = detach_replica(slot)
        plans = [plan_postgres(), plan_cassandra()]
        copies = [copy_postgres_batch.expand(chunk_ids=plans[0]), copy_cassandra_batch.expand(chunk_ids=plans[1])]
        post_copy = gate_post_copy()
        reattached = reattach_replica().as_teardown(setups=detached)
        detached >> plans
        copies >> post_copy >> reattached
    with TaskGroup("set"):
        set_gate = gate_catch_up()
        post_copy >> [catch_up_postgres(), catch_up_cassandra()] >> warm_up() >> set_gate
    with TaskGroup("go"):
        suspended = suspend_registrations()
        flipped = flip_dns(pre)
        drained = drain_stragglers()
        post_flip = gate_post_flip(pre, drained)
        resumed = resume_registrations().as_teardown(setups=suspended)
        set_gate >> suspended >> final_catch_up() >> gate_pre_flip() >> deferral.resumable(lower_dns_ttl(pre)) >> flipped
        flipped >> drained >> post_flip >> resumed
    dropped = drop_cdc_slot().as_teardown(setups=slot)
    migrated = report_migration(flipped)
    final = gate_final()
    [post_flip, resumed] >> final >> dropped  # gate_final reads the change stream: the slot goes after it
    final >> migrated
    reattached >> dropped
    with TaskGroup("back"):
        checked = check_way_back()
        copied = [copy_back_postgres(), copy_back_cassandra()]
        finished = finish_way_back()
        migrated >> checked
        flip_dns_back(checked) >> copied >> gate_copy_back() >> finished
    purged = purge_target().as_teardown(setups=begun)
    begun >> pre >> slot
    finished >> verify_shared_unchanged() >> purged >> write_report()


evidence_links(tenant_rehearsal())
