"""
### Tenant rehearsal: the test-pool tenant to the target and back, every week

Runs the whole migration (the same library steps as `tenant_migration`, no human approval) for
the **test-pool** tenant, flips its DNS records to the dedicated target, then takes the way back
(`tenant_rollback`'s steps: DNS back to shared, the target's rows and post-flip cells copied back)
and proves the shared platform's test-pool data is exactly as before (checksums against a baseline
taken first). It ends with a **go/no-go report** (`<reports>/<run>/rehearsal_report.{json,txt}` and
a PNG of step durations): every task's duration, the long poles, every gate, and the predicted
Migration Day durations of the *reference tenant* from its size and the rates measured here. One
row per rehearsal in `tm_control.rehearsals` keeps the trend (the report lists the last N).

#### Runbook
| task | safe to clear? | notes |
|---|---|---|
| `begin_rehearsal` | yes | refuses any tenant whose slug is not `tenant_slug`; the baseline is taken once per run |
| migration tasks (`preflight` .. `report_migration`) | as in `tenant_migration` | same library, same ledger rules |
| `copy_*_batch` | yes | clear only the failed map indexes: done chunks are skipped |
| `flip_dns`, `flip_dns_back` | **by hand only** (retries=0) | UPSERT converges; check the records first |
| `check_way_back`, `copy_back_*` | yes | ledger run `<run>/back`; done tables/chunks are skipped |
| `gate_copy_back`, `verify_shared_unchanged` | yes | re-evaluate now; evidence in the reports folder |
| `purge_target` | yes | teardown; refuses after a flip whose copy-back did not pass |
| `write_report` | yes | |

**Abort.** Before `flip_dns`: mark the run failed; teardowns reattach the replica, resume
registrations, drop the slot and purge the target. After `flip_dns`: trigger `tenant_rollback` with
tenant 5 and `confirm_tenant_slug` = `test-pool`, then clear `purge_target`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, TaskGroup, dag, task

from tenant_migration.params import migration_params

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
    **migration_params("chunk_rows", "max_tasks", "cassandra_days", "max_ttl_wait_s", "drain_seconds", "drain_quiet_s",
                       "dns_zone", "target_endpoint_prefix", max_ttl_wait_s=5, drain_seconds=5, drain_quiet_s=3,
                       cassandra_days=4),
}


def _call(name: str, context: dict, *args):
    from tenant_migration import rehearsal

    return rehearsal.call(name, context, *args)


@dag(dag_id="tenant_rehearsal", schedule="@weekly", start_date=datetime(2026, 1, 1), catchup=False, params=PARAMS,
     doc_md=__doc__, tags=["tenant-migration", "rehearsal"], max_active_runs=1,
     default_args={"owner": "data-infra", "execution_timeout": timedelta(hours=2)})
def tenant_rehearsal() -> None:
    @task(**RETRY)
    def begin_rehearsal(**ctx) -> dict: return _call("rehearsal.begin_rehearsal", ctx)
    @task(**RETRY)
    def preflight(**ctx) -> dict: return _call("steps.preflight", ctx)
    @task(**RETRY)
    def create_cdc_slot(**ctx) -> dict: return _call("steps.create_cdc_slot", ctx)
    @task(**RETRY)
    def detach_replica(slot: dict, **ctx) -> dict: return _call("steps.detach_replica", ctx, slot.get("consistent_lsn"))
    @task(**RETRY)
    def plan_postgres(**ctx) -> list: return _call("steps.batches", ctx, "postgres")
    @task(**RETRY)
    def plan_cassandra(**ctx) -> list: return _call("steps.batches", ctx, "cassandra")
    @task(**RETRY, pool="tm_postgres")
    def copy_postgres_batch(chunk_ids: list, **ctx) -> dict: return _call("steps.copy_postgres_batch", ctx, chunk_ids)
    @task(**RETRY, pool="tm_cassandra")
    def copy_cassandra_batch(chunk_ids: list, **ctx) -> dict: return _call("steps.copy_cassandra_batch", ctx, chunk_ids)
    @task(**CUTOVER, trigger_rule="none_failed")
    def gate_post_copy(**ctx) -> dict: return _call("steps.gate_post_copy", ctx)
    @task(**RETRY)
    def reattach_replica(**ctx) -> dict: return _call("steps.reattach_replica", ctx, False)  # unattended: release
    @task(**RETRY)
    def catch_up_postgres(**ctx) -> dict: return _call("steps.catch_up_postgres", ctx)
    @task(**RETRY)
    def catch_up_cassandra(**ctx) -> dict: return _call("steps.catch_up_cassandra", ctx)
    @task(**RETRY)
    def warm_up(**ctx) -> dict: return _call("steps.warm_up", ctx)
    @task(**CUTOVER)
    def gate_catch_up(**ctx) -> dict: return _call("steps.gate_catch_up", ctx)
    @task(**RETRY)
    def suspend_registrations(**ctx) -> dict: return _call("steps.suspend_registrations", ctx)
    @task(**RETRY)
    def final_catch_up(**ctx) -> dict: return _call("steps.final_catch_up", ctx)
    @task(**CUTOVER)
    def gate_pre_flip(**ctx) -> dict: return _call("steps.gate_pre_flip", ctx)
    @task(**RETRY)
    def lower_dns_ttl(pre: dict, **ctx) -> dict: return _call("steps.lower_dns_ttl", ctx, pre["slug"])
    @task(**CUTOVER)
    def flip_dns(pre: dict, **ctx) -> dict: return _call("steps.flip_dns", ctx, pre["slug"])
    @task(**RETRY)
    def drain_stragglers(**ctx) -> dict: return _call("steps.drain_stragglers", ctx)
    @task(**CUTOVER)
    def gate_post_flip(pre: dict, drained: dict, **ctx) -> dict: return _call("steps.gate_post_flip", ctx, pre["slug"], drained)
    @task(**RETRY)
    def resume_registrations(**ctx) -> dict: return _call("steps.resume_registrations", ctx, False)  # unattended
    @task(**RETRY)
    def drop_cdc_slot(**ctx) -> dict: return _call("steps.drop_cdc_slot", ctx, False)  # unattended: release
    @task(**CUTOVER)
    def gate_final(**ctx) -> dict: return _call("steps.gate_final", ctx)
    @task(retries=1)
    def report_migration(flipped: dict, **ctx) -> dict: return _call("steps.report", ctx, flipped)
    @task(**CUTOVER)
    def check_way_back(**ctx) -> dict: return _call("rollback.check_rollback", ctx)
    @task(**CUTOVER)
    def flip_dns_back(checked: dict, **ctx) -> dict: return _call("rollback.flip_dns_back", ctx, checked["slug"])
    @task(**RETRY)
    def copy_back_postgres(**ctx) -> dict: return _call("rollback.copy_back_postgres", ctx)
    @task(**RETRY)
    def copy_back_cassandra(**ctx) -> dict: return _call("rollback.copy_back_cassandra", ctx)
    @task(**CUTOVER)
    def gate_copy_back(**ctx) -> dict: return _call("rollback.gate_copy_back", ctx)
    @task(retries=1)
    def finish_way_back(**ctx) -> dict: return _call("rollback.finish_rollback", ctx)
    @task(**CUTOVER)
    def verify_shared_unchanged(**ctx) -> dict: return _call("rehearsal.verify_shared_unchanged", ctx)
    @task(retries=1)
    def purge_target(**ctx) -> dict: return _call("rehearsal.purge_target", ctx)
    @task(retries=1, trigger_rule="all_done")
    def write_report(**ctx) -> dict: return _call("rehearsal.write_report", ctx)

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
        set_gate >> suspended >> final_catch_up() >> gate_pre_flip() >> lower_dns_ttl(pre) >> flipped
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


tenant_rehearsal()
