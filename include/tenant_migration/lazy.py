"""What DAG files need at parse time, and nothing heavier.

Airflow parses DAG files often and must not import drivers, pandas or Great Expectations while it
does (``tests/dags``). A DAG file still names the steps it wires, as attributes of its phase modules
(``ready.preflight``), so that a reader or a type checker follows a task to its code: the modules
come from ``lazy_module``, imported at their first attribute access -- in the task, not the parser.
"""

from __future__ import annotations

import importlib
from importlib import resources
from typing import Any


class LazyModule:
    """Stands for module ``name`` and imports it at the first read of one of its attributes. Not a
    module object: Airflow's parser inspects every global of a DAG file (``isinstance``, dunder
    look-ups), which must not trigger the import; only plain attribute names do."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(importlib.import_module(self._name), attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name}>"


def lazy_module(name: str) -> Any:
    """``LazyModule(name)``; a DAG file binds it under ``if not TYPE_CHECKING`` so that type
    checkers see the real module."""
    return LazyModule(name)


def runbook(dag_id: str) -> str:
    """The DAG's Docs tab: its runbook, ``runbooks/<dag_id>.md`` (the one copy; README and docs/ link to it)."""
    return (resources.files("tenant_migration") / "runbooks" / f"{dag_id}.md").read_text()


def same_named_subclass(base: type, **attrs: Any) -> type:
    """``base`` with ``attrs`` added, under ``base``'s own names: an operator class given one more
    link or method (Airflow shows and serializes the class by its name)."""
    return type(base.__name__, (base,), {"__module__": base.__module__, "__qualname__": base.__qualname__, **attrs})
