"""saliency.masks and saliency.plot."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from saliency import masks, plot


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 3),
    st.integers(1, 12),
    st.integers(1, 12),
    st.floats(1e-3, 1.0),
    st.integers(0, 4),
    st.booleans(),
)
def test_top_k_exact_count_and_highest_pixels(n, h, w, fraction, levels, as_numpy):
    g = torch.Generator().manual_seed(n * 100 + h * 10 + w)
    maps = torch.rand(n, h, w, generator=g)
    if levels:  # many ties
        maps = (maps * levels).round() / levels
    source = maps.numpy() if as_numpy else maps
    k = round(fraction * h * w)
    if k == 0:
        with pytest.raises(ValueError, match="rounds to 0 pixels"):
            masks.top_k(source, fraction)
        return
    mask = masks.top_k(source, fraction)
    assert isinstance(mask, np.ndarray) == as_numpy
    mask = torch.as_tensor(mask)
    assert mask.shape == (n, 1, h, w) and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert (mask.flatten(1).sum(1) == k).all()
    for i in range(n):
        inside, outside = maps[i][mask[i, 0] == 1], maps[i][mask[i, 0] == 0]
        if len(inside) and len(outside):
            assert inside.min() >= outside.max()


def test_top_k_ties_break_in_row_major_order():
    maps = torch.zeros(1, 2, 3)
    mask = masks.top_k(maps, 0.5)
    assert mask[0, 0].tolist() == [[1, 1, 1], [0, 0, 0]]
    assert torch.equal(masks.top_k(maps, 0.5), mask)


def test_threshold_and_soft():
    maps = torch.tensor([[[0.0, 0.25], [0.5, 1.0]]])
    assert masks.threshold(maps, 0.5)[0, 0].tolist() == [[0, 0], [1, 1]]
    torch.testing.assert_close(masks.soft(maps, 2.0)[0, 0], maps[0] ** 2)
    torch.testing.assert_close(masks.soft(maps), maps[:, None])


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: masks.top_k(torch.rand(2, 4, 4), 0.0), "fraction"),
        (lambda: masks.top_k(torch.rand(2, 4, 4), 1.5), "fraction"),
        (lambda: masks.top_k(torch.rand(4, 4), 0.5), "shape"),
        (lambda: masks.top_k(torch.full((1, 2, 2), float("nan")), 0.5), "NaN"),
        (lambda: masks.soft(torch.rand(1, 2, 2), 0.0), "gamma"),
        (lambda: masks.threshold(torch.rand(1, 2, 2), float("nan")), "threshold"),
        (lambda: masks.top_k([[[0.1]]], 0.5), "maps must be"),
        (lambda: masks.top_k(torch.rand(2, 4, 4), True), "fraction must be a number"),
        (lambda: masks.top_k(torch.rand(2, 4, 4), "0.5"), "fraction must be a number"),
        (lambda: masks.top_k(torch.rand(2, 4, 5), 0.02), r"fraction \(area\) 0.02 of a 4x5 map rounds to 0"),
        (lambda: masks.threshold(torch.rand(1, 2, 2), "a"), "t must be a finite threshold"),
        (lambda: masks.soft(torch.rand(1, 2, 2), "2"), "gamma must be a number"),
    ],
)
def test_mask_errors(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_numpy_views_with_negative_strides():
    maps = np.random.default_rng(0).random((2, 5, 6), dtype=np.float32)[:, ::-1]
    for make in (lambda m: masks.top_k(m, 0.3), lambda m: masks.threshold(m, 0.5), masks.soft):
        np.testing.assert_array_equal(make(maps), make(maps.copy()))


@pytest.mark.parametrize("layout", ["chw", "hwc", "hw", "uint8"])
def test_overlay_layouts(layout, tmp_path):
    rng = np.random.default_rng(0)
    image = {
        "chw": rng.random((3, 20, 30)),
        "hwc": rng.random((20, 30, 3)),
        "hw": rng.random((20, 30)),
        "uint8": rng.integers(0, 256, (20, 30, 3), dtype=np.uint8),
    }[layout]
    saliency_map = np.linspace(0, 1, 600).reshape(20, 30)
    out = plot.overlay(image, saliency_map, alpha=0.0)
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    # alpha=0 shows the image itself; alpha=1 shows only the colour map.
    grey = image if layout != "chw" else image.transpose(1, 2, 0)
    expected = grey if layout != "uint8" else grey / 255.0
    expected = np.repeat(expected[..., None], 3, -1) if expected.ndim == 2 else expected
    assert np.abs(out / 255.0 - expected).max() <= 0.5 / 255 + 1e-9
    assert not np.array_equal(plot.overlay(image, saliency_map, alpha=1.0), out)
    path = plot.save_overlay(tmp_path / "sub" / "o.png", image, saliency_map)
    assert np.array_equal(np.asarray(Image.open(path)), plot.overlay(image, saliency_map))


def test_overlay_errors():
    with pytest.raises(ValueError, match="saliency_map"):
        plot.overlay(np.zeros((3, 8, 8)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="alpha"):
        plot.overlay(np.zeros((3, 8, 8)), np.zeros((8, 8)), alpha=2)
    with pytest.raises(ValueError, match="image"):
        plot.overlay(np.zeros((2, 3, 8, 8)), np.zeros((8, 8)))
