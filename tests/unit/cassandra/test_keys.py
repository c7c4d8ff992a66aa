"""Relational values in the form the Cassandra driver binds and returns (``cassandra.keys``)."""

from __future__ import annotations

import ipaddress
import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from tenant_migration.cassandra import keys

U = uuid.UUID("12345678-1234-5678-1234-567812345678")


@pytest.mark.parametrize(("cql_type", "value", "expected"), [
    pytest.param("uuid", U, U, id="uuid"),
    pytest.param("uuid", str(U), U, id="uuid from text"),
    pytest.param("timeuuid", U, U, id="timeuuid"),
    pytest.param("text", U, str(U), id="text from a uuid"),
    pytest.param("inet", ipaddress.ip_address("10.0.0.1"), "10.0.0.1", id="inet from psycopg's address"),
    pytest.param("inet", ipaddress.ip_interface("10.0.0.1/32"), "10.0.0.1", id="inet from an interface"),
    pytest.param("inet", ipaddress.ip_address("2001:DB8:0:0::1"), "2001:db8::1", id="ipv6 compressed"),
    pytest.param("decimal", Decimal("1.50"), Decimal("1.50"), id="decimal"),
    pytest.param("date", date(2026, 12, 6), date(2026, 12, 6), id="date"),
    pytest.param("timestamp", datetime(2026, 12, 6, 10, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2))),
                 datetime(2026, 12, 6, 8, 0, 0, 123000), id="timestamptz to naive UTC milliseconds"),
    pytest.param("blob", memoryview(b"\x00\x01"), b"\x00\x01", id="blob from a memoryview"),
    pytest.param("bigint", 7, 7, id="bigint"),
    pytest.param("frozen<tuple<int, text, uuid>>", [1, "a", str(U)], (1, "a", U), id="tuple from an array"),
    pytest.param("tuple<frozen<tuple<int, int>>, inet>", [(1, 2), "::1"], ((1, 2), "::1"), id="nested tuple"),
    pytest.param("text", None, None, id="null stays null"),
])
def test_converter_gives_the_drivers_value(cql_type, value, expected):
    got = keys.converter(cql_type)(value)
    assert got == expected
    assert type(got) is type(expected)


@pytest.mark.parametrize("cql_type", ["frozen<list<int>>", "frozen<set<text>>", "frozen<map<text, int>>",
                                      "duration", "frozen<my_udt>"])
def test_unsupported_key_types_are_named(cql_type):
    assert not keys.supported(cql_type)
    with pytest.raises(keys.UnsupportedKeyType, match="cannot be planned"):
        keys.converter(cql_type)


def test_tuple_arity_is_checked():
    with pytest.raises(ValueError, match="needs 2 values"):
        keys.converter("frozen<tuple<int, int>>")([1, 2, 3])


def test_timestamp_matches_what_the_driver_reads_back():
    aware = datetime(2026, 1, 1, tzinfo=UTC)
    assert keys.converter("timestamp")(aware) == datetime(2026, 1, 1)


def test_convert_bases_converts_only_the_columns_that_need_it():
    convs = keys.base_converters({"d": "bigint", "a": "inet", "t": "timestamp"}, ["d", "a", "t"])
    rows = [(1, ipaddress.ip_address("10.0.0.1"), datetime(2026, 1, 1, 0, 0, 0, 1500, tzinfo=UTC)),
            (2, "10.0.0.2", datetime(2026, 1, 1))]
    assert keys.convert_bases(rows, convs) == [(1, "10.0.0.1", datetime(2026, 1, 1, 0, 0, 0, 1000)),
                                               (2, "10.0.0.2", datetime(2026, 1, 1))]
    assert keys.convert_bases([(True,), (3,)], keys.base_converters({"d": "bigint"}, ["d"])) == [(1,), (3,)]
    assert keys.convert_bases([], convs) == []
