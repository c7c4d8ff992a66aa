"""The copy's view of non-frozen collections, without a server (issue 28, item 1)."""

from __future__ import annotations

from tenant_migration.cassandra.copy import collection_kind, newest, shape_of
from tenant_migration.cassandra.fingerprint import aggregate_statement
from tenant_migration.flows.ready import _non_frozen_udt

COLS = [("k", "partition_key", 0, "int"), ("ck", "clustering", 0, "int"), ("tags", "regular", -1, "set<text>"),
        ("readings", "regular", -1, "list<int>"), ("attrs", "regular", -1, "map<text, int>"),
        ("fz", "regular", -1, "frozen<list<int>>"), ("note", "regular", -1, "text")]


def test_only_non_frozen_collections_are_collections() -> None:
    assert [collection_kind(t) for t in ("set<int>", "list<frozen<tuple<int, int>>>", "map<text, int>")] == \
        ["set", "list", "map"]
    assert [collection_kind(t) for t in ("frozen<set<int>>", "text", "tuple<int, int>", "vector<float, 3>")] == \
        [None] * 4
    shape = shape_of("ks", "t", COLS)
    assert shape.collections == (("attrs", "map"), ("readings", "list"), ("tags", "set"))
    assert shape.kind("fz") is None and shape.kind("readings") == "list"


def test_a_collection_s_writetime_is_its_newest_element_s() -> None:
    assert newest([5, 9, 7]) == 9 and newest(4) == 4 and newest(None) is None


def test_the_fingerprint_hashes_collections_as_json() -> None:
    stmt = aggregate_statement(shape_of("ks", "t", COLS))
    assert 'toJson("tags"), toJson(WRITETIME("tags"))' in stmt
    assert 'toJson("readings"), toJson(MAXWRITETIME("readings"))' in stmt  # a list: at its newest writetime
    assert '"fz", WRITETIME("fz")' in stmt and 'max(MAXWRITETIME("attrs"))' in stmt


def test_non_frozen_udts_are_told_from_native_and_frozen_types() -> None:
    assert _non_frozen_udt("address")
    assert not any(_non_frozen_udt(t) for t in ("text", "timeuuid", "frozen<address>", "set<int>", "tuple<int, text>"))
