"""The load check's pass/fail rule (thresholds), without servers."""

from __future__ import annotations

import pytest

from tenant_migration.sample.fleet.loadcheck import LoadResult


@pytest.mark.parametrize(("result", "ok"), [
    pytest.param(LoadResult(1000, 10, 2, 10_000, 10_000, 0, 990.0, 2.0, 20.0), True, id="fast enough"),
    pytest.param(LoadResult(1000, 10, 2, 10_000, 10_000, 0, 990.0, 2.0, 60.0), False, id="p99 too high"),
    pytest.param(LoadResult(1000, 10, 2, 10_000, 9_999, 1, 990.0, 2.0, 20.0), False, id="one error"),
    pytest.param(LoadResult(1000, 10, 2, 9_000, 9_000, 0, 900.0, 2.0, 20.0), False, id="rate not reached"),
    pytest.param(LoadResult(1000, 10, 2, 0, 0, 0, 0.0, None, None), False, id="nothing acknowledged"),
])
def test_thresholds(result: LoadResult, ok: bool) -> None:
    assert result.passes(max_p99_ms=50.0, max_errors=0) is ok
