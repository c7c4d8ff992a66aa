"""Progress lines of the long steps on the real servers: the copy batches of both stores, the
warm-up and both catch-ups say what the ledger holds as they go, ending at everything planned. The
ticker's interval is shortened here (the steps of the tiny dataset take seconds, not hours); the
lines are the ones a task log shows every 10 s on Migration Day."""

from __future__ import annotations

import logging
import re
import uuid

import pytest

from tenant_migration import ledger, progress, replica, steps
from tenant_migration.flows import ready
from tenant_migration.spec import MigrationSpec

pytestmark = pytest.mark.integration

TENANT = 8  # mid-sized: several chunks per table at chunk_rows=100
LINE = re.compile(r"^progress (?P<what>\w+): (?P<done>[\d,.]+)/(?P<planned>[\d,.]+) (?P<unit>[a-zA-Z ]+) \(")


def _lines(caplog, what: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "tenant_migration.progress" and r.getMessage().startswith(f"progress {what}:")]


def _numbers(line: str) -> tuple[float, float]:
    m = LINE.match(line)
    assert m, line
    return float(m["done"].replace(",", "")), float(m["planned"].replace(",", ""))


def test_the_long_steps_say_how_far_they_are_from_the_ledger(topo, tiny_dataset, endpoints, reports,
                                                            monkeypatch, caplog, target_admin) -> None:
    from tenant_migration.sample import platform

    platform.demo_reset(topo)
    monkeypatch.setattr(progress, "EVERY_S", 0.05)
    caplog.set_level(logging.INFO, logger="tenant_migration.progress")
    spec = MigrationSpec(tenant_id=TENANT, chunk_rows=100)
    run_id = f"progress/{uuid.uuid4().hex[:8]}"
    per_batch: dict[str, list[list[str]]] = {}
    steps.preflight(endpoints, spec, run_id)
    slot = steps.create_cdc_slot(endpoints, spec, run_id)
    try:
        steps.detach_replica(endpoints, spec, run_id, slot["consistent_lsn"])
        try:
            steps.copy_shared_tables(endpoints, spec, run_id)
            for engine, fn in (("postgres", ready.copy_postgres_batch), ("cassandra", ready.copy_cassandra_batch)):
                for batch in ready.batches(endpoints, spec, run_id, engine):
                    caplog.clear()
                    fn(endpoints, spec, run_id, batch)
                    per_batch.setdefault(engine, []).append(_lines(caplog, f"copy_{engine}_batch"))
        finally:
            with endpoints.replica_control.connect(autocommit=True) as rc:
                replica.reattach(rc)
        steps.catch_up_postgres(endpoints, spec, run_id)
        steps.catch_up_cassandra(endpoints, spec, run_id)
        steps.warm_up(endpoints, spec, run_id)
    finally:
        steps.drop_cdc_slot(endpoints, spec, run_id, keep_for_resume=False)

    chunks = {e: ledger.run_chunks(target_admin, run_id, e) for e in ("postgres", "cassandra")}
    for engine in ("postgres", "cassandra"):
        assert per_batch.get(engine), engine
        for lines in per_batch[engine]:
            assert len(lines) >= 2, (engine, lines)
            done = [_numbers(x) for x in lines]
            assert [d for d, _ in done] == sorted(d for d, _ in done), lines  # never backwards
            assert all(d <= p for d, p in done) and done[-1][0] == done[-1][1] > 0, done[-3:]
            unit = "estimated rows" if engine == "postgres" else "partitions"
            assert f" {unit} (100 %)" in lines[-1] and "/s" in lines[-1] and "ETA 0 s" in lines[-1], lines[-1]
            assert all("ETA " in x and " | batch: " in x for x in lines), lines
        # The last batch's last line: the whole store is done.
        n = len(chunks[engine])
        assert f"run: {n:,}/{n:,} {engine} chunks done" in per_batch[engine][-1][-1]
    warm = _lines(caplog, "warm_up")
    assert warm and "hot partitions read (100 %)" in warm[-1], warm
    recopy = _lines(caplog, "catch_up_cassandra")
    assert recopy and "pass 1 of at most 5 over buckets" in recopy[-1], recopy
