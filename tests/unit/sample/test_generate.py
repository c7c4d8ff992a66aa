"""Pure logic of the sample-data generator: no database, no Cassandra."""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections import Counter
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pytest

from tenant_migration.sample import data, render, telemetry
from tenant_migration.sample.data import (
    BIG_TENANT_ID,
    CASSANDRA_TABLES,
    COLUMNS,
    EMPTY_TENANT_ID,
    MAX_BATCH_ROWS,
    PG_TABLES,
    PRESETS,
    SHARED_TABLES,
    TENANT_TABLES,
    TEST_POOL_SLUG,
    TEST_POOL_TENANT_ID,
)
from tenant_migration.sample.expected import table_totals
from tenant_migration.sample.generate import (
    ROLES_SQL,
    SCHEMA_CQL,
    _cql_statements,
    expected_counts,
    format_summary,
    plan_tenants,
    serialize_column,
    tenant_sizes,
)

TINY = PRESETS["tiny"]
TODAY = date(2026, 11, 26)
NOW_S = int(datetime(2026, 11, 26, 12, 0, tzinfo=UTC).timestamp())


def fresh(seed: int = 7) -> data.Dataset:
    """Build without the cache, so determinism is tested on two real builds."""
    return data.build_dataset.__wrapped__(TINY, seed)  # type: ignore[attr-defined]


def rendered(ds: data.Dataset) -> dict[str, list[list[str]]]:
    return {name: [line.split("\t") for block in render.copy_blocks(ds, name) for line in block.splitlines()]
            for name in PG_TABLES}


@pytest.fixture(scope="module")
def tiny() -> data.Dataset:
    return data.build_dataset(TINY, 7)


@pytest.fixture(scope="module")
def tiny_rows(tiny: data.Dataset) -> dict[str, list[list[str]]]:
    return rendered(tiny)


@pytest.fixture(scope="module")
def tiny_chunks(tiny: data.Dataset) -> list[telemetry.CassandraChunk]:
    return [telemetry.cassandra_chunk(tiny, c, TODAY, NOW_S) for c in range(telemetry.cassandra_chunk_count(tiny))]


# ---------------------------------------------------------------------------------- tenants


def test_presets_are_frozen_and_sized_in_order() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        TINY.devices = 1  # type: ignore[misc]
    assert PRESETS["tiny"].devices < PRESETS["demo"].devices < PRESETS["bench"].devices
    assert PRESETS["bench"].devices == 4 * PRESETS["demo"].devices


def test_at_least_twenty_tenants_with_the_special_ones() -> None:
    plans = plan_tenants(TINY, 7)
    assert len(plans) >= 20
    assert [p.tenant_id for p in plans] == list(range(1, len(plans) + 1))
    assert len({p.slug for p in plans}) == len(plans)
    by_id = {p.tenant_id: p for p in plans}
    assert by_id[TEST_POOL_TENANT_ID].slug == TEST_POOL_SLUG
    assert by_id[EMPTY_TENANT_ID].empty
    assert [p.tenant_id for p in plans if p.empty] == [EMPTY_TENANT_ID]


@pytest.mark.parametrize("preset", ["tiny", "demo"])
@pytest.mark.parametrize("seed", [7, 11])
def test_big_tenant_holds_about_forty_percent(preset: str, seed: int) -> None:
    sizes = tenant_sizes(PRESETS[preset], seed)
    share = sizes[BIG_TENANT_ID] / sum(sizes.values())
    assert 0.35 <= share <= 0.45, share
    assert max(sizes, key=sizes.__getitem__) == BIG_TENANT_ID


def test_sizes_are_skewed_with_a_long_tail() -> None:
    sizes = sorted((n for t, n in tenant_sizes(PRESETS["demo"], 7).items() if t != EMPTY_TENANT_ID), reverse=True)
    total = sum(sizes)
    assert sizes[1] > 5 * sizes[-1], "second tenant should dwarf the smallest"
    assert sum(sizes[-10:]) < 0.15 * total, "the ten smallest tenants together are a small tail"
    test_pool = tenant_sizes(PRESETS["demo"], 7)[TEST_POOL_TENANT_ID]
    assert test_pool <= sorted(sizes)[2], "test-pool is among the smallest tenants"


def test_empty_tenant_has_only_its_tenant_and_settings_rows(tiny: data.Dataset, tiny_chunks: list) -> None:
    counts = expected_counts(TINY, 7)[EMPTY_TENANT_ID]
    assert counts.pop("tenants") == 1
    assert counts.pop("tenant_settings") == 1
    assert set(counts) == set(TENANT_TABLES + CASSANDRA_TABLES) - {"tenants", "tenant_settings"}
    assert all(n == 0 for n in counts.values()), counts
    for name in TENANT_TABLES:
        if name not in ("tenants", "tenant_settings"):
            assert EMPTY_TENANT_ID not in set(tiny.tables[name].tenant.tolist()), name
    empty_devices = set()
    assert not (set(tiny.telemetry.device_tenant.tolist()) & {EMPTY_TENANT_ID})
    for chunk in tiny_chunks:
        empty_devices |= set(chunk.datapoints.columns["device_id"].tolist())
    tenant_of = dict(zip(tiny.tables["devices"].cols["device_id"].tolist(),
                         tiny.tables["devices"].tenant.tolist(), strict=True))
    assert EMPTY_TENANT_ID not in {tenant_of[d] for d in empty_devices}


def test_every_other_tenant_has_rows_in_every_table() -> None:
    for tenant, counts in expected_counts(TINY, 7).items():
        if tenant in (0, EMPTY_TENANT_ID):
            continue
        missing = [name for name, n in counts.items() if n == 0]
        assert not missing, (tenant, missing)


def test_shared_tables_belong_to_no_tenant(tiny: data.Dataset) -> None:
    shared = expected_counts(TINY, 7)[0]
    assert set(shared) == set(SHARED_TABLES)
    assert shared == {"device_models": TINY.device_models, "firmware_releases": TINY.firmware_releases}


# ---------------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_rows() -> None:
    a, b = fresh(7), fresh(7)
    assert a is not b
    assert rendered(a) == rendered(b)
    for c in range(telemetry.cassandra_chunk_count(a)):
        ca, cb = telemetry.cassandra_chunk(a, c, TODAY, NOW_S), telemetry.cassandra_chunk(b, c, TODAY, NOW_S)
        for name in CASSANDRA_TABLES:
            assert ca.tables()[name].tuples() == cb.tables()[name].tuples(), (c, name)


def test_other_seed_gives_other_rows() -> None:
    a, b = rendered(fresh(7)), rendered(fresh(8))
    assert a["devices"] != b["devices"]
    assert a["users"] != b["users"]
    assert a["device_models"] != b["device_models"]


def test_values_do_not_depend_on_the_day_only_timestamps_do(tiny: data.Dataset) -> None:
    a = telemetry.cassandra_chunk(tiny, 0, TODAY, NOW_S).datapoints
    b = telemetry.cassandra_chunk(tiny, 0, TODAY + timedelta(days=1), NOW_S + 86_400).datapoints
    assert np.array_equal(a.columns["value"], b.columns["value"])
    assert np.array_equal(a.columns["ts"] + 86_400_000, b.columns["ts"])


# ---------------------------------------------------------------------------------- keys


def runs(tenants: list[int]) -> int:
    return 1 + sum(1 for x, y in itertools.pairwise(tenants) if x != y)


@pytest.mark.parametrize(
    ("table", "key", "numeric"),
    [("devices", 0, True), ("properties", 0, True), ("rules", 0, True), ("dashboards", 0, True),
     ("users", 0, False), ("api_keys", 0, False), ("device_registrations", 0, False)],
)
def test_keys_are_interleaved_across_tenants(
    tiny: data.Dataset, tiny_rows: dict[str, list[list[str]]], table: str, key: int, numeric: bool
) -> None:
    rows = tiny_rows[table]
    keys = [int(r[key]) if numeric else r[key] for r in rows]
    tenants = tiny.tables[table].tenant.tolist()
    ordered = [t for _, t in sorted(zip(keys, tenants, strict=True))]
    first_tenth = ordered[: max(1, len(ordered) // 10)]
    assert len(set(first_tenth)) >= min(8, len(first_tenth) // 2), f"{table}: lowest keys only of {set(first_tenth)}"
    big = Counter(tenants)[BIG_TENANT_ID]
    big_runs = sum(1 for i, t in enumerate(ordered) if t == BIG_TENANT_ID and (i == 0 or ordered[i - 1] != t))
    assert big_runs > big / 5, f"{table}: big tenant's {big} keys form only {big_runs} runs"
    assert runs(ordered) > len(ordered) / 3


def test_some_bigint_keys_are_zero_or_negative(tiny: data.Dataset) -> None:
    devices = tiny.tables["devices"].cols["device_id"]
    assert (devices <= 0).sum() >= 3
    assert 0 in devices.tolist()
    assert (tiny.tables["properties"].cols["property_id"] <= 0).any()
    assert (tiny.tables["rules"].cols["rule_id"] <= 0).any()
    assert devices.min() <= -(2**40) and devices.max() >= 2**40, "outliers stretch [min, max]"
    users = set(tiny.user_uuids)
    assert "00000000-0000-0000-0000-000000000000" in users
    assert "ffffffff-ffff-ffff-ffff-ffffffffffff" in users


def test_keys_are_unique(tiny_rows: dict[str, list[list[str]]]) -> None:
    key_width = {"device_shares": 2, "rule_actions": 2}
    unique_cols = {"users": [2], "devices": [2], "tenants": [1]}
    for name, rows in tiny_rows.items():
        width = key_width.get(name, 1)
        keys = [tuple(r[:width]) for r in rows]
        assert len(set(keys)) == len(keys), name
        for col in unique_cols.get(name, []):
            assert len({r[col] for r in rows}) == len(rows), (name, COLUMNS[name][col])


def test_uuids_are_well_formed(tiny_rows: dict[str, list[list[str]]]) -> None:
    pattern = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
    for name in ("users", "api_keys", "device_registrations"):
        assert all(pattern.match(r[0]) for r in tiny_rows[name]), name


# ---------------------------------------------------------------------------------- consistency


def test_rendered_rows_match_expected_counts(tiny: data.Dataset, tiny_rows: dict[str, list[list[str]]]) -> None:
    totals = table_totals(expected_counts(TINY, 7))
    for name, rows in tiny_rows.items():
        assert len(rows) == totals[name], name
        assert all(len(r) == len(COLUMNS[name]) for r in rows), name
    by_tenant = Counter(int(r[1]) for r in tiny_rows["devices"])
    expected = expected_counts(TINY, 7)
    assert all(by_tenant[t] == expected[t]["devices"] for t in range(1, 25))


def test_references_stay_inside_the_tenant(tiny_rows: dict[str, list[list[str]]]) -> None:
    user_tenant = {r[0]: r[1] for r in tiny_rows["users"]}
    device_tenant = {r[0]: r[1] for r in tiny_rows["devices"]}
    prop_device = {r[0]: r[1] for r in tiny_rows["properties"]}
    rule_ids = {r[0] for r in tiny_rows["rules"]}
    for r in tiny_rows["device_registrations"]:
        assert user_tenant[r[2]] == device_tenant[r[1]]
    for r in tiny_rows["device_shares"]:
        assert user_tenant[r[0]] == device_tenant[r[1]]
    assert all(r[1] in prop_device for r in tiny_rows["rules"])
    assert all(r[0] in rule_ids for r in tiny_rows["rule_actions"])
    for r in tiny_rows["dashboards"]:
        for pid in re.findall(r'"property_id": (-?\d+)', r[3]):
            assert device_tenant[prop_device[pid]] == user_tenant[r[1]]


def test_relational_timestamps_do_not_depend_on_today(tiny_rows: dict[str, list[list[str]]]) -> None:
    stamps = [r[-1] for name in PG_TABLES for r in tiny_rows[name]]
    assert max(stamps) <= data.BASE_TIME.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_copy_text_needs_no_escaping(tiny_rows: dict[str, list[list[str]]]) -> None:
    for name, rows in tiny_rows.items():
        for r in rows:
            assert all("\\" not in v or v == "\\N" for v in r), name


def test_rule_actions_are_numbered_one_to_three(tiny_rows: dict[str, list[list[str]]]) -> None:
    per_rule = Counter(r[0] for r in tiny_rows["rule_actions"])
    assert set(per_rule.values()) <= {1, 2, 3}
    assert set(per_rule) == {r[0] for r in tiny_rows["rules"]}
    rules, props = len(tiny_rows["rules"]), len(tiny_rows["properties"])
    assert 0.4 < rules / props < 0.6


# ---------------------------------------------------------------------------------- Cassandra


def test_day_buckets_are_the_days_before_today() -> None:
    assert telemetry.day_buckets(PRESETS["demo"], TODAY) == (date(2026, 11, 23), date(2026, 11, 24), date(2026, 11, 25))


def test_cassandra_counts_match_expectation(tiny_chunks: list[telemetry.CassandraChunk]) -> None:
    totals = table_totals(expected_counts(TINY, 7))
    for name in CASSANDRA_TABLES:
        assert sum(len(c.tables()[name]) for c in tiny_chunks) == totals[name], name
    assert all(c.skipped_expired == 0 for c in tiny_chunks)
    assert 50_000 <= totals["datapoints"] <= 100_000
    assert 20_000 <= sum(totals[n] for n in PG_TABLES) <= 30_000


def test_timestamps_ttls_and_writetimes(tiny: data.Dataset, tiny_chunks: list[telemetry.CassandraChunk]) -> None:
    midnight_ms = int(datetime(2026, 11, 26, tzinfo=UTC).timestamp()) * 1000
    retention = {p.tenant_id: p.retention_days for p in tiny.tenants}
    device_tenant = dict(zip(tiny.tables["devices"].cols["device_id"].tolist(),
                             tiny.tables["devices"].tenant.tolist(), strict=True))
    for chunk in tiny_chunks:
        dp = chunk.datapoints.columns
        assert (dp["ts"] < midnight_ms).all(), "no datapoint in the future"
        assert np.array_equal(dp["writetime"], dp["ts"] * 1000)
        days = np.array([retention[device_tenant[d]] for d in dp["device_id"].tolist()])
        assert np.array_equal(NOW_S + dp["ttl"], dp["ts"] // 1000 + days * 86_400), "expires at ts + retention"
        day_of_ts = dp["ts"] // 86_400_000 + 2**31
        assert np.array_equal(day_of_ts, dp["day"]), "each row sits in its own day bucket"
        ce = chunk.connection_events.columns
        assert np.array_equal(NOW_S + ce["ttl"], ce["ts"] // 1000 + 30 * 86_400)
        lv = chunk.latest_values.columns
        assert np.array_equal(lv["writetime"], lv["ts"] * 1000)


def test_latest_value_is_the_newest_datapoint(tiny_chunks: list[telemetry.CassandraChunk]) -> None:
    chunk = tiny_chunks[0]
    dp = chunk.datapoints.columns
    for d, p, ts, value, _writetime in chunk.latest_values.tuples()[:50]:
        mask = (dp["device_id"] == d) & (dp["property_id"] == p)
        newest = dp["ts"][mask].argmax()
        assert dp["ts"][mask][newest] == ts
        assert dp["value"][mask][newest] == value


def test_partitions_are_contiguous_and_small(tiny_chunks: list[telemetry.CassandraChunk]) -> None:
    for chunk in tiny_chunks:
        for name, key in (("datapoints", ("device_id", "property_id", "day")),
                          ("latest_values", ("device_id",)), ("connection_events", ("device_id", "day"))):
            rows = chunk.tables()[name]
            seen = set()
            for start, end in rows.partitions():
                keys = {tuple(rows.columns[k][i] for k in key) for i in range(start, end)}
                assert len(keys) == 1, name
                assert not (keys & seen), f"{name}: partition split inside a chunk"
                seen |= keys
            if name == "datapoints":
                sizes = [e - s for s, e in rows.partitions()]
                assert min(sizes) >= 10 and max(sizes) <= MAX_BATCH_ROWS


def test_expired_rows_are_skipped(tiny: data.Dataset) -> None:
    later = NOW_S + 15 * 86_400
    chunk = telemetry.cassandra_chunk(tiny, 0, TODAY, later)
    assert chunk.skipped_expired > 0
    assert (chunk.datapoints.columns["ttl"] > 0).all()
    assert (chunk.connection_events.columns["ttl"] > 0).all()


def test_valid_until_is_the_first_expiry() -> None:
    until = telemetry.valid_until(TINY, 7, TODAY)
    assert until == datetime(2026, 11, 24, tzinfo=UTC) + timedelta(days=14)


def test_wire_encoding_matches_the_driver() -> None:
    cqltypes = pytest.importorskip("cassandra.cqltypes")
    cases = {
        "device_id": (np.array([-(2**40), -1, 0, 2**40]), cqltypes.LongType),
        "day": (np.array([telemetry.cql_date(TODAY)]), cqltypes.SimpleDateType),
        "ts": (np.array([1_795_476_617_092]), cqltypes.DateType),
        "value": (np.array([23.514, -70.0]), cqltypes.DoubleType),
        "quality": (np.array([0, 2], dtype=np.int8), cqltypes.ByteType),
        "ttl": (np.array([7_556_639]), cqltypes.Int32Type),
        "remote_ip": (np.array(["10.1.2.3"], dtype=object), cqltypes.UTF8Type),
    }
    for name, (values, ctype) in cases.items():
        assert serialize_column(name, values) == [ctype.serialize(v, 5) for v in values.tolist()], name


# ---------------------------------------------------------------------------------- sizes and files


def test_demo_and_bench_sizes() -> None:
    demo = table_totals(expected_counts(PRESETS["demo"], 7))
    pg = sum(demo[n] for n in PG_TABLES)
    cass = sum(demo[n] for n in CASSANDRA_TABLES)
    assert 0.9e6 <= pg <= 1.1e6, pg
    assert 4.5e6 <= cass <= 5.5e6, cass
    bench = PRESETS["bench"]
    per_device = (pg - TINY.device_models - TINY.firmware_releases) / PRESETS["demo"].devices
    assert 3.5e6 <= bench.devices * per_device <= 4.5e6


def test_summary_lists_every_tenant() -> None:
    text = format_summary(TINY, 7, expected_counts(TINY, 7))
    assert len(text.splitlines()) == 25
    assert TEST_POOL_SLUG in text


def test_schema_files_are_usable_without_psql() -> None:
    statements = _cql_statements(SCHEMA_CQL.read_text())
    assert len(statements) == 4
    assert all(";" not in s for s in statements)
    roles = ROLES_SQL.read_text()
    assert not re.search(r"^\s*\\", roles, re.MULTILINE), "psql meta-command in roles.sql"
    assert not re.search(r":'\w+'", roles), "psql variable in roles.sql"
    assert "PASSWORD" not in roles
