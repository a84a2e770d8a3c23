"""Figures of the saliency metrics (evaluation.metric_plots): valid PNGs, links, edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from evaluation.metric_plots import (
    MAX_CASCADE_COLUMNS,
    insertion_deletion_curves,
    link_figures,
    pointing_bars,
    pointing_examples,
    sanity_cascade,
    spread_steps,
)


def _png_size(path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.size


@pytest.mark.parametrize(
    ("n", "k", "expected"),
    [(0, 8, []), (1, 8, [1]), (3, 8, [1, 2, 3]), (9, 9, list(range(1, 10))), (100, 3, [1, 50, 100])],
)
def test_spread_steps(n, k, expected):
    assert spread_steps(n, k) == expected


def test_spread_steps_keeps_the_ends_and_the_limit():
    steps = spread_steps(137)
    assert steps[0] == 1 and steps[-1] == 137 and len(steps) == MAX_CASCADE_COLUMNS
    assert steps == sorted(set(steps))


def test_link_figures_appends_relative_links(tmp_path):
    md = tmp_path / "report.md"
    md.write_text("# Title\n\ntable\n")
    link_figures(md, [("a bar chart", tmp_path / "figures" / "a.png"), ("b", tmp_path / "b.png")])
    assert (
        md.read_text() == "# Title\n\ntable\n\n## Figures\n\n![a bar chart](figures/a.png)\n\n![b](b.png)\n"
    )


def test_pointing_figures_take_maps_larger_than_the_image_and_blank_maps(tmp_path):
    """VOC: the map is at the original size, the image at the model's; a blank map is named blank."""
    rng = np.random.default_rng(0)
    images = [rng.random((3, 32, 43), dtype=np.float32), rng.random((3, 40, 40), dtype=np.float32)]
    peak = np.zeros((300, 400), np.float32)
    peak[150, 200] = 1
    maps = {
        "centre": [peak, np.zeros((80, 80), np.float32)],
        "gradcam": [peak, np.ones((80, 80), np.float32)],
    }
    boxes = [np.array([[100, 150, 200, 187]]), np.array([[0, 0, 10, 10], [50, 50, 60, 60]])]
    path = pointing_examples(images, maps, boxes, 15, tmp_path / "figures" / "examples.png", ["a", "b"])
    width, height = _png_size(path)
    assert width > 300 and height > 300
    rows = [{"method": m, "n": 2, "accuracy": 0.5, "energy": 0.25} for m in ("centre", "gradcam")]
    assert min(_png_size(pointing_bars(rows, tmp_path / "bars.png"))) > 200


def test_sanity_cascade_takes_undefined_correlations(tmp_path):
    rng = np.random.default_rng(1)
    rows = [{"layer": "none", "mean_spearman": 1.0}, {"layer": "fc", "mean_spearman": None}]
    rows += [{"layer": f"conv{i}", "mean_spearman": float(v)} for i, v in enumerate(rng.uniform(-1, 1, 5))]
    maps = rng.random((3, 2, 16, 16)).astype(np.float32)
    maps[0, 1] = 0  # a blank map
    path = sanity_cascade(
        rng.random((2, 3, 16, 16)),
        rng.random((2, 16, 16)),
        maps,
        ["fc", "conv2", "conv4"],
        rows,
        tmp_path / "cascade.png",
        "title",
    )
    assert min(_png_size(path)) > 300


def test_insertion_deletion_curves(tmp_path):
    curve = np.linspace(0, 1, 65)
    curves = {
        m: {"insertion_curve": curve, "deletion_curve": 1 - curve, "insertion": 0.5, "deletion": 0.5, "n": 3}
        for m in ("gradcam", "centre", "random")
    }
    assert min(_png_size(insertion_deletion_curves(curves, tmp_path / "curves.png"))) > 300
