"""benchmarks/gpnn_reliability.py: split-batch reliability of GPNN-CAM maps against synthetic maps whose
noise and underlying correlation are known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from benchmarks.gpnn_reliability import (
    cross_agreement,
    leave_one_out,
    load_batches,
    mode_rows,
    ranked,
    reliability_rows,
    single_batch_agreement,
    spearman_brown,
    split_half_rows,
    true_correlation,
    two_groups,
)

PIXELS = (120, 120)  # enough pixels for correlations within about 0.02 of their expectation


def _batches(underlying: np.ndarray, noise: float, n: int, seed: int, rng: np.random.Generator):
    return [((seed, b), underlying + noise * rng.standard_normal(PIXELS)) for b in range(n)]


def test_single_batch_agreement_is_the_share_of_variance_of_the_underlying_map() -> None:
    rng = np.random.default_rng(0)
    batches = _batches(rng.standard_normal(PIXELS), 1.0, 6, 0, rng)  # signal and noise variance 1
    assert single_batch_agreement(batches) == pytest.approx(0.5, abs=0.03)


def test_spearman_brown_predicts_the_agreement_of_means() -> None:
    rng = np.random.default_rng(1)
    underlying = rng.standard_normal(PIXELS)
    batches = _batches(underlying, 2.0, 16, 0, rng)
    r1 = single_batch_agreement(batches)
    first = np.mean([m for _, m in batches[:8]], 0)
    second = np.mean([m for _, m in batches[8:]], 0)
    observed = np.corrcoef(first.ravel(), second.ravel())[0, 1]
    assert spearman_brown(r1, 8) == pytest.approx(observed, abs=0.03)
    assert spearman_brown(r1, 1) == r1


@pytest.mark.parametrize("rho", [1.0, 0.6])
def test_true_correlation_removes_the_seed_noise(rho: float) -> None:
    rng = np.random.default_rng(2)
    underlying = rng.standard_normal(PIXELS)
    other = rho * underlying + np.sqrt(1 - rho**2) * rng.standard_normal(PIXELS)
    batches = _batches(other, 1.5, 8, 0, rng)
    reference = _batches(underlying, 0.8, 5, 1, rng)
    assert cross_agreement(batches, reference) < rho - 0.2  # the noise attenuates the raw agreement
    assert true_correlation(batches, reference) == pytest.approx(rho, abs=0.05)
    low, high = leave_one_out(batches, reference)
    assert low <= true_correlation(batches, reference) <= high


def test_pairs_of_one_batch_seed_are_left_out() -> None:
    rng = np.random.default_rng(3)
    batches = _batches(rng.standard_normal(PIXELS), 1.0, 4, 0, rng)
    # against itself, only pairs of different batches remain: the single-batch agreement, true r 1
    assert cross_agreement(batches, batches) == pytest.approx(single_batch_agreement(batches))
    assert true_correlation(batches, batches) == pytest.approx(1.0)
    assert np.isnan(single_batch_agreement(batches[:1]))
    assert np.isnan(leave_one_out(batches, batches[:2])[0])


def test_load_batches_pools_the_seeds_of_a_configuration(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    np.save(tmp_path / "batches_exact_skimage-coffee.npy", rng.random((2, 8, 8)))
    np.save(tmp_path / "batches_exact@3_skimage-coffee.npy", rng.random((1, 8, 8)))
    np.save(tmp_path / "batches_faiss+candidates=1_skimage-rocket.npy", rng.random((1, 8, 8)))
    np.save(tmp_path / "batches_exact_unknown-photo.npy", rng.random((1, 8, 8)))
    pooled = load_batches(tmp_path, seed=7)
    assert sorted(i for i, _ in pooled["exact"]["skimage-coffee"]) == [(3, 0), (7, 0), (7, 1)]
    assert [i for i, _ in pooled["faiss+candidates=1"]["skimage-rocket"]] == [(7, 0)]
    assert set(pooled) == {"exact", "faiss+candidates=1"}


def test_reliability_rows_project_to_a_variation_count() -> None:
    rng = np.random.default_rng(5)
    underlying = rng.standard_normal(PIXELS)
    pooled = {
        "exact": {"skimage-chelsea": _batches(underlying, 1.0, 4, 0, rng)},
        "faiss": {"skimage-chelsea": _batches(underlying, 1.0, 6, 1, rng)},
    }
    reference_row, faiss_row = reliability_rows(pooled, "exact", 100)
    assert (reference_row["config"], faiss_row["config"], faiss_row["batches"]) == ("exact", "faiss", 6)
    assert reference_row["self"] == pytest.approx(spearman_brown(reference_row["r1"], 10))
    low, high = faiss_row["true_range"]
    assert low <= faiss_row["true"] <= high and faiss_row["true"] == pytest.approx(1.0, abs=0.05)
    # the same underlying map: the projected agreement is that of two 100-variation maps, about 10/11
    assert faiss_row["vs_ref"] == pytest.approx(10 / 11, abs=0.03)


def test_split_half_rows_compare_the_prediction_with_observed_halves() -> None:
    rng = np.random.default_rng(6)
    batches = _batches(rng.standard_normal(PIXELS), 2.0, 8, 0, rng)
    rows = split_half_rows({"faiss": {"skimage-astronaut": batches}})
    assert [row["variations"] for row in rows] == [10, 20, 40]
    for row in rows:
        assert row["predicted"] == pytest.approx(row["pearson"], abs=0.04)
        assert row["spearman"] == pytest.approx(row["pearson"], abs=0.04)  # Gaussian maps


def test_ranked_maps_give_spearman_correlations() -> None:
    rng = np.random.default_rng(7)
    batches = _batches(np.exp(rng.standard_normal(PIXELS)), 0.5, 3, 0, rng)
    (_, a), (_, b), _ = ranked({"exact": {"skimage-rocket": batches}})["exact"]["skimage-rocket"]
    expected = spearmanr(batches[0][1].ravel(), batches[1][1].ravel()).statistic
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] == pytest.approx(expected, abs=1e-12)


def test_an_unknown_reference_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import gpnn_reliability

    np.save(tmp_path / "batches_exact@1_skimage-coffee.npy", np.zeros((2, 4, 4)))
    monkeypatch.setattr("sys.argv", ["gpnn_reliability.py", "--out", str(tmp_path), "--reference", "exact@1"])
    with pytest.raises(SystemExit, match="--reference: no batch maps of 'exact@1'.*found: exact"):
        gpnn_reliability.main()


def test_two_groups_recover_two_modes_and_count_them_per_configuration() -> None:
    """Batch maps drawn around two unrelated maps (the second mode 3 of 10 times for one configuration,
    6 of 8 for the other) are split by mode; the larger group comes first."""
    rng = np.random.default_rng(8)
    modes = rng.standard_normal((2, *PIXELS))
    exact = [((0, b), modes[int(b < 6)] + rng.standard_normal(PIXELS)) for b in range(8)]
    faiss = [((1, b), modes[int(b < 3)] + rng.standard_normal(PIXELS)) for b in range(10)]
    labels = two_groups(exact + faiss)
    truth = np.array([b < 6 for b in range(8)] + [b < 3 for b in range(10)])
    assert np.array_equal(labels, truth) or np.array_equal(labels, ~truth)
    assert np.bincount(labels).tolist() == [9, 9] and labels[0] == 0  # equal sizes: the first map's first
    rows = mode_rows({"exact": {"skimage-coffee": exact}, "faiss": {"skimage-coffee": faiss[:9]}})
    assert [(row["config"], row["groups"].tolist()) for row in rows] == [("exact", [6, 2]), ("faiss", [3, 6])]
    assert abs(rows[0]["between"]) < 0.1  # the two modes' means are unrelated


def test_two_groups_of_one_mode_are_noise() -> None:
    """Maps of one underlying map split into two groups whose means still agree (no second mode)."""
    rng = np.random.default_rng(9)
    batches = _batches(rng.standard_normal(PIXELS), 0.5, 12, 0, rng)
    (row,) = mode_rows({"faiss": {"skimage-rocket": batches}})
    assert row["between"] > 0.9 and sum(row["groups"]) == 12
