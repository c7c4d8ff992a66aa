"""The load check's workload: whatever drives the target at the tenant's own write shape and rate
and measures it (the SET phase's "Gatling" step). The engine knows only this interface; a platform
provides one and its profile names it ``module:function`` (``load_check.workload``, or ``none``).
The bundled sample platform's is its fleet simulator's
(``tenant_migration.sample.fleet.loadcheck:load_check``): imported by name when the check runs, so
the engine never imports the simulator.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from tenant_migration.endpoints import Endpoints
    from tenant_migration.spec import MigrationSpec


class LoadWorkload(Protocol):
    """Drive the target for ``seconds`` at ``rate`` writes/s; return a JSON-able summary, or raise
    ``validation.counts.GateFailed`` (with the numbers) when p99, errors or the achieved rate miss."""

    def __call__(self, ep: Endpoints, spec: MigrationSpec, run_id: str, *, rate: float, seconds: float,
                 max_p99_ms: float, max_errors: int, min_rate_fraction: float) -> dict[str, Any]: ...


def resolve(ref: str) -> LoadWorkload:
    """The function ``ref`` (``package.module:function``) names; ``ValueError`` naming it when
    there is none."""
    module, _, name = ref.partition(":")
    if not module or not name:
        raise ValueError(f"load workload {ref!r}: expected 'package.module:function'")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"load workload {ref!r} cannot be loaded: {type(exc).__name__}: {exc}") from exc
    if not callable(fn):
        raise ValueError(f"load workload {ref!r} is not callable")
    return fn  # type: ignore[no-any-return]
