"""evaluation.stats: the bootstrap interval against a slow loop, its coverage, degenerate inputs, pairs."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation import stats
from evaluation.stats import bootstrap_ci, paired_norms, paired_reductions


def _reference_ci(values, statistic, n_resamples, seed, level):
    """The textbook percentile bootstrap, one resample at a time from the same generator."""
    rng = np.random.default_rng(seed)
    values = np.asarray(values, dtype=np.float64)
    resampled = [
        statistic(values[rng.integers(0, len(values), size=len(values))]) for _ in range(n_resamples)
    ]
    low, high = np.quantile(resampled, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


@pytest.mark.parametrize("statistic", [np.median, np.mean])
@pytest.mark.parametrize(("n", "seed", "level"), [(2, 0, 0.95), (7, 3, 0.9), (60, 11, 0.95)])
def test_bootstrap_equals_a_slow_loop_with_the_same_seed(statistic, n, seed, level):
    values = np.random.default_rng(100 + n).standard_normal(n)
    expected = _reference_ci(values, statistic, 2_000, seed, level)
    assert bootstrap_ci(values, statistic, n_resamples=2_000, seed=seed, level=level) == expected


def test_bootstrap_drawn_in_chunks_is_the_same(monkeypatch):
    values = np.random.default_rng(1).exponential(size=37)
    expected = _reference_ci(values, np.median, 1_001, 5, 0.95)
    monkeypatch.setattr(stats, "CHUNK_VALUES", 37 * 10)  # 10 resamples a chunk, the last one short
    assert bootstrap_ci(values, np.median, n_resamples=1_001, seed=5) == expected


def test_interval_of_the_median_of_a_large_normal_sample_covers_the_true_median():
    values = np.random.default_rng(0).normal(loc=3.0, scale=2.0, size=4_000)
    low, high = bootstrap_ci(values, np.median)
    assert low < 3.0 < high
    assert low <= np.median(values) <= high
    # the median's standard error is about 1.2533 * 2 / sqrt(4000) = 0.04: the 95 % interval is ~0.16 wide
    assert 0.08 < high - low < 0.3


def test_the_95_percent_interval_covers_the_true_median_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    samples = rng.normal(loc=-1.0, size=(300, 151))
    covered = [low < -1.0 < high for low, high in (bootstrap_ci(v, np.median, 1_000) for v in samples)]
    assert 0.89 <= np.mean(covered) <= 0.99


def test_a_wider_level_gives_a_wider_interval_and_the_seed_fixes_it():
    values = np.random.default_rng(2).standard_normal(50)
    low90, high90 = bootstrap_ci(values, np.mean, level=0.9)
    low99, high99 = bootstrap_ci(values, np.mean, level=0.99)
    assert low99 < low90 < high90 < high99
    assert bootstrap_ci(values, np.mean, seed=4) == bootstrap_ci(values, np.mean, seed=4)
    assert bootstrap_ci(values, np.mean, seed=4) != bootstrap_ci(values, np.mean, seed=5)


@pytest.mark.parametrize("values", [[], [0.3], np.array([[1.5]])])
def test_fewer_than_two_values_have_no_interval(values):
    assert bootstrap_ci(values, np.median) is None


def test_constant_values_give_a_point_interval():
    assert bootstrap_ci([0.25] * 9, np.median) == (0.25, 0.25)


@pytest.mark.parametrize(
    ("values", "kwargs", "match"),
    [
        ([1.0, np.nan], {}, "finite"),
        ([1.0, np.inf], {}, "finite"),
        ([1.0, 2.0], {"level": 1.0}, "level"),
        ([1.0, 2.0], {"n_resamples": 0}, "n_resamples"),
    ],
)
def test_bad_input_is_refused(values, kwargs, match):
    with pytest.raises(ValueError, match=match):
        bootstrap_ci(values, np.median, **kwargs)


def test_pairs_are_the_images_both_fooled_with_a_positive_reference_norm():
    ok = lambda l2: {"success": True, "l2": l2}  # noqa: E731
    focused = {0: ok(1.0), 1: ok(3.0), 2: {"success": False, "l2": None}, 4: ok(1.0), 5: ok(2.0)}
    reference = {
        0: ok(2.0),
        1: ok(2.0),
        2: ok(2.0),
        3: ok(1.0),
        4: {"success": False, "l2": None},
        5: ok(0.0),
    }
    images, ref, foc = paired_norms(focused, reference)
    assert images.tolist() == [0, 1] and ref.tolist() == [2.0, 2.0] and foc.tolist() == [1.0, 3.0]
    np.testing.assert_allclose(paired_reductions(focused, reference), [0.5, -0.5])
    assert paired_reductions({}, reference).shape == (0,)
