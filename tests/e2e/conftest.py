"""Fixtures of the whole-DAG tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def dag(topo, tiny_dataset):
    """The migration DAG, parsed from its file, on an emptied target with DNS on the shared platform."""
    from airflow.dag_processing.dagbag import DagBag

    from tenant_migration.sample import platform
    from tenant_migration.stack.topology import REPO_ROOT

    platform.demo_reset(topo)
    bag = DagBag(dag_folder=str(REPO_ROOT / "dags" / "tenant_migration.py"))
    assert bag.import_errors == {}
    return bag.dags["tenant_migration"]
