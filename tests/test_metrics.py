"""Perturbation norms and norm reductions against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from evaluation import norm_reduction, perturbation_norms


def test_norms_of_a_hand_made_delta():
    x = np.zeros((2, 3, 2, 2), dtype=np.float32)
    x_adv = x.copy()
    # image 0: pixel (0,0) changed in two channels, pixel (1,1) in one channel
    x_adv[0, 0, 0, 0] = 0.3
    x_adv[0, 2, 0, 0] = -0.4
    x_adv[0, 1, 1, 1] = 0.1
    # image 1 unchanged except a change below the tolerance
    x_adv[1, 0, 0, 1] = 1e-9
    norms = perturbation_norms(x, x_adv)
    np.testing.assert_array_equal(norms["l0"], [3, 0])
    np.testing.assert_array_equal(norms["l0_pixels"], [2, 0])
    np.testing.assert_allclose(norms["l1"], [0.8, 1e-9], rtol=1e-6)
    np.testing.assert_allclose(norms["l2"], [math.sqrt(0.09 + 0.16 + 0.01), 1e-9], rtol=1e-6)
    np.testing.assert_allclose(norms["linf"], [0.4, 1e-9], rtol=1e-6)
    assert norms["l0"].dtype == np.int64 and norms["l2"].dtype == np.float64


def test_float32_round_off_is_not_a_changed_pixel():
    rng = np.random.default_rng(0)
    x = rng.random((2, 3, 16, 16), dtype=np.float32)
    round_trip = (x + np.float32(0.1)) - np.float32(0.1)  # a few ulps off on many elements
    assert (round_trip != x).any()
    assert perturbation_norms(x, round_trip)["l0"].tolist() == [0, 0]
    x_adv = x.copy()
    x_adv[0, 1, 3, 4] += 2e-6  # well above round-off, far below a grey level: a change
    x_adv[1, 0, 0, 0] = x[1, 0, 0, 0] + 1.0 if x[1, 0, 0, 0] < 0.5 else x[1, 0, 0, 0] - 1.0
    assert perturbation_norms(x, x_adv)["l0_pixels"].tolist() == [1, 1]
    # The tolerance scales with the values (e.g. images in [0,255]): their round-off is no change either.
    x255 = 255 * x
    assert perturbation_norms(x255, (x255 + np.float32(25.5)) - np.float32(25.5))["l0"].tolist() == [0, 0]


def test_norms_accept_torch_tensors():
    x = torch.zeros(1, 1, 2, 2)
    norms = perturbation_norms(x, x + 0.5)
    assert norms["l0"][0] == 4 and norms["l2"][0] == pytest.approx(1.0)


@settings(max_examples=30, deadline=None)
@given(
    arrays(
        np.float32,
        st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 4), st.integers(1, 4)),
        elements=st.floats(-1, 1, width=32),
    )
)
def test_norm_invariants(delta):
    x = np.full(delta.shape, 0.5, dtype=np.float32)
    norms = perturbation_norms(x, x + delta)
    d = (x + delta).astype(np.float64) - x
    np.testing.assert_allclose(norms["l2"], np.sqrt((d.reshape(len(d), -1) ** 2).sum(1)), rtol=1e-12)
    assert (norms["linf"] <= norms["l2"] + 1e-12).all() and (norms["l2"] <= norms["l1"] + 1e-12).all()
    assert (norms["l0_pixels"] <= norms["l0"]).all()
    assert (norms["l0"] <= delta.shape[1] * norms["l0_pixels"]).all()


def test_norm_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        perturbation_norms(np.zeros((1, 3, 2, 2)), np.zeros((1, 3, 2, 3)))
    with pytest.raises(ValueError, match=r"\(N,C,H,W\)"):
        perturbation_norms(np.zeros((3, 2, 2)), np.zeros((3, 2, 2)))
    with pytest.raises(TypeError, match="x must be"):
        perturbation_norms([[0.0]], np.zeros((1, 1, 1, 1)))


def test_reduction_table_from_small_arrays():
    full = {
        "success": np.array([True, True, True, False, True]),
        "l2": np.array([2.0, 4.0, 1.0, 3.0, 0.0]),
        "linf": np.array([0.1, 0.2, 0.4, 0.3, 0.0]),
        "method": "pgd",  # not a per-sample norm: ignored
    }
    focused = {
        "success": np.array([True, True, False, True, True]),
        "l2": np.array([1.0, 1.0, 9.0, 1.0, 0.5]),
        "linf": np.array([0.2, 0.1, 0.1, 0.1, 0.1]),
    }
    table = norm_reduction(focused, full)
    # both fool images 0, 1, 4; image 4 has a zero full-attack norm and is left out.
    assert table["n_images"] == 5 and table["n_both"] == 3
    assert table["success_rate_focused"] == pytest.approx(0.8)
    assert table["success_rate_full"] == pytest.approx(0.8)
    # l2 reductions: 100*(1-1/2)=50, 100*(1-1/4)=75
    assert table["l2"] == {
        "median_reduction": pytest.approx(62.5),
        "mean_reduction": pytest.approx(62.5),
        "n": 2,
    }
    # linf reductions: 100*(1-0.2/0.1) = -100, 100*(1-0.1/0.2) = 50
    assert table["linf"]["median_reduction"] == pytest.approx(-25.0)
    assert table["linf"]["mean_reduction"] == pytest.approx(-25.0)
    assert "l1" not in table


def test_median_of_per_image_reductions_not_reduction_of_medians():
    full = {"success": np.ones(3, bool), "l2": np.array([1.0, 10.0, 100.0])}
    focused = {"success": np.ones(3, bool), "l2": np.array([0.9, 1.0, 90.0])}
    table = norm_reduction(focused, full)
    # per-image: 10, 90, 10 -> median 10, mean 36.67; reduction of medians would be 90.
    assert table["l2"]["median_reduction"] == pytest.approx(10.0)
    assert table["l2"]["mean_reduction"] == pytest.approx(110 / 3)


def test_reduction_with_no_common_success_is_nan():
    full = {"success": np.array([True, False]), "l2": np.array([1.0, 1.0])}
    focused = {"success": np.array([False, True]), "l2": np.array([1.0, 1.0])}
    table = norm_reduction(focused, full)
    assert table["n_both"] == 0 and table["l2"]["n"] == 0 and math.isnan(table["l2"]["median_reduction"])


def test_reduction_bad_input():
    with pytest.raises(ValueError, match="success"):
        norm_reduction({"l2": np.ones(2)}, {"success": np.ones(2, bool), "l2": np.ones(2)})
    with pytest.raises(ValueError, match="same images"):
        norm_reduction({"success": np.ones(3, bool)}, {"success": np.ones(2, bool)})
    with pytest.raises(TypeError, match="booleans"):
        norm_reduction({"success": np.ones(2)}, {"success": np.ones(2, bool)})
    with pytest.raises(ValueError, match=r"report_full\['l2'\]"):
        norm_reduction({"success": np.ones(2, bool)}, {"success": np.ones(2, bool), "l2": np.ones(3)})
