from __future__ import annotations

import pytest

from tenant_migration.spec import InvalidParams, MigrationSpec, parse_spec


def test_minimal_params_get_defaults() -> None:
    spec = parse_spec({"tenant_id": 7})
    assert spec == MigrationSpec(tenant_id=7)


def test_the_form_sends_strings_for_booleans() -> None:
    assert parse_spec({"tenant_id": 7, "dry_run": "true"}).dry_run is True


@pytest.mark.parametrize(
    ("params", "message"),
    [
        pytest.param({}, "tenant_id' is required", id="missing tenant"),
        pytest.param({"tenant_id": None}, "tenant_id' is required", id="null tenant"),
        pytest.param({"tenant_id": 0}, "between 1", id="zero tenant"),
        pytest.param({"tenant_id": -3}, "between 1", id="negative tenant"),
        pytest.param({"tenant_id": "abc"}, "must be an integer", id="text tenant"),
        pytest.param({"tenant_id": 1.5}, "must be an integer", id="fractional tenant"),
        pytest.param({"tenant_id": True}, "must be an integer", id="boolean tenant"),
        pytest.param({"tenant_id": 1, "dry_run": "maybe"}, "true or false", id="bad bool"),
        pytest.param({"tenant_id": 1, "chunk_rows": 5}, "chunk_rows", id="tiny chunks"),
        pytest.param({"tenant_id": 1, "dns_zone": "example.test"}, "ending in '.'", id="unqualified zone"),
        pytest.param({"tenant_id": 1, "target_endpoint_prefix": "Bad_Prefix"}, "DNS label", id="bad prefix"),
        pytest.param({"tenant_id": 1, "tenant": 2}, "unknown param", id="typo param"),
    ],
)
def test_malformed_params_are_rejected_with_the_param_named(params: dict, message: str) -> None:
    with pytest.raises(InvalidParams, match=message):
        parse_spec(params)
