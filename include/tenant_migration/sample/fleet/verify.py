"""Proof from the journal: every acknowledged write is on the target in its final state.

- datapoints: the cell (device, property, day, ts) holds the journaled value with a WRITETIME at
  least the journaled one (Cassandra last-write-wins; the fleet never writes a cell twice);
- app updates (properties, rules): the target holds the value of the LAST acknowledged update of
  each row, by the time the app sent it;
- registrations (users, devices): every one acknowledged is on the target, and every key the fleet
  tried was acknowledged at last (a rejection is retried until accepted).

``stale_overwrites`` names rows whose final value on the target is an OLDER write that went to the
old platform after a newer one was acknowledged by the new one: the signature of a straggler
replayed over a newer value by the change stream (see the report's note on last-writer-wins).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from psycopg import sql

from tenant_migration.endpoints import CassandraEndpoint, PgEndpoint
from tenant_migration.sample.fleet.journal import Journal, WriteRecord


@dataclass
class Verification:
    datapoints_acked: int = 0
    datapoints_missing: list[dict[str, Any]] = field(default_factory=list)
    datapoints_wrong: list[dict[str, Any]] = field(default_factory=list)
    app_updates_checked: int = 0
    app_updates_wrong: list[dict[str, Any]] = field(default_factory=list)
    stale_overwrites: list[dict[str, Any]] = field(default_factory=list)
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
                "stale_overwrites": len(self.stale_overwrites),
                "registrations_acked": self.registrations_acked,
                "registrations_missing": len(self.registrations_missing),
                "registrations_never_acked": len(self.registrations_never_acked),
                "examples": (self.datapoints_missing + self.datapoints_wrong + self.app_updates_wrong)[:5]}


def _app_key(rec: WriteRecord) -> tuple[str, str, Any, str]:
    p = rec.payload
    if "table" in p:
        return (p["table"], p["key_column"], p["key"], p["column"])
    return ("properties", "property_id", p["property_id"], "unit")  # journals written before rules existed


def _app_value(rec: WriteRecord) -> Any:
    return rec.payload["value"] if "value" in rec.payload else rec.payload["unit"]


def verify(journal: Path, target_pg: PgEndpoint, target_cassandra: CassandraEndpoint) -> Verification:
    out = Verification()
    points: list[dict[str, Any]] = []
    app: dict[tuple[str, str, Any, str], list[WriteRecord]] = defaultdict(list)
    reg_acked: dict[str, dict[str, Any]] = {}
    reg_seen: set[str] = set()
    for rec in Journal.read(journal):
        if rec.kind == "datapoint" and rec.acked:
            points.append(rec.payload)
        elif rec.kind == "app" and rec.acked:
            app[_app_key(rec)].append(rec)
        elif rec.kind in ("registration", "device_registration"):
            key = f"{rec.kind}:{rec.payload['key']}"
            reg_seen.add(key)
            if rec.acked:
                reg_acked[key] = {"kind": rec.kind, **rec.payload}
    out.datapoints_acked = len(points)
    by_partition: dict[tuple[int, int, str], list[dict[str, Any]]] = defaultdict(list)
    for p in points:
        by_partition[(p["device_id"], p["property_id"], p["day"])].append(p)
    with target_cassandra.session() as session:
        stmt = session.prepare("SELECT ts, value, WRITETIME(value) FROM telemetry.datapoints "
                               "WHERE device_id = ? AND property_id = ? AND day = ?")
        for (dev, prop, day), expected in by_partition.items():
            rows = {int(r[0].timestamp() * 1000): (r[1], r[2])
                    for r in session.execute(stmt, (dev, prop, date.fromisoformat(day)))}
            for p in expected:
                got = rows.get(int(p["ts_ms"]))
                if got is None:
                    out.datapoints_missing.append(p)
                elif got[0] != p["value"] or got[1] < int(p["writetime"]):
                    out.datapoints_wrong.append({**p, "target_value": got[0], "target_writetime": got[1]})
    with target_pg.connect(autocommit=True) as conn:
        for (table, key_col, key, col), recs in app.items():
            recs.sort(key=lambda r: r.started)
            last = recs[-1]
            row = conn.execute(sql.SQL("SELECT {} FROM platform.{} WHERE {} = %s").format(
                sql.Identifier(col), sql.Identifier(table), sql.Identifier(key_col)), (key,)).fetchone()
            out.app_updates_checked += 1
            got = row[0] if row else None
            if got != _app_value(last):
                wrong = {"table": table, "key": key, "expected": _app_value(last), "target": got,
                         "expected_endpoint": last.endpoint}
                out.app_updates_wrong.append(wrong)
                older = [r for r in recs[:-1] if _app_value(r) == got and r.endpoint != last.endpoint]
                if older:
                    out.stale_overwrites.append({**wrong, "stale_endpoint": older[-1].endpoint,
                                                 "stale_started": older[-1].started, "newer_started": last.started})
        out.registrations_acked = len(reg_acked)
        for key, p in sorted(reg_acked.items()):
            if p["kind"] == "registration":
                found = conn.execute("SELECT 1 FROM platform.users WHERE user_id = %s", (p["user_id"],)).fetchone()
            else:
                found = conn.execute("SELECT 1 FROM platform.device_registrations r JOIN platform.devices d "
                                     "USING (device_id) WHERE r.registration_id = %s AND d.device_id = %s",
                                     (p["registration_id"], p["device_id"])).fetchone()
            if found is None:
                out.registrations_missing.append(key)
    out.registrations_never_acked = sorted(reg_seen - set(reg_acked))
    return out
