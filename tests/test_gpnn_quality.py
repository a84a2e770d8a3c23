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


def test_configuration_overrides_replace_settings_of_their_base() -> None:
    from benchmarks.gpnn_quality import gpnn_and_seed
    from evaluation.focusers import GPNN_CAM_GPNNS

    faiss = GPNN_CAM_GPNNS["faiss"]
    gpnn, seed = gpnn_and_seed("faiss+early_stop=none+index=flat+alpha=1e3@3", 0)
    assert (gpnn.early_stop, gpnn.index, gpnn.alpha, seed) == (None, "flat", 1000.0, 3)
    assert (gpnn.search, gpnn.pca_dims) == (faiss["search"], faiss["pca_dims"])
    exact, seed = gpnn_and_seed("exact+iters=2", 5)
    assert (exact.iters, exact.search, exact.init, seed) == (2, "auto", "zeros", 5)
    cells, seed = gpnn_and_seed("faiss-cells+nprobe=2@4", 0)  # any of the evaluation's GPNNs
    assert (cells.candidates, cells.ivf_min_keys, cells.nprobe, cells.early_stop, seed) == (
        "cells",
        2048,
        2,
        faiss["early_stop"],
        4,
    )


@pytest.mark.parametrize("config", ["faiss+early_stop", "sharp", "exact+pca_dims=30"])
def test_bad_configuration_names_are_refused(config: str) -> None:
    from benchmarks.gpnn_quality import gpnn_for

    with pytest.raises((SystemExit, ValueError), match="early_stop|sharp|pca_dims"):
        gpnn_for(config)
