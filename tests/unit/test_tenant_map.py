from __future__ import annotations

import copy

import pytest
import yaml

from tenant_migration.sample import SAMPLE_MAP
from tenant_migration.tenant_map import TenantMapError, load_tenant_map, parse_tenant_map


@pytest.fixture
def doc() -> dict:
    return yaml.safe_load(SAMPLE_MAP.read_text())


def test_sample_map_load_order_puts_parents_first() -> None:
    tmap = load_tenant_map(SAMPLE_MAP)
    order = tmap.load_order()
    assert order[0] == "tenants"
    for name, spec in tmap.tables.items():
        if spec.via is not None:
            assert order.index(spec.via.table) < order.index(name), name
    assert set(order) == set(tmap.tables)


def test_three_hop_table_filters_through_every_hop() -> None:
    tmap = load_tenant_map(SAMPLE_MAP)
    assert [h.table for h in tmap.path("rule_actions")] == ["rules", "properties", "devices"]
    text = tmap.select_tenant_rows("rule_actions", ["rule_id"]).as_string(None)
    for table in ("rules", "properties", "devices"):
        assert f'"platform"."{table}"' in text
    assert text.count("%(tenant_id)s") == 1
    assert '"tenant_id" = %(tenant_id)s' in text


def test_identifiers_are_quoted_by_the_driver(doc: dict) -> None:
    doc["postgres"]["tables"]['we"ird'] = {"key": ["id"], "tenant_column": "tenant_id"}
    tmap = parse_tenant_map(doc)
    assert '"we""ird"' in tmap.select_tenant_rows('we"ird', ["id"]).as_string(None)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        pytest.param(lambda d: d["postgres"]["tables"]["rules"].update(tenant_column="tenant_id"),
                     "exactly one", id="both column and hop"),
        pytest.param(lambda d: d["postgres"]["tables"]["rules"]["via"].update(table="nowhere"),
                     "not tenant-scoped", id="hop to unknown table"),
        pytest.param(lambda d: d["postgres"]["tables"]["devices"].update(
            via={"column": "x", "table": "rule_actions", "parent_column": "rule_id"}, tenant_column=None)
            or d["postgres"]["tables"]["devices"].pop("tenant_column"), "cycle", id="cycle"),
        pytest.param(lambda d: d["postgres"]["tables"]["users"].pop("key"), "missing 'key'", id="no key"),
        pytest.param(lambda d: d["postgres"].pop("tenant_root"), "tenant_root", id="no root"),
    ],
)
def test_malformed_maps_are_refused(doc: dict, mutate, message: str) -> None:
    broken = copy.deepcopy(doc)
    mutate(broken)
    with pytest.raises(TenantMapError, match=message):
        parse_tenant_map(broken)


def test_tenant_of_names_the_owner_through_every_hop() -> None:
    tmap = load_tenant_map(SAMPLE_MAP)
    assert tmap.tenant_of("devices").as_string(None) == '"t"."tenant_id"'
    text = tmap.tenant_of("rule_actions").as_string(None)
    # rule_actions -> rules -> properties -> devices.tenant_id, each a correlated look-up.
    assert text.count("SELECT") == 3 and text.count("LIMIT 1") == 3
    assert '"t_3_2_1"."tenant_id" FROM "platform"."devices"' in text and '"t_3"."rule_id" = "t"."rule_id"' in text


def test_empty_keys_is_refuse_by_default_skip_on_request_and_nothing_else(doc) -> None:
    assert {t.empty_keys for t in parse_tenant_map(doc).cassandra_tables.values()} == {"refuse"}
    skip = copy.deepcopy(doc)
    skip["cassandra"]["tables"]["latest_values"]["empty_keys"] = "skip"
    assert parse_tenant_map(skip).cassandra_tables["latest_values"].empty_keys == "skip"
    skip["cassandra"]["tables"]["latest_values"]["empty_keys"] = "ignore"
    with pytest.raises(TenantMapError, match=r"cassandra.tables.latest_values.empty_keys: 'ignore' is not one of"):
        parse_tenant_map(skip)
