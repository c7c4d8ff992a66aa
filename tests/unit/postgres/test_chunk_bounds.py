"""Chunk ids and bounds: readable, stable, JSON-safe, rendered as row comparisons (no server)."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal

import pytest

from tenant_migration.postgres.planner import chunk_id, json_key_value, math_chunks, range_predicate


def test_chunk_ids_are_readable_and_sort_in_plan_order() -> None:
    ids = [chunk_id("rules", i) for i in (0, 3, 10, 9999)]
    assert ids[1] == "pg:rules:0003"
    assert ids == sorted(ids)
    assert chunk_id("rules", 12345, width=5) == "pg:rules:12345"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(-(2**40), -(2**40), id="negative bigint outlier stays a number"),
        pytest.param(0, 0, id="zero key"),
        pytest.param(uuid.UUID(int=0), "00000000-0000-0000-0000-000000000000", id="nil uuid as text"),
        pytest.param(Decimal("1.50"), "1.50", id="numeric keeps its scale as text"),
    ],
)
def test_key_values_survive_json(value: object, expected: object) -> None:
    out = json_key_value(value)
    assert out == expected
    assert json.loads(json.dumps(out)) == expected


@pytest.mark.parametrize(
    ("bounds", "fragments"),
    [
        pytest.param({"key": ["rule_id", "action_no"], "lower": [5, 2], "upper": [9, 1]},
                     ['("t"."rule_id", "t"."action_no") > (5, 2)', '("t"."rule_id", "t"."action_no") <= (9, 1)'],
                     id="composite key compares as a row"),
        pytest.param({"key": ["device_id"], "lower": None, "upper": [-7]},
                     ['"t"."device_id" <= -7'], id="first chunk has no lower bound"),
        pytest.param({"key": ["user_id"], "lower": ["00000000-0000-0000-0000-000000000000"], "upper": None},
                     ['"t"."user_id" > \'00000000-0000-0000-0000-000000000000\''], id="uuid bound as untyped literal"),
    ],
)
def test_range_predicate_renders_half_open_ranges(bounds: dict, fragments: list[str]) -> None:
    text = " ".join(range_predicate(bounds).as_string(None).split())
    for fragment in fragments:
        assert fragment in text
    assert text.count(" AND ") == len(fragments) - 1


def test_unbounded_chunk_selects_everything() -> None:
    assert range_predicate({"key": ["tenant_id"], "lower": None, "upper": None}).as_string(None) == "TRUE"


@pytest.mark.parametrize(("total", "rows", "chunks"), [
    pytest.param(0, 100, 1, id="empty tenant still gets one chunk"),
    pytest.param(100, 100, 1, id="exactly one chunk"),
    pytest.param(101, 100, 2, id="one row over splits"),
])
def test_chunk_count(total: int, rows: int, chunks: int) -> None:
    assert math_chunks(total, rows) == chunks
