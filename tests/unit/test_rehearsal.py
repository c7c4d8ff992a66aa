from __future__ import annotations

import pytest

from tenant_migration.rehearsal import fit_chunk_model


@pytest.mark.parametrize(
    ("points", "expected"),
    [
        pytest.param([(100.0, 2.0), (200.0, 3.0), (300.0, 4.0)], (1.0, 0.01), id="overhead plus per-row cost"),
        pytest.param([(100.0, 2.0)], (0.0, 0.02), id="one point is all marginal cost"),
        pytest.param([(100.0, 5.0), (200.0, 1.0)], (3.0, 0.0), id="negative slope clamped to zero"),
        pytest.param([], (0.0, 0.0), id="no points"),
    ],
)
def test_fit_chunk_model(points: list[tuple[float, float]], expected: tuple[float, float]) -> None:
    a, b = fit_chunk_model(points)
    assert a == pytest.approx(expected[0]) and b == pytest.approx(expected[1])
