"""Trigger params of the migration DAGs (the UI form): typed, titled and described. Plain data:
importing this module opens nothing."""

from __future__ import annotations

import os
from typing import Any

from airflow.sdk import Param

from tenant_migration.profile_folder import PROFILES_ENV, available

# The profile a scheduled rehearsal takes when the folder holds several (a scheduled DAG needs a
# valid default for every param): read with the folder, at parse time (ADR 13).
REHEARSAL_PLATFORM_ENV = "TM_REHEARSAL_PLATFORM"


def _platform_param() -> Param:
    """The deployment's profiles by name: the folder the environment names, listed (not read). With
    one profile it is the default; with several the operator must choose."""
    names = available()
    schema: dict[str, Any] = {
        "type": "string", "title": "Platform",
        "description": f"The platform profile to migrate with (a <name>.yaml of the profiles folder: ${PROFILES_ENV}, "
                       f"else include/profiles): its tenant map, registration switch and DNS records. Read when "
                       f"the run starts."}
    if names:
        schema["enum"] = names
    return Param(names[0], **schema) if len(names) == 1 else Param(**schema)


MIGRATION_PARAMS = {
    "platform": _platform_param(),
    "tenant_id": Param(type="integer", minimum=1, title="Tenant id",
                       description="Id of the tenant to migrate: the key of the profile's tenant root table."),
    "dry_run": Param(False, type="boolean", title="Dry run",
                     description="Run every check and write nothing: no ledger run, no copy, no DNS change."),
    "chunk_rows": Param(50_000, type="integer", minimum=100, maximum=10_000_000, title="Chunk rows",
                        description="Target number of rows per PostgreSQL chunk."),
    "max_tasks": Param(2, type="integer", minimum=1, maximum=256, title="Copy tasks per store",
                       description="Chunks are dealt into at most this many mapped copy tasks per store. "
                                   "2 = the copy pools' slots: more tasks add Airflow start-up per task "
                                   "without more parallelism (bench/bench_airflow_overhead.py)."),
    "min_task_seconds": Param(30, type="integer", minimum=0, maximum=86_400, title="Copy work per task (s)",
                              description="Chunks are dealt into as many copy tasks as their estimated work "
                                          "fills with this many seconds each (at most max_tasks): Airflow's "
                                          "fixed cost per task stays under 10 % when a task copies at least "
                                          "9x it. 0 = always max_tasks."),
    "cassandra_concurrency": Param(64, type="integer", minimum=1, maximum=1024, title="Cassandra concurrency",
                                   description="Requests in flight per Cassandra copy."),
    "cassandra_days": Param(0, type="integer", minimum=0, maximum=3650, title="Cassandra days",
                            description="Day buckets of Cassandra rows to copy, newest first, counting today (UTC). "
                                        "0 = the tenant map's whole retention window (the default). Fewer days "
                                        "leave older history behind: gate_final then fails unless "
                                        "'Partial history intended' is on."),
    "partial_history_ok": Param(False, type="boolean", title="Partial history intended",
                                description="Accept a Cassandra plan shorter than the retention window "
                                            "(cassandra_days above): the final gate records it instead of failing."),
    "dns_zone": Param("iot.example.test.", type="string", title="DNS zone",
                      description="Route53 hosted zone that holds the tenant's endpoint records."),
    "target_endpoint_prefix": Param("vpc", type="string", pattern="^[a-z0-9][a-z0-9-]{0,62}$",
                                    title="Target endpoint prefix",
                                    description="{prefix} in the profile's DNS templates of the dedicated endpoints "
                                                "(the sample's: <service>.<prefix>-<slug>.<zone>)."),
    "max_lag_bytes": Param(1_048_576, type="integer", minimum=0, title="Max change lag (bytes)",
                           description="Catch-up is done when the change stream's lag is at most this."),
    "max_lag_seconds": Param(10, type="integer", minimum=0, title="Max change lag (seconds)",
                             description="The catch-up gate fails above this lag."),
    "catch_up_timeout_s": Param(900, type="integer", minimum=1, title="Catch-up timeout (s)",
                                description="A catch-up that has not converged by then fails (and can be retried)."),
    "time_budget_minutes": Param(480, type="integer", minimum=0, maximum=10080, title="Time budget (min)",
                                 description="An alert goes to the on-call webhook (connection tm_alerts) once the "
                                             "run has been going longer than this; 0: no budget."),
    "suspension_minutes": Param(30, type="integer", minimum=1, maximum=1440, title="Suspension expiry (min)",
                                description="Registrations come back by themselves after this, even if Airflow dies."),
    "lowered_ttl": Param(30, type="integer", minimum=1, title="Lowered DNS TTL (s)",
                         description="TTL of the tenant's records during the cutover."),
    "max_ttl_wait_s": Param(300, type="integer", minimum=0, title="Max wait for the old TTL (s)",
                            description="After lowering the TTL, wait out the old TTL, at most this long."),
    "drain_seconds": Param(60, type="integer", minimum=0, title="Straggler drain, at least (s)",
                           description="After the flip, keep copying writes that reach the shared platform for "
                                       "at least this long (at least the lowered TTL)."),
    "drain_quiet_s": Param(30, type="integer", minimum=0, title="Drain ends after quiet (s)",
                           description="... then until no new write of the tenant reached the shared platform "
                                       "for this long."),
    "drain_max_s": Param(900, type="integer", minimum=1, title="Drain at most (s)",
                         description="The drain fails loudly (with the count and the newest write) when the tenant "
                                     "still writes to the shared platform after this long."),
    "sequence_headroom": Param(1_000_000, type="integer", minimum=0, title="Sequence headroom",
                               description="Before the flip, each sequence of the tenant's tables starts on the target "
                                           "this far past the source's: room for the keys of rows the shared platform "
                                           "still takes after the flip (the drain copies them with those keys)."),
    "load_rate": Param(500, type="integer", minimum=0, title="Load check rate (writes/s)",
                       description="SET-phase load check: writes/s driven at the target in the tenant's shape (0 skips it)."),
    "load_seconds": Param(10, type="integer", minimum=1, title="Load check duration (s)",
                          description="How long the load check drives the target."),
    "load_max_p99_ms": Param(50, type="integer", minimum=1, title="Load check p99 limit (ms)",
                             description="The load check fails above this write latency p99 or on any error."),
    "load_min_rate_pct": Param(95, type="integer", minimum=1, maximum=100, title="Load check minimum rate (%)",
                               description="The load check fails when the target acknowledges less than this "
                                           "share of the offered writes/s."),
    "dns_shift_percent_steps": Param("", type="string", pattern=r"^\s*$|^\s*\d{1,3}(\s*,\s*\d{1,3})*\s*$",
                                     examples=["", "10,50,100", "25,50,75,100"], title="Weighted DNS shift (%)",
                                     description="Empty: flip every record at once. Otherwise the share of answers "
                                                 "sent to the target at each step, ascending and ending at 100 "
                                                 "(e.g. 10,50,100), with a gate and a dwell between steps."),
    "dns_shift_dwell_s": Param(300, type="integer", minimum=0, maximum=86_400, title="Dwell between shift steps (s)",
                               description="How long each weighted step holds before its gate and the next step."),
    "require_approval": Param(True, type="boolean", title="Require approval",
                              description="A human approves the DNS flip (off for rehearsals and tests)."),
}


def scheduled_platform_param() -> Param:
    """The platform param of a scheduled DAG (the rehearsal): the folder's only profile, or with
    several the one ``$TM_REHEARSAL_PLATFORM`` names; else no choice (``""``), so that the DAG
    still parses and can be triggered by hand with a platform, while a scheduled run fails at once
    asking for one (``profile.named``)."""
    base = MIGRATION_PARAMS["platform"]
    names = available()
    chosen = names[0] if len(names) == 1 else os.environ.get(REHEARSAL_PLATFORM_ENV, "")
    schema = dict(base.schema)
    if chosen not in names:
        chosen = ""
    schema["enum"] = names if chosen else [*names, ""]
    description = (f"{base.description} With several profiles, the scheduled run rehearses the one "
                   f"${REHEARSAL_PLATFORM_ENV} names.")
    return Param(chosen, description=description, **{k: v for k, v in schema.items() if k != "description"})


def migration_params(*names: str, **defaults: object) -> dict[str, Param]:
    """A subset of the migration's params for another DAG (same types, titles, descriptions), with
    other defaults where that DAG needs them (rehearsals use short waits, for instance)."""
    out: dict[str, Param] = {}
    for name in names:
        base = MIGRATION_PARAMS[name]
        default = defaults.get(name, base.value if base.has_value else None)
        schema = dict(base.schema)
        out[name] = (Param(default, description=base.description, **schema) if default is not None
                     else Param(description=base.description, **schema))
    return out
