"""Proof from the journal: every acknowledged write is on the target in its final state."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from tenant_migration.endpoints import CassandraEndpoint, PgEndpoint
from tenant_migration.fleet.journal import Journal


@dataclass
class Verification:
    datapoints_acked: int = 0
    datapoints_missing: list[dict[str, Any]] = field(default_factory=list)
    datapoints_wrong: list[dict[str, Any]] = field(default_factory=list)
    app_updates_checked: int = 0
    app_updates_wrong: list[dict[str, Any]] = field(default_factory=list)
    registrations_acked: int = 0
    registrations_missing: list[str] = field(default_factory=list)
    registrations_never_acked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.datapoints_missing or self.datapoints_wrong or self.app_updates_wrong
                    or self.registrations_missing or self.registrations_never_acked)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "datapoints_acked": self.datapoints_acked,
                "datapoints_missing": len(self.datapoints_missing), "datapoints_wrong": len(self.datapoints_wrong),
                "app_updates_checked": self.app_updates_checked, "app_updates_wrong": len(self.app_updates_wrong),
                "registrations_acked": self.registrations_acked,
                "registrations_missing": len(self.registrations_missing),
                "registrations_never_acked": len(self.registrations_never_acked),
                "examples": (self.datapoints_missing + self.datapoints_wrong + self.app_updates_wrong)[:5]}


def verify(journal: Path, target_pg: PgEndpoint, target_cassandra: CassandraEndpoint) -> Verification:
    out = Verification()
    points: list[dict[str, Any]] = []
    last_unit: dict[int, tuple[float, str]] = {}
    reg_acked: set[str] = set()
    reg_seen: set[str] = set()
    for rec in Journal.read(journal):
        if rec.kind == "datapoint" and rec.acked:
            points.append(rec.payload)
        elif rec.kind == "app" and rec.acked:
            prop = int(rec.payload["property_id"])
            if prop not in last_unit or rec.started >= last_unit[prop][0]:
                last_unit[prop] = (rec.started, rec.payload["unit"])
        elif rec.kind == "registration":
            reg_seen.add(rec.payload["user_id"])
            if rec.acked:
                reg_acked.add(rec.payload["user_id"])
    out.datapoints_acked = len(points)
    by_partition: dict[tuple[int, int, str], list[dict[str, Any]]] = defaultdict(list)
    for p in points:
        by_partition[(p["device_id"], p["property_id"], p["day"])].append(p)
    with target_cassandra.session() as session:
        stmt = session.prepare("SELECT ts, value, WRITETIME(value) FROM telemetry.datapoints "
                               "WHERE device_id = ? AND property_id = ? AND day = ?")
        for (dev, prop, day), expected in by_partition.items():
            rows = {int(r[0].timestamp() * 1000): (r[1], r[2]) for r in session.execute(stmt, (dev, prop, date.fromisoformat(day)))}
            for p in expected:
                got = rows.get(int(p["ts_ms"]))
                if got is None:
                    out.datapoints_missing.append(p)
                elif got[0] != p["value"] or got[1] < int(p["writetime"]):
                    out.datapoints_wrong.append({**p, "target_value": got[0], "target_writetime": got[1]})
    with target_pg.connect(autocommit=True) as conn:
        for prop, (_, unit) in last_unit.items():
            row = conn.execute("SELECT unit FROM platform.properties WHERE property_id = %s", (prop,)).fetchone()
            out.app_updates_checked += 1
            if row is None or row[0] != unit:
                out.app_updates_wrong.append({"property_id": prop, "expected": unit, "target": row[0] if row else None})
        out.registrations_acked = len(reg_acked)
        for uid in sorted(reg_acked):
            if conn.execute("SELECT 1 FROM platform.users WHERE user_id = %s", (uid,)).fetchone() is None:
                out.registrations_missing.append(uid)
    out.registrations_never_acked = sorted(reg_seen - reg_acked)
    return out
