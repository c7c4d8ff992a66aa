"""What a task's Airflow context says of its run, for the task glue (``runtime``) and the alerts:
the ledger's run key and the platform's name. No imports of Airflow or drivers."""

from __future__ import annotations

from typing import Any


def run_key(context: dict[str, Any]) -> str:
    """The ledger's run id of a task's DAG run (``runtime.run_key``): ``<dag id>/<run id>``."""
    return f"{context['dag'].dag_id}/{context['run_id']}"


def platform_label(requested: Any) -> str:
    """The platform a run names, or the deployment's only profile when it names none."""
    if requested:
        return str(requested)
    try:
        from tenant_migration import profile

        names = profile.available(profile.profiles_dir())
    except Exception as exc:  # the step itself reports a broken profiles folder
        return f"(not resolved: {type(exc).__name__})"
    return names[0] if len(names) == 1 else f"(not chosen: the deployment has {names or 'none'})"
