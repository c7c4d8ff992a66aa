"""Fixtures of the whole-DAG tests."""

from __future__ import annotations

import pytest
from helpers import parse_dag


@pytest.fixture
def dag(topo, tiny_dataset):
    """The migration DAG, parsed from its file, on an emptied target with DNS on the shared platform."""
    from tenant_migration.sample import platform

    platform.demo_reset(topo)
    return parse_dag("tenant_migration")
