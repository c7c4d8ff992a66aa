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


@pytest.mark.parametrize(("raw", "steps"), [
    pytest.param("", (), id="empty: the direct flip"),
    pytest.param("10,50,100", (10, 50, 100), id="the form's string"),
    pytest.param(" 25 , 100 ", (25, 100), id="spaces"),
    pytest.param([10, 50, 100], (10, 50, 100), id="a list from REST conf"),
    pytest.param("100", (100,), id="one step"),
])
def test_dns_shift_steps_are_parsed(raw: object, steps: tuple[int, ...]) -> None:
    assert parse_spec({"tenant_id": 1, "dns_shift_percent_steps": raw}).dns_shift_percent_steps == steps


@pytest.mark.parametrize(("params", "message"), [
    pytest.param({"dns_shift_percent_steps": "50,10,100"}, "strictly ascending", id="descending"),
    pytest.param({"dns_shift_percent_steps": "10,10,100"}, "strictly ascending", id="repeated"),
    pytest.param({"dns_shift_percent_steps": "10,50"}, "last step must be 100", id="does not end at 100"),
    pytest.param({"dns_shift_percent_steps": "0,100"}, "between 1 and 100", id="zero"),
    pytest.param({"dns_shift_percent_steps": "10,101"}, "between 1 and 100", id="over 100"),
    pytest.param({"dns_shift_percent_steps": "10;100"}, "comma-separated", id="wrong separator"),
    pytest.param({"dns_shift_percent_steps": [True, 100]}, "comma-separated", id="boolean step"),
    pytest.param({"dns_shift_percent_steps": "10,50,100", "dns_shift_dwell_s": 600, "suspension_minutes": 30},
                 "suspension", id="dwell outlasts half the suspension"),
])
def test_bad_dns_shift_params_are_rejected(params: dict, message: str) -> None:
    with pytest.raises(InvalidParams, match=message):
        parse_spec({"tenant_id": 1, **params})
