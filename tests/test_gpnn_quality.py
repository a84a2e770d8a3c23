"""benchmarks/gpnn_quality.py: the maps by variation count and the Spearman table built from batch maps."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.gpnn_quality import agreement_rows, map_of


def test_map_of_averages_the_batches_of_its_variations() -> None:
    batches = np.arange(4 * 2 * 3, dtype=np.float32).reshape(4, 2, 3)
    np.testing.assert_array_equal(map_of(batches, 0, 20), batches[:2].mean(0))
    np.testing.assert_array_equal(map_of(batches, 20, 20), batches[2:].mean(0))
    np.testing.assert_array_equal(map_of(batches, 10, 10), batches[1])


def test_agreement_rows_control_and_configurations() -> None:
    rng = np.random.default_rng(0)
    exact = rng.random((4, 8, 8))
    noisy = exact + 0.01 * rng.random((4, 8, 8))
    maps = {"exact": {"skimage-rocket": exact}, "same": {"skimage-rocket": noisy[:2]}}
    rows = agreement_rows(maps)
    assert [row["variations"] for row in rows] == [10, 20, 30, 40]
    # the control (the next N variations of the exact run) exists while the run has them
    assert ["control" in row for row in rows] == [True, True, False, False]
    assert rows[0]["control"] == pytest.approx(
        float(
            np.corrcoef(np.argsort(np.argsort(exact[1].ravel())), np.argsort(np.argsort(exact[0].ravel())))[
                0, 1
            ]
        )
    )
    # a configuration is compared at the counts it has, and a near copy agrees nearly perfectly
    assert ["same" in row for row in rows] == [True, True, False, False]
    assert all(row["same"] > 0.99 for row in rows[:2])
    assert rows[0]["control"] < 0.5  # independent batches


def test_agreement_rows_with_another_reference() -> None:
    rng = np.random.default_rng(1)
    maps = {
        "exact": {"skimage-coffee": rng.random((1, 6, 6))},
        "faiss": {"skimage-coffee": rng.random((3, 6, 6))},
    }
    rows = agreement_rows(maps, reference="faiss")
    assert [row["variations"] for row in rows] == [10, 20, 30]
    assert ["control" in row for row in rows] == [True, False, False]
    assert ["exact" in row for row in rows] == [True, False, False]
