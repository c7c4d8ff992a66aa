"""Tenant migration: Ready / Set / Go, one tenant from the shared platform to its dedicated
deployment with zero downtime. The wiring only: each task runs one step of ``tenant_migration.flows``
(``ready``, ``set``, ``go``, ``finish``); the Docs tab shows the runbook
(``include/tenant_migration/runbooks/tenant_migration.md``)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import TaskGroup, dag, get_current_context, task

from tenant_migration import deferral
from tenant_migration.alerts import WebhookNotifier
from tenant_migration.evidence import attach as evidence_links
from tenant_migration.lazy import lazy_module, runbook
from tenant_migration.params import MIGRATION_PARAMS

if TYPE_CHECKING:
    from tenant_migration.flows import finish, go, ready
    from tenant_migration.flows import set as set_phase
else:  # imported when a task first uses them, never while Airflow parses this file
    ready, set_phase, go, finish = (lazy_module(f"tenant_migration.flows.{m}") for m in ("ready", "set", "go", "finish"))

RETRY = {"retries": 3, "retry_delay": timedelta(seconds=10), "retry_exponential_backoff": True,
         "max_retry_delay": timedelta(minutes=5)}
CUTOVER = {"retries": 0}


def _call(fn, context: dict, *args):
    from tenant_migration import runtime

    return runtime.call(fn, context, *args)


def _opening(fn, context: dict) -> dict:
    """The step that opens the run; then the run's note names its tenant and platform."""
    from tenant_migration import run_note

    return run_note.note_run(context, _call(fn, context))


@dag(dag_id="tenant_migration", description="Live-migrate ONE tenant (the form's tenant_id) from the shared platform to its dedicated deployment: Ready (detached replica, chunked copy), Set (catch-up, warm-up, load check), Go (registrations suspended, DNS flip, drain); every transition gated.", schedule=None, start_date=datetime(2026, 1, 1), catchup=False,
     params=MIGRATION_PARAMS, doc_md=runbook("tenant_migration"), tags=["tenant-migration"], max_active_runs=1,
     default_args={"owner": "data-infra", "execution_timeout": timedelta(hours=2),
                   "on_failure_callback": [WebhookNotifier()]})
def tenant_migration() -> None:
    @task(**RETRY)
    def preflight(**ctx) -> dict: return _opening(ready.preflight, ctx)
    @task(**RETRY)
    def create_cdc_slot(**ctx) -> dict: return _call(ready.create_cdc_slot, ctx)
    @task(**RETRY)
    def detach_replica(slot: dict, **ctx) -> dict: return _call(ready.detach_replica, ctx, slot.get("consistent_lsn"))
    @task(**RETRY)
    def copy_shared_tables(**ctx) -> dict: return _call(ready.copy_shared_tables, ctx)
    @task(**RETRY)
    def plan_postgres(**ctx) -> list: return _call(ready.batches, ctx, "postgres")
    @task(**RETRY)
    def plan_cassandra(**ctx) -> list: return _call(ready.batches, ctx, "cassandra")
    # Copy batches push no XCom: nothing reads it (the ledger holds their results; the log shows the
    # summary), and under standalone each push is one more execution API call per mapped task.
    @task(**RETRY, pool="tm_postgres", map_index_template="{{ batch_label }}", do_xcom_push=False)
    def copy_postgres_batch(chunk_ids: list, **ctx) -> dict:
        get_current_context()["batch_label"] = f"{chunk_ids[0]} .. {chunk_ids[-1]} ({len(chunk_ids)})"
        return _call(ready.copy_postgres_batch, ctx, chunk_ids)
    @task(**RETRY, pool="tm_cassandra", map_index_template="{{ batch_label }}", do_xcom_push=False)
    def copy_cassandra_batch(chunk_ids: list, **ctx) -> dict:
        get_current_context()["batch_label"] = f"{chunk_ids[0]} .. {chunk_ids[-1]} ({len(chunk_ids)})"
        return _call(ready.copy_cassandra_batch, ctx, chunk_ids)
    @task(**CUTOVER, trigger_rule="none_failed")
    def gate_post_copy(**ctx) -> dict: return _call(ready.gate_post_copy, ctx)
    @task(**RETRY)
    def reattach_replica(**ctx) -> dict: return _call(ready.reattach_replica, ctx)
    @task(**RETRY)
    def catch_up_postgres(**ctx) -> dict: return _call(set_phase.catch_up_postgres, ctx)
    @task(**RETRY)
    def catch_up_cassandra(**ctx) -> dict: return _call(set_phase.catch_up_cassandra, ctx)
    @task(**RETRY)
    def warm_up(**ctx) -> dict: return _call(set_phase.warm_up, ctx)
    @task(**CUTOVER)
    def load_check(**ctx) -> dict: return _call(set_phase.load_check, ctx)
    @task(**CUTOVER)
    def gate_catch_up(**ctx) -> dict: return _call(set_phase.gate_catch_up, ctx)
    @task(**RETRY)
    def suspend_registrations(**ctx) -> dict: return _call(go.suspend_registrations, ctx)
    @task(**RETRY)
    def final_catch_up(**ctx) -> dict: return _call(go.final_catch_up, ctx)
    @task(**CUTOVER)
    def gate_pre_flip(**ctx) -> dict: return _call(go.gate_pre_flip, ctx)
    @task.branch
    def choose_approval(**ctx) -> str:  # a dry run flips nothing: nothing to approve
        p = ctx["params"]
        return "go.approve_flip" if p.get("require_approval", True) and not p.get("dry_run") else "go.skip_approval"
    @task(**RETRY, trigger_rule="none_failed_min_one_success")
    def lower_dns_ttl(pre: dict, **ctx) -> dict:  # the wait is deferred: it holds no worker slot
        return deferral.until(_call(go.lower_dns_ttl, ctx, pre["slug"], False))
    @task(**CUTOVER)
    def flip_dns(pre: dict, **ctx) -> dict: return _call(go.flip_dns, ctx, pre["slug"])
    @task(**RETRY)
    def drain_stragglers(**ctx) -> dict: return _call(go.drain_stragglers, ctx)
    @task(**CUTOVER)
    def gate_post_flip(pre: dict, drained: dict, **ctx) -> dict: return _call(go.gate_post_flip, ctx, pre["slug"], drained)
    @task(**RETRY)
    def resume_registrations(**ctx) -> dict: return _call(go.resume_registrations, ctx)
    @task(**RETRY)
    def drop_cdc_slot(**ctx) -> dict: return _call(finish.drop_cdc_slot, ctx)
    @task(**CUTOVER)
    def gate_final(**ctx) -> dict: return _call(finish.gate_final, ctx)
    @task(retries=1)
    def report(flipped: dict, **ctx) -> dict: return _call(finish.report, ctx, flipped)

    pre = preflight()
    slot = create_cdc_slot()
    with TaskGroup("ready"):
        detached = detach_replica(slot)
        plans = [plan_postgres(), plan_cassandra()]  # planned on the detached (frozen) replica
        pg_copies = copy_postgres_batch.expand(chunk_ids=plans[0])
        cql_copies = copy_cassandra_batch.expand(chunk_ids=plans[1])
        post_copy = gate_post_copy()
        reattached = reattach_replica().as_teardown(setups=detached)
        detached >> plans
        detached >> copy_shared_tables() >> post_copy
        [pg_copies, cql_copies] >> post_copy >> reattached
    with TaskGroup("set"):
        caught_up = [catch_up_postgres(), catch_up_cassandra()]
        set_gate = gate_catch_up()
        post_copy >> caught_up >> warm_up() >> load_check() >> set_gate
    with TaskGroup("go"):
        suspended = suspend_registrations()
        pre_flip = gate_pre_flip()
        approve_flip = ApprovalOperator(task_id="approve_flip", subject="Flip DNS to the tenant's dedicated deployment?",
                                   body="Gates passed: see the run's reports. Reject (or no answer) stops the cutover.",
                                   defaults="Reject", response_timeout=timedelta(hours=1), fail_on_reject=True,
                                   execution_timeout=timedelta(hours=2))
        skip_approval = EmptyOperator(task_id="skip_approval")
        ttl = deferral.resumable(lower_dns_ttl(pre))  # its wait is deferred to the triggerer
        flipped = flip_dns(pre)
        drained = drain_stragglers()
        post_flip = gate_post_flip(pre, drained)
        resumed = resume_registrations().as_teardown(setups=suspended)
        set_gate >> suspended >> final_catch_up() >> pre_flip >> choose_approval() >> [approve_flip, skip_approval] >> ttl
        ttl >> flipped >> drained >> post_flip >> resumed
    dropped = drop_cdc_slot().as_teardown(setups=slot)
    pre >> slot
    final = gate_final()
    # gate_final reads the change stream (the tenant's writes after the drain): the slot goes after it.
    [post_flip, resumed] >> final >> dropped
    final >> report(flipped)
    reattached >> dropped


evidence_links(tenant_migration())
