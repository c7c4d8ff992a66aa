"""Parsing test_decoding output and the tenant filter's decisions, without a server."""

from __future__ import annotations

import pytest

from tenant_migration.postgres import cdc


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(
            "table platform.devices: INSERT: device_id[bigint]:-5 name[text]:'it''s' firmware_id[integer]:null",
            ("INSERT", {"device_id": "-5", "name": "it's", "firmware_id": None}, None),
            id="insert with quote and null",
        ),
        pytest.param(
            "table platform.dashboards: UPDATE: dashboard_id[bigint]:1 layout[jsonb]:'{\"a\": [1, \"x y\"]}' "
            "updated_at[timestamp with time zone]:'2026-11-26 12:47:02.407557+00'",
            ("UPDATE", {"dashboard_id": "1", "layout": '{"a": [1, "x y"]}',
                        "updated_at": "2026-11-26 12:47:02.407557+00"}, None),
            id="update with spaces in type and value",
        ),
        pytest.param(
            "table platform.rule_actions: DELETE: rule_id[bigint]:7 action_no[smallint]:2",
            ("DELETE", None, {"rule_id": "7", "action_no": "2"}),
            id="delete carries the key",
        ),
        pytest.param(
            "table platform.devices: UPDATE: old-key: device_id[bigint]:1 new-tuple: device_id[bigint]:2 tags[text[]]:'{a,b}'",
            ("UPDATE", {"device_id": "2", "tags": "{a,b}"}, {"device_id": "1"}),
            id="key change with array type",
        ),
        pytest.param(
            'table "My Schema"."odd""name": INSERT: "a b"[boolean]:true bits[bit(4)]:B\'0101\'',
            ("INSERT", {"a b": "true", "bits": "0101"}, None),
            id="quoted identifiers and bit string",
        ),
    ],
)
def test_parse_change(data: str, expected: tuple) -> None:
    ch = cdc.parse_change("0/1", data)
    assert ch is not None
    op = ch.op
    assert (op, ch.new, ch.old_key) == expected


def test_unchanged_toast_is_left_out() -> None:
    ch = cdc.parse_change("0/1", "table s.t: UPDATE: id[integer]:1 big[text]:unchanged-toast-datum")
    assert ch is not None and ch.new == {"id": "1"} and ch.unchanged_toast == frozenset({"big"})


def test_truncate_names_every_relation() -> None:
    ch = cdc.parse_change("0/1", "table platform.a, platform.b: TRUNCATE: (no-flags)")
    assert ch is not None and ch.op == "TRUNCATE" and ch.truncated == (("platform", "a"), ("platform", "b"))


def test_no_tuple_data_is_refused() -> None:
    with pytest.raises(cdc.CdcError, match="primary key"):
        cdc.parse_change("0/1", "table s.nokey: DELETE: (no-tuple-data)")


def test_transactions_are_grouped_at_their_commit_lsn() -> None:
    rows = [
        ("0/10", "5", "BEGIN 5"),
        ("0/18", "5", "table s.t: INSERT: id[integer]:1"),
        ("0/30", "5", "COMMIT 5 (at 2026-11-26 12:47:02.40475+00)"),
        ("0/30", "6", "BEGIN 6"),
        ("0/40", "6", "COMMIT 6 (at 2026-11-26 12:47:03+05:30)"),
    ]
    txns = list(cdc.group_transactions(rows))
    assert [(t.xid, t.commit_lsn, len(t.changes)) for t in txns] == [(5, "0/30", 1), (6, "0/40", 0)]
    assert txns[0].commit_time is not None and txns[0].commit_time.microsecond == 404750
    assert txns[1].commit_time is not None and txns[1].commit_time.utcoffset().total_seconds() == 19800


@pytest.mark.parametrize("lsn", [pytest.param("0/0", id="zero"), pytest.param("1A/FF00AB10", id="high word")])
def test_lsn_round_trip(lsn: str) -> None:
    assert cdc.int_to_lsn(cdc.lsn_to_int(lsn)) == lsn


def test_slot_name_is_safe() -> None:
    name = cdc.slot_name_for("manual__2026-11-26T10:00:00+00:00" + "x" * 80)
    assert name.startswith("tm_cdc_") and len(name) <= 63 and all(c.isalnum() or c == "_" for c in name)
