"""Issue 28, item 3: sequences and identities on the target, set past the source before the flip.

A platform made for the test draws keys three ways: a ``bigserial``, a ``GENERATED ALWAYS`` identity
(a table one hop from the tenant) and a free-standing sequence called by a column default. The run
goes as the DAG runs it (slot, detach, copy, final catch-up, ``gate_pre_flip``, flip). Before the
fix the target's sequences stayed at 1 and the tenant's first insert there after the flip failed
with ``UniqueViolation``; the pre-flip gate now fails, naming the sequence, when one is behind."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from helpers import admin, copy_on_the_snapshot, drop_test_platform, make_test_platform, sample_slug

from tenant_migration import ledger, steps
from tenant_migration.postgres import sequences
from tenant_migration.sample import platform as sample_platform
from tenant_migration.spec import MigrationSpec
from tenant_migration.tenant_map import parse_tenant_map
from tenant_migration.validation.counts import GateFailed

pytestmark = pytest.mark.integration

TENANT, OTHER = 2, 3  # sample tenants: their slugs have DNS records, their registration switches exist
HEADROOM = 1000


def _rows(n: int, first: int) -> list[str]:
    out = []
    for i in range(first, first + n):
        tenant = OTHER if i % 3 == 2 else TENANT  # the first keys are the tenant's
        out += [f"INSERT INTO {{s}}.orders (tenant_id, note) VALUES ({tenant}, 'order {i}')",
                f"INSERT INTO {{s}}.events (order_id, v) SELECT max(order_id), 'event {i}' FROM {{s}}.orders",
                f"INSERT INTO {{s}}.notes (tenant_id, body) VALUES ({tenant}, 'note {i}')"]
    return out


@pytest.fixture
def platform(topo, endpoints, reports) -> Iterator[str]:
    name = f"sq_{uuid.uuid4().hex[:8]}"
    sample_platform.demo_reset(topo)  # no live run of another tenant, DNS at the shared platform
    make_test_platform(
        topo, endpoints, name,
        ["CREATE TABLE {s}.tenants (tenant_id bigint PRIMARY KEY, slug text NOT NULL)",
         "CREATE TABLE {s}.orders (order_id bigserial PRIMARY KEY, tenant_id bigint NOT NULL REFERENCES {s}.tenants, "
         "note text)",
         "CREATE TABLE {s}.events (event_id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
         "order_id bigint NOT NULL REFERENCES {s}.orders, v text)",
         "CREATE SEQUENCE {s}.note_ids START 500 INCREMENT 5",
         "CREATE TABLE {s}.notes (note_id bigint PRIMARY KEY DEFAULT nextval('{s}.note_ids'), "
         "tenant_id bigint NOT NULL REFERENCES {s}.tenants, body text)"],
        [], [f"INSERT INTO {{s}}.tenants VALUES ({TENANT}, '{sample_slug(topo, TENANT)}'), "
             f"({OTHER}, '{sample_slug(topo, OTHER)}')", *_rows(30, 0)])
    try:
        yield name
    finally:
        drop_test_platform(topo, endpoints, name)
        sample_platform.seed_aws(topo, reset=True)


def _tmap(name: str):
    return parse_tenant_map({"platform": "sequences", "postgres": {
        "schema": name, "tenant_root": {"table": "tenants", "key": "tenant_id"},
        "tables": {"tenants": {"key": ["tenant_id"], "tenant_column": "tenant_id"},
                   "orders": {"key": ["order_id"], "tenant_column": "tenant_id"},
                   "events": {"key": ["event_id"], "via": {"column": "order_id", "table": "orders"}},
                   "notes": {"key": ["note_id"], "tenant_column": "tenant_id"}}}})


def _insert_on_target(conn: psycopg.Connection, name: str) -> dict[str, int]:
    """The tenant's first writes on its own deployment: every key from its sequence."""
    order = conn.execute(f"INSERT INTO {name}.orders (tenant_id, note) VALUES ({TENANT}, 'new') "
                         "RETURNING order_id").fetchone()[0]
    event = conn.execute(f"INSERT INTO {name}.events (order_id, v) VALUES ({order}, 'new') RETURNING event_id").fetchone()[0]
    note = conn.execute(f"INSERT INTO {name}.notes (tenant_id, body) VALUES ({TENANT}, 'new') RETURNING note_id").fetchone()[0]
    return {"orders": order, "events": event, "notes": note}


def _source_next(topo, name: str) -> dict[str, int]:
    with admin(topo, "primary") as p:
        return {table: p.execute(f"SELECT last_value FROM {seq}").fetchone()[0] for table, seq in
                (("orders", f"{name}.orders_order_id_seq"), ("events", f"{name}.events_event_id_seq"),
                 ("notes", f"{name}.note_ids"))}


def test_sequences_are_set_past_the_source_before_the_flip(topo, endpoints, platform) -> None:
    name, tmap = platform, _tmap(platform)
    spec = MigrationSpec(tenant_id=TENANT, sequence_headroom=HEADROOM, max_ttl_wait_s=0)
    run_id = f"it-seq/{uuid.uuid4().hex[:8]}"
    pre = steps.preflight(endpoints, spec, run_id, tmap)
    try:
        slot = steps.create_cdc_slot(endpoints, spec, run_id)
        copy_on_the_snapshot(endpoints, spec, run_id, slot["consistent_lsn"], tmap=tmap)
        with admin(topo, "primary") as p:  # the platform goes on after the snapshot: the source moves on
            for stmt in _rows(12, 30):
                p.execute(stmt.format(s=name))
        # Without the fix: the target's sequences are where CREATE left them, and the first insert collides.
        with admin(topo, "target") as t, pytest.raises(psycopg.errors.UniqueViolation):
            _insert_on_target(t, name)

        out = steps.final_catch_up(endpoints, spec, run_id, tmap)
        assert out["sequences"] == {"sequences": 3, "advanced": 3}
        source = _source_next(topo, name)
        with admin(topo, "target") as t:
            for table, seq in (("orders", "orders_order_id_seq"), ("events", "events_event_id_seq"), ("notes", "note_ids")):
                last, called = t.execute(f"SELECT last_value, is_called FROM {name}.{seq}").fetchone()
                assert not called and last > source[table] + HEADROOM - 10, (table, last, source[table])
        assert steps.final_catch_up(endpoints, spec, run_id, tmap)["sequences"]["advanced"] == 0, "a clear moves nothing"

        # One sequence put back on the target by hand: the pre-flip gate fails and names it.
        with admin(topo, "target") as t:
            t.execute(f"SELECT setval('{name}.note_ids', 7)")
        with pytest.raises(GateFailed, match="pre_flip"):
            steps.gate_pre_flip(endpoints, spec, run_id, tmap)
        with endpoints.target.connect() as t:
            gate = t.execute("SELECT evidence FROM tm_control.gates WHERE run_id = %s AND gate = 'pre_flip' "
                             "ORDER BY attempt DESC LIMIT 1", (run_id,)).fetchone()[0]
        failed = [c for c in gate["checks"] if not c["success"]]
        assert [c["name"] for c in failed] == ["sequences_past_source"]
        sample = failed[0]["details"]["sample"]
        assert any(s["sequence"] == f"sequence:{name}.note_ids (notes.note_id)" and s["target_next"] == 12
                   and s["source_next"] > 12 for s in sample), sample
        assert f"sequence=sequence:{name}.note_ids (notes.note_id), target_next=12, source_next=" in failed[0]["observed"]

        steps.final_catch_up(endpoints, spec, run_id, tmap)  # the runbook's clear of final_catch_up
        assert steps.gate_pre_flip(endpoints, spec, run_id, tmap)["passed"]
        steps.flip_dns(endpoints, spec, run_id, pre["slug"])
        with admin(topo, "target") as t:
            keys = _insert_on_target(t, name)  # no collision
            for table, key in keys.items():
                assert key > source[table], (table, key)
            assert t.execute(f"SELECT count(*) FROM {name}.orders WHERE order_id = %s", (keys["orders"],)).fetchone() == (1,)
    finally:
        steps.resume_registrations(endpoints, spec, run_id, keep_for_resume=False)
        steps.drop_cdc_slot(endpoints, spec, run_id, keep_for_resume=False)
        with endpoints.target.connect() as t:
            ledger.finish_run(t, run_id, "aborted")


def test_a_headroom_past_the_sequences_maximum_is_refused_naming_it(topo, endpoints, platform) -> None:
    with admin(topo, "primary") as src, admin(topo, "target") as t:
        t.execute(f"ALTER SEQUENCE {platform}.events_event_id_seq MAXVALUE 5000")
        with pytest.raises(sequences.SequenceError, match=rf"{platform}\.events_event_id_seq \(events\.event_id\): "
                                                          r"the source is at \d+ .* would pass its maximum 5000"):
            sequences.advance(src, t, platform, ["tenants", "orders", "events", "notes"], headroom=10_000)


def test_the_spec_takes_the_headroom_from_the_form() -> None:
    from tenant_migration.spec import InvalidParams, parse_spec

    assert parse_spec({"tenant_id": 2, "sequence_headroom": 5}).sequence_headroom == 5
    with pytest.raises(InvalidParams, match="sequence_headroom"):
        parse_spec({"tenant_id": 2, "sequence_headroom": -1})
    assert dataclasses.fields(MigrationSpec)
