"""Where a target sequence must be before the flip (issue 28, item 3), without a server."""

from __future__ import annotations

from tenant_migration.postgres.sequences import SequenceState, SequenceUse

USE = SequenceUse("orders", "order_id", "s", "orders_order_id_seq", False, 1, 2**63 - 1)


def test_past_the_source_and_past_the_target_rows_plus_headroom() -> None:
    st = SequenceState(USE, source_next=101, target_next=1, target_max=100)
    assert st.needed(0) == 101 and st.needed(50) == 151 and not st.ok(0)
    # A row on the target beyond the source's sequence (inserted with an explicit key) counts too.
    assert SequenceState(USE, 101, 1, 500).needed(10) == 511
    assert SequenceState(USE, 101, 1, None).needed(0) == 101  # an empty table: the source alone
    assert SequenceState(USE, 101, 151, 100).ok(50) and SequenceState(USE, 101, 151, 100).ok(0)
    assert SequenceState(USE, 101, 1, 100).to_dict()["use"] == "s.orders_order_id_seq (orders.order_id)"
