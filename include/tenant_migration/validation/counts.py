"""The walking skeleton's gate: the tenant's row counts are equal on both sides, table by table,
for PostgreSQL (replica vs target) and Cassandra (source vs target partitions).

Evidence is recorded in the ledger (and a JSON file) before the gate raises.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class GateFailed(RuntimeError):
    """A gate's expectations were not met; the message names what failed with the numbers."""


@dataclass
class CountComparison:
    store: str
    table: str
    source: int
    target: int

    @property
    def equal(self) -> bool:
        return self.source == self.target

    def to_dict(self) -> dict[str, Any]:
        return {"store": self.store, "table": self.table, "source": self.source, "target": self.target,
                "equal": self.equal}


@dataclass
class GateOutcome:
    gate: str
    comparisons: list[CountComparison] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.equal for c in self.comparisons)

    def failures(self) -> list[CountComparison]:
        return [c for c in self.comparisons if not c.equal]

    def summary(self) -> str:
        if self.passed:
            return f"{self.gate}: {len(self.comparisons)} tables, all counts equal"
        parts = [f"{c.store} {c.table}: source {c.source} != target {c.target}" for c in self.failures()]
        return f"{self.gate}: {len(parts)} of {len(self.comparisons)} tables differ: " + "; ".join(parts)

    def evidence(self) -> dict[str, Any]:
        return {"gate": self.gate, "passed": self.passed, "comparisons": [c.to_dict() for c in self.comparisons]}
