"""Ledger key values survive a store and a reload with their exact type (``keycodec``)."""

from __future__ import annotations

import ipaddress
import json
import uuid
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal

import pytest

from tenant_migration import keycodec

VALUES = [
    pytest.param(uuid.UUID("00000000-0000-0000-0000-000000000000"), id="nil uuid"),
    pytest.param(uuid.uuid1(), id="timeuuid"),
    pytest.param(uuid.uuid4(), id="uuid4"),
    pytest.param(ipaddress.ip_address("10.0.0.1"), id="ipv4"),
    pytest.param(ipaddress.ip_address("2001:db8::1"), id="ipv6"),
    pytest.param(ipaddress.ip_interface("10.1.0.0/16"), id="ipv4 interface"),
    pytest.param("192.168.0.1", id="inet as the driver's text"),
    pytest.param(Decimal("-0.000100"), id="decimal keeps its exponent"),
    pytest.param(Decimal("123456789012345678901234567890.5"), id="big decimal"),
    pytest.param(date(1, 1, 1), id="date min"),
    pytest.param(datetime(2026, 12, 6, 23, 59, 59, 999000), id="naive timestamp"),
    pytest.param(datetime(2026, 12, 6, 1, 2, 3, 4, tzinfo=timezone(timedelta(hours=-5))), id="aware timestamp"),
    pytest.param(time(12, 30, 0, 1), id="time"),
    pytest.param(b"\x00\xff\x10", id="blob"),
    pytest.param(b"", id="empty blob"),
    pytest.param("", id="empty text"),
    pytest.param("quote ' \" back\\slash $k {\"$k\": 1} é 漢 🙂 \n\t", id="text with any characters"),
    pytest.param("nul \x00 inside", id="text with NUL (jsonb refuses it raw)"),
    pytest.param(0, id="zero"),
    pytest.param(-(2**63), id="bigint min"),
    pytest.param(2**100, id="varint"),
    pytest.param(1.5, id="float"),
    pytest.param(float("inf"), id="infinity"),
    pytest.param(True, id="boolean"),
    pytest.param(None, id="null"),
    pytest.param((1, "a", uuid.UUID(int=7)), id="tuple"),
    pytest.param(((1, 2), (date(2026, 1, 1), b"x")), id="nested tuples"),
    pytest.param([1, (2, 3)], id="list holding a tuple"),
    pytest.param({"$k": "uuid", "v": "not a tag"}, id="a dict that looks like a tag"),
]


@pytest.mark.parametrize("value", VALUES)
def test_value_round_trips_with_its_type(value):
    text = keycodec.dumps({"bases": [[value]]})
    json.loads(text)  # plain JSON, as jsonb takes it
    assert "\\u0000" not in text
    back = keycodec.loads(text)["bases"][0][0]
    assert back == value
    assert type(back) is type(value)
    assert keycodec.decode(json.loads(text))["bases"][0][0] == value


def test_plain_values_stay_readable():
    assert keycodec.dumps({"bases": [[1, "a"]], "days": ["2026-12-06"]}) == '{"bases":[[1,"a"]],"days":["2026-12-06"]}'


def test_nan_round_trips():
    back = keycodec.loads(keycodec.dumps([float("nan")]))[0]
    assert back != back


def test_unknown_type_is_refused_by_name():
    class Opaque:
        pass

    with pytest.raises(keycodec.KeyCodecError, match="Opaque"):
        keycodec.dumps([Opaque()])


def test_aware_timestamp_keeps_its_instant():
    value = datetime(2026, 12, 6, 1, 2, 3, tzinfo=UTC)
    assert keycodec.loads(keycodec.dumps([value]))[0].utcoffset() == timedelta(0)
