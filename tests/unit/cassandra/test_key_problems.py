"""The preflight's Cassandra key checks (``flows.ready.key_problems``) on a table's columns as
``system_schema`` gives them: each refusal names the table and the column."""

from __future__ import annotations

from tenant_migration.flows.ready import key_problems
from tenant_migration.tenant_map import parse_tenant_map


def _tmap(**table):
    return parse_tenant_map({
        "postgres": {"schema": "app", "tenant_root": {"table": "orgs", "key": "org_id"},
                     "tables": {"orgs": {"key": ["org_id"], "tenant_column": "org_id"},
                                "meters": {"key": ["meter_id"], "tenant_column": "org_id"}}},
        "cassandra": {"keyspace": "ks", "tables": {"t": {"partitions_from": {"table": "meters", "columns": ["meter_id"]},
                                                         **table}}}})


def _cols(*key: tuple[str, str], rest=(("v", "regular", -1, "text"),)):
    return [(name, "partition_key", i, typ) for i, (name, typ) in enumerate(key)] + list(rest)


def test_a_sound_key_has_no_problem() -> None:
    tmap = _tmap(partition_key=["meter_id", "day"], day_column="day")
    assert key_problems(tmap, "t", _cols(("meter_id", "uuid"), ("day", "date"))) == []


def test_a_partition_key_column_nothing_supplies_is_named() -> None:
    tmap = _tmap(partition_key=["meter_id", "bucket"])
    assert key_problems(tmap, "t", _cols(("meter_id", "uuid"), ("bucket", "int"))) == [
        "cassandra ks.t: partition-key column bucket is supplied neither by the relational rows (partitions_from "
        "app.meters: meter_id) nor the day bucket (no day_column)"]
    omitted = _tmap(partition_key=["meter_id"])  # the map leaves the table's column out
    assert key_problems(omitted, "t", _cols(("meter_id", "uuid"), ("bucket", "int"))) == [
        "cassandra ks.t: partition-key column bucket is supplied neither by the relational rows (partitions_from "
        "app.meters: meter_id) nor the day bucket (no day_column)",
        "cassandra ks.t: the tenant map's partition_key ['meter_id'] is not the table's ['meter_id', 'bucket']"]


def test_a_day_column_must_be_a_date_of_the_partition_key() -> None:
    text_day = _tmap(partition_key=["meter_id", "day"], day_column="day")
    assert key_problems(text_day, "t", _cols(("meter_id", "uuid"), ("day", "text"))) == [
        "cassandra ks.t: day_column day has type text; the day bucket is a CQL date"]
    elsewhere = _tmap(partition_key=["meter_id"], day_column="day")
    assert key_problems(elsewhere, "t", _cols(("meter_id", "uuid"))) == [
        "cassandra ks.t: day_column day is not a partition-key column (['meter_id'])"]


def test_a_counter_and_a_key_type_no_plan_holds_are_refused() -> None:
    tmap = _tmap(partition_key=["meter_id"])
    problems = key_problems(tmap, "t", _cols(("meter_id", "frozen<list<int>>"), rest=[("n", "regular", -1, "counter")]))
    assert problems[0].startswith("cassandra ks.t: partition-key column meter_id has type frozen<list<int>>")
    assert problems[1].startswith("cassandra ks.t: column n is a counter")
