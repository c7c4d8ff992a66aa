"""
### Tenant migration: Ready / Set / Go

Live-migrates one tenant out of the shared platform into its dedicated deployment with zero
downtime. Trigger it from the form (*Trigger*) with the tenant id; `dry_run` runs every check and
writes nothing. Gates are Great Expectations suites: a failing gate writes its evidence (JSON, an
HTML report, a `tm_control.gates` row) and names what failed in the task log before the task fails.

**READY** — `preflight` gate → `create_cdc_slot` (logical slot on the primary, *before* the detach)
→ `detach_replica` (pause WAL replay past the slot's consistent point) → `copy_shared_tables`
(reference data the tenant's rows point at) + `plan_*` → `copy_*_batch`
(mapped: as many tasks per store as the chunks' estimated work fills with `min_task_seconds` each,
at most `max_tasks`; each chunk replaced atomically, recorded in the ledger) → `gate_post_copy` →
`reattach_replica` (teardown: also on failure).
**SET** — `catch_up_postgres` (change stream) + `catch_up_cassandra` (recent buckets, and the
partitions of rows the stream brought: devices born after the detach) → `warm_up` →
`load_check` (the target takes the tenant's write shape at `load_rate`; p99 and errors gate it) →
`gate_catch_up` (first applies what the primary committed meanwhile, then checks lag and recent buckets).
**GO** — `suspend_registrations` (setup; the platform's own expiry is a dead-man switch) →
`final_catch_up` (change stream until now, the new rows' partitions, sequences past the source's) → `gate_pre_flip` → approval (Reject when nobody answers) → `lower_dns_ttl` →
`flip_dns` (re-checks now: registrations suspended, every record at `lowered_ttl` with the old TTL
waited out; suspends / lowers and waits again when not) → `drain_stragglers` (at least `drain_seconds`,
then until no write of the tenant reached the shared platform for `drain_quiet_s`; fails loudly after
`drain_max_s`) → `gate_post_flip` → `resume_registrations` (teardown) → `gate_final` (nothing of
another tenant on the target; registrations back on; every chunk done; every write the shared
platform took after the flip on the target) → `drop_cdc_slot` (teardown; reads no more) → `report`.

**Weighted shift** (optional, `dns_shift_percent_steps`, e.g. `10,50,100`; empty = flip at once):
`flip_dns` moves each record in steps. Each step is ONE Route53 change batch (a weighted pair per
record: source `100-p`, target `p`; the first step replaces the simple record, the 100 % step leaves
the simple target record the direct flip leaves), waited INSYNC and read back; then the records hold
for `dns_shift_dwell_s`, then the `dns_shift_<p>` gate (every record at the step's weights; the
target's PostgreSQL, Cassandra and endpoint records answer) before the next step. While shifting,
both deployments take the tenant's writes; `drain_stragglers` brings the source's over (from the
shift's start) once it is at 100 %. Registrations stay suspended through the shift: a step list whose
dwell outlasts half the suspension is refused up front, a malformed one before anything is written.

#### Runbook
| task | safe to clear? | notes |
|---|---|---|
| `preflight`, gates, `load_check` | yes | re-evaluate the data as it is now; evidence under the reports folder |
| `create_cdc_slot`, `detach_replica` | yes | idempotent |
| `reattach_replica`, `drop_cdc_slot` (teardowns) | yes | release once `post_copy` / `final` passed; after an earlier failure they **keep** the replica detached / the slot (ADR 7) and fail on purpose: red = still held |
| `copy_shared_tables` | yes | replaces the small reference tables whole, in one transaction each |
| `plan_*` | yes | the plan is stored once per run; a re-run returns only chunks not done |
| `copy_*_batch` | yes | backfill: *Clear → Only failed* with *Downstream* on the failed map indexes; done chunks are skipped, the kept teardowns re-run and release |
| `catch_up_*`, `final_catch_up`, `drain_stragglers` | yes | resume from `tm_control.cdc_progress` |
| `suspend_registrations` / `resume_registrations` | yes | resume also runs when anything failed; while the cutover is unfinished it resumes, then fails on purpose (red), so that *Only failed* runs it again after the flip (ADR 10) |
| `flip_dns` | **by hand only** (no automatic retry: a cutover task) | converges from the records as they are now; a cleared shift resumes at the first step at or above the weight it finds (never back towards the source); check the records and the `dns_shift_<p>` gate report first |
| `report` | yes | |
| **DNS control plane down during the flip**: `flip_dns` red (connection error, or `holds no record for ...`), `resume_registrations` and `drop_cdc_slot` red | yes, once Route53 answers | nothing moved (or the records are where the last batch left them); registrations were resumed for the outage; the slot is kept. Make sure the tenant's records exist (restore them on the shared platform if the zone lost them), then *Clear → Only failed* with *Downstream* on `go.flip_dns`: it suspends registrations again, finds the TTL as it is *now* (back at a long TTL: lowered and waited out again, up to `max_ttl_wait_s`; the log says so), flips; the drain waits for clients that kept the old answer (ADR 10) |
| **Drain never quiet**: `drain_stragglers` red, `still reach the shared platform ...` with the count and the newest write | yes | some clients never left the shared platform (a resolver pinning the old answer, a TTL ignored): find them (the shared platform's logs for the tenant's names), then clear `go.drain_stragglers` with downstream; or go back with `tenant_rollback` |
| **`gate_final` fails `writes_after_flip_on_target`** | yes | the shared platform took writes of the tenant after the drain; the evidence names each key. Clear `go.drain_stragglers` with downstream: it copies them (the slot was kept), the gate runs again |

**Resume** after a failure before the flip: fix the cause, then clear only the failed task
instances with downstream (UI, or REST `clearTaskInstances` with `only_failed` and
`include_downstream`): same snapshot, same change stream, only unfinished chunks copied.
**Abort.** Before `flip_dns`: mark the run failed (registrations resume by teardown; nothing
user-visible changed), then give up the held replica and slot:
`python -m tenant_migration.abort tenant_migration/<run id>` and clear `ready.reattach_replica` and
`drop_cdc_slot`. **Mid-shift** (a `dns_shift_<p>` gate failed, or you mark `flip_dns` failed
while it dwells): the records stay weighted where they are; run `tenant_rollback`: its flip-back
turns every weighted pair back into the simple source record (one batch); its copy-back first
streams what the source took during the shift to the target (the run's kept change stream), then
copies the target's rows back. After `flip_dns`: run the
`tenant_rollback` DAG (DNS back, the target's new changes back to the source, behind a gate); it
marks the migration run aborted, so a red `drop_cdc_slot` cleared afterwards drops the slot.
**Cassandra's log during the gates**: a WARN per aggregate over an `IN` of partitions; quiet it on
the shared cluster's nodes for the window (README, *Operating notes*).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import TaskGroup, dag, get_current_context, task

from tenant_migration.params import MIGRATION_PARAMS

RETRY = {"retries": 3, "retry_delay": timedelta(seconds=10), "retry_exponential_backoff": True,
         "max_retry_delay": timedelta(minutes=5)}
CUTOVER = {"retries": 0}


def _call(name: str, context: dict, *args):
    from tenant_migration import runtime, steps

    return runtime.call(getattr(steps, name), context, *args)


@dag(dag_id="tenant_migration", schedule=None, start_date=datetime(2026, 1, 1), catchup=False,
     params=MIGRATION_PARAMS, doc_md=__doc__, tags=["tenant-migration"], max_active_runs=1,
     default_args={"owner": "data-infra", "execution_timeout": timedelta(hours=2)})
def tenant_migration() -> None:
    @task(**RETRY)
    def preflight(**ctx) -> dict: return _call("preflight", ctx)
    @task(**RETRY)
    def create_cdc_slot(**ctx) -> dict: return _call("create_cdc_slot", ctx)
    @task(**RETRY)
    def detach_replica(slot: dict, **ctx) -> dict: return _call("detach_replica", ctx, slot.get("consistent_lsn"))
    @task(**RETRY)
    def copy_shared_tables(**ctx) -> dict: return _call("copy_shared_tables", ctx)
    @task(**RETRY)
    def plan_postgres(**ctx) -> list: return _call("batches", ctx, "postgres")
    @task(**RETRY)
    def plan_cassandra(**ctx) -> list: return _call("batches", ctx, "cassandra")
    # Copy batches push no XCom: nothing reads it (the ledger holds their results; the log shows the
    # summary), and under standalone each push is one more execution API call per mapped task.
    @task(**RETRY, pool="tm_postgres", map_index_template="{{ batch_label }}", do_xcom_push=False)
    def copy_postgres_batch(chunk_ids: list, **ctx) -> dict:
        get_current_context()["batch_label"] = f"{chunk_ids[0]} .. {chunk_ids[-1]} ({len(chunk_ids)})"
        return _call("copy_postgres_batch", ctx, chunk_ids)
    @task(**RETRY, pool="tm_cassandra", map_index_template="{{ batch_label }}", do_xcom_push=False)
    def copy_cassandra_batch(chunk_ids: list, **ctx) -> dict:
        get_current_context()["batch_label"] = f"{chunk_ids[0]} .. {chunk_ids[-1]} ({len(chunk_ids)})"
        return _call("copy_cassandra_batch", ctx, chunk_ids)
    @task(**CUTOVER, trigger_rule="none_failed")
    def gate_post_copy(**ctx) -> dict: return _call("gate_post_copy", ctx)
    @task(**RETRY)
    def reattach_replica(**ctx) -> dict: return _call("reattach_replica", ctx)
    @task(**RETRY)
    def catch_up_postgres(**ctx) -> dict: return _call("catch_up_postgres", ctx)
    @task(**RETRY)
    def catch_up_cassandra(**ctx) -> dict: return _call("catch_up_cassandra", ctx)
    @task(**RETRY)
    def warm_up(**ctx) -> dict: return _call("warm_up", ctx)
    @task(**CUTOVER)
    def load_check(**ctx) -> dict: return _call("load_check", ctx)
    @task(**CUTOVER)
    def gate_catch_up(**ctx) -> dict: return _call("gate_catch_up", ctx)
    @task(**RETRY)
    def suspend_registrations(**ctx) -> dict: return _call("suspend_registrations", ctx)
    @task(**RETRY)
    def final_catch_up(**ctx) -> dict: return _call("final_catch_up", ctx)
    @task(**CUTOVER)
    def gate_pre_flip(**ctx) -> dict: return _call("gate_pre_flip", ctx)
    @task.branch
    def choose_approval(**ctx) -> str:
        return "go.approve_flip" if ctx["params"].get("require_approval", True) else "go.skip_approval"
    @task(**RETRY, trigger_rule="none_failed_min_one_success")
    def lower_dns_ttl(pre: dict, **ctx) -> dict: return _call("lower_dns_ttl", ctx, pre["slug"])
    @task(**CUTOVER)
    def flip_dns(pre: dict, **ctx) -> dict: return _call("flip_dns", ctx, pre["slug"])
    @task(**RETRY)
    def drain_stragglers(**ctx) -> dict: return _call("drain_stragglers", ctx)
    @task(**CUTOVER)
    def gate_post_flip(pre: dict, drained: dict, **ctx) -> dict: return _call("gate_post_flip", ctx, pre["slug"], drained)
    @task(**RETRY)
    def resume_registrations(**ctx) -> dict: return _call("resume_registrations", ctx)
    @task(**RETRY)
    def drop_cdc_slot(**ctx) -> dict: return _call("drop_cdc_slot", ctx)
    @task(**CUTOVER)
    def gate_final(**ctx) -> dict: return _call("gate_final", ctx)
    @task(retries=1)
    def report(flipped: dict, **ctx) -> dict: return _call("report", ctx, flipped)

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
        ttl = lower_dns_ttl(pre)
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


tenant_migration()
