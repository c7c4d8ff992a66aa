"""The migration's steps under one name, for scripts, the demo, benchmarks and tests.

The steps live in ``flows``, one module per phase (``ready``, ``set``, ``go``, ``finish``, on
``common``); the DAG files import them from there. Nothing in the package imports this module.
"""

from __future__ import annotations

from tenant_migration.flows.common import (  # noqa: F401
    KeptForResume,
    PreflightError,
    detach_lsn,
    fingerprint,
    gate_passed,
    hold_for_resume,
    migrated_tables,
    record_gate_result,
    reports_dir,
    safe_name,
    step,
    tenant_slug,
    write_evidence,
)
from tenant_migration.flows.finish import (  # noqa: F401
    AFTER_FLIP_COLUMNS,
    after_flip_frame,
    cassandra_ownership,
    drop_cdc_slot,
    gate_final,
    history_frame,
    report,
    straggler_lines,
)
from tenant_migration.flows.go import (  # noqa: F401
    advance_sequences,
    drain_stragglers,
    ensure_dns_ready,
    ensure_registrations_suspended,
    final_catch_up,
    flip_dns,
    flip_preconditions,
    gate_dns_shift,
    gate_post_flip,
    gate_pre_flip,
    lower_dns_ttl,
    resume_registrations,
    shift_dns,
    suspend_registrations,
    suspension_window,
)
from tenant_migration.flows.ready import (  # noqa: F401
    batches,
    cassandra_drift,
    cassandra_fingerprints,
    copy_cassandra,
    copy_cassandra_batch,
    copy_postgres,
    copy_postgres_batch,
    copy_shared_tables,
    create_cdc_slot,
    detach_replica,
    dns_problems,
    empty_key_problems,
    gate_post_copy,
    key_problems,
    keys_types,
    plan_cassandra,
    plan_postgres,
    preflight,
    reattach_replica,
)
from tenant_migration.flows.set import (  # noqa: F401
    catch_up_cassandra,
    catch_up_postgres,
    coverage_frame,
    gate_catch_up,
    late_frame,
    load_check,
    measure_cdc_lag,
    plan_late_partitions,
    sequence_frame,
    warm_up,
)
