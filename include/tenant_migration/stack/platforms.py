"""The platforms a local stack hosts (``TM_PLATFORM``), found by name: the stack serves any
platform, and a platform's module builds on the stack, never the other way round."""

from __future__ import annotations

import importlib
import os
from typing import Any

from tenant_migration.stack.common import StackError

PLATFORM_ENV = "TM_PLATFORM"
DEFAULT_PLATFORMS = "tenant_migration.sample.platform,tenant_migration.sample.meterhub.platform"


def hosted_platforms() -> list[Any]:
    """The platforms this stack hosts: modules with ``bootstrap(topo)`` (schemas and roles on the
    servers), ``load_data(topo, preset, seed)`` and ``demo_reset(topo)`` (optionally ``NAME``,
    ``connections(topo)``, ``down(topo)``, ``status(topo)``), named by ``TM_PLATFORM`` (comma-separated;
    default: both bundled platforms). Named, not imported: the stack serves any platform, and a
    platform's module builds on the stack, never the other way round."""
    return platforms_named(os.environ.get(PLATFORM_ENV, DEFAULT_PLATFORMS))


def platforms_named(names: str) -> list[Any]:
    return [importlib.import_module(m.strip()) for m in names.split(",") if m.strip()]


def hosted_platform(name: str | None = None) -> Any:
    """The hosted platform called ``name`` (its ``NAME``, or the module's last part but one:
    ``sample`` for ``tenant_migration.sample.platform``); None: the first."""
    found = hosted_platforms()
    if name is None:
        return found[0]
    for module in found:
        if platform_name(module) == name:
            return module
    raise StackError(f"no hosted platform {name!r}; this stack hosts {[platform_name(m) for m in found]} "
                     f"(${PLATFORM_ENV})")


def platform_name(module: Any) -> str:
    return str(getattr(module, "NAME", module.__name__.rsplit(".", 2)[-2]))
