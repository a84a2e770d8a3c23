"""Report figures from hand-made records: files written and linked, and what each figure plots."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
from conftest import grid_record
from PIL import Image

from evaluation.norm_plots import NO_SUCCESS, area_series, norm_vs_area_figure, paired_figure
from evaluation.paper_report import paired_l2_panels, summarize_paper, write_paper_report
from evaluation.plots import attack_grid_figure
from evaluation.report import summarize, write_report
from evaluation.report_figures import paired_panels
from evaluation.stats import bootstrap_ci, paired_reductions

AREAS = [0.05, 0.1, 0.2]
FOCUSERS = ["cameras", "random", "gradcam"]
CONFIG = {"attacks": ["pgd", "fgsm"], "focusers": FOCUSERS, "areas": AREAS}


def _record(image, attack, focuser, area, l2, success, correct=True):
    return grid_record(image, attack, focuser, area, l2, success, correct, adv_pred=4 + image)


@pytest.fixture
def records():
    """10 images (image 9 misclassified), two attacks; gradcam never succeeds, random fails on 0 and 1,
    cameras fails on image 2 at 5 %."""
    rng = np.random.default_rng(0)
    recs = []
    for attack in CONFIG["attacks"]:
        for i in range(10):
            full = float(rng.uniform(1, 4))
            recs.append(_record(i, attack, "none", 1.0, full, True, correct=i != 9))
            for area in AREAS:
                cam = full * float(rng.uniform(0.3, 1.2))
                recs.append(_record(i, attack, "cameras", area, cam, not (i == 2 and area == 0.05), i != 9))
                recs.append(_record(i, attack, "random", area, full * 2, i > 1, i != 9))
                recs.append(_record(i, attack, "gradcam", area, 1.0, False, i != 9))
    return recs


@pytest.fixture
def examples():
    rng = np.random.default_rng(1)
    x = rng.random((3, 3, 12, 12), dtype=np.float32)
    delta = np.zeros_like(x)
    delta[:, :, :2, :2] = 0.5  # the focused perturbation is larger (and the unfocused one small)
    return {
        "x": x,
        "adv:none": np.clip(x + 0.01, 0, 1),
        "adv:cameras": np.clip(x + delta, 0, 1),
        "map:cameras": rng.random((3, 12, 12), dtype=np.float32),
        "mask:cameras": (rng.random((3, 1, 12, 12)) > 0.9).astype(np.float32),
    }


def _assert_png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert min(image.size) > 200


def test_report_figures_are_pngs_linked_from_the_report(tmp_path, records, examples):
    result = write_report(tmp_path, records, config=CONFIG, examples=examples)
    names = [f"{kind}_{attack}.png" for kind in ("norm_vs_area", "paired") for attack in ("pgd", "fgsm")]
    names.append("examples.png")
    report = (tmp_path / "report.md").read_text()
    for name in names:
        _assert_png(tmp_path / "figures" / name)
        assert f"](figures/{name})" in report
    assert sorted(p.name for p in result["paths"].values() if p.suffix == ".png") == sorted(names)


def test_a_focuser_that_never_succeeds_is_labelled_not_dropped(records):
    rows = summarize(records, attacks=CONFIG["attacks"], focusers=FOCUSERS)
    fig = norm_vs_area_figure(rows, "pgd")
    try:
        labels = [t.get_text() for t in fig.legends[0].get_texts()]
        assert labels == ["cameras", "random", f"gradcam ({NO_SUCCESS})", "unfocused (full image)"]
        success, *norm_axes = fig.axes
        gradcam_line = success.get_lines()[2]
        np.testing.assert_array_equal(gradcam_line.get_ydata(), [0, 0, 0])
        for ax in norm_axes:  # a hollow marker with a note at each of its areas
            assert [t.get_text() for t in ax.texts].count(NO_SUCCESS) == len(AREAS)
            hollow = [line for line in ax.get_lines() if line.get_markerfacecolor() == "none"]
            assert len(hollow) == len(AREAS)
            assert ax.get_yscale() == "log"
        assert not any("L0" in ax.get_ylabel() for ax in fig.axes)
    finally:
        plt.close(fig)


def test_norm_points_are_medians_with_interquartile_bars_and_counts(records):
    rows = summarize(records)
    series = area_series(rows, "pgd")
    cam = [r for r in records if r["attack"] == "pgd" and r["focuser"] == "cameras" and r["correct"]]
    for k, area in enumerate(AREAS):
        l2 = [r["l2"] for r in cam if r["area"] == area and r["success"]]
        assert series["cameras"]["n_success"][k] == len(l2)
        expected = [np.median(l2), *np.percentile(l2, [25, 75])]
        got = [series["cameras"][f"{s}_l2"][k] for s in ("median", "q1", "q3")]
        np.testing.assert_allclose(got, expected)
    fig = norm_vs_area_figure(rows, "pgd")
    try:
        l2_axis = fig.axes[1]
        line, _, (bars,) = l2_axis.containers[0].lines
        np.testing.assert_allclose(line.get_ydata(), series["cameras"]["median_l2"])
        segments = np.array([s[:, 1] for s in bars.get_segments()])
        np.testing.assert_allclose(segments, np.c_[series["cameras"]["q1_l2"], series["cameras"]["q3_l2"]])
        counts = [t.get_text() for t in l2_axis.texts if t.get_color() == line.get_color()]
        assert counts == [f"{n:.0f}" for n in series["cameras"]["n_success"]]
    finally:
        plt.close(fig)


def test_paired_plot_points_are_the_pairs_the_table_counts(records):
    rows = summarize(records, attacks=CONFIG["attacks"], focusers=FOCUSERS)
    panels = paired_panels(records, rows, "pgd", 0.05)
    assert [p["label"] for p in panels] == FOCUSERS
    by_focuser = {r["focuser"]: r for r in rows if r["attack"] == "pgd" and r["area"] == 0.05}
    fig = paired_figure(panels, "pgd")
    try:
        for ax, panel in zip(fig.axes, panels):
            row = by_focuser[panel["label"]]
            assert len(panel["images"]) == row["n_paired"]
            points = ax.collections[0].get_offsets()
            np.testing.assert_array_equal(points, np.c_[panel["reference"], panel["focused"]])
            reductions = 1 - panel["focused"] / panel["reference"]
            if len(reductions):
                assert np.median(reductions) == pytest.approx(row["l2_reduction"])
            assert f"n = {row['n_paired']} pairs" in ax.get_title()
            assert ax.get_xscale() == ax.get_yscale() == "log"
    finally:
        plt.close(fig)
    # cameras at 5 %: images 0..8 are correct, the attack failed on image 2
    assert panels[0]["images"].tolist() == [0, 1, 3, 4, 5, 6, 7, 8]
    assert "median reduction" in fig.axes[0].get_title() and "[" in fig.axes[0].get_title()
    assert panels[2]["images"].tolist() == []  # gradcam: no pair, the panel says so


def test_examples_grid_rows_name_attack_area_class_and_l2(records, examples):
    records = [*records, _record(1, "pgd", "cameras", 0.1, 99.0, True)]  # a duplicate: the first wins
    fig = attack_grid_figure(examples, records, attack="pgd", area=0.1, max_images=2)
    try:
        titles = [fig.axes[i].get_ylabel() for i in range(0, 20, 5)]
        cells = {(r["image"], r["focuser"]): r for r in records if r["attack"] == "pgd"}
        cam0 = next(
            r for r in records if r["attack"] == "pgd" and r["focuser"] == "cameras" and r["area"] == 0.1
        )
        assert titles[0].startswith("#0 pgd\nfull image\nadv. class 4 (label 1), L2 ")
        assert f"L2 {cells[(0, 'none')]['l2']:.3g}" in titles[0]
        assert titles[1] == f"#0 pgd\ncameras, 10 % area\nadv. class 4 (label 1), L2 {cam0['l2']:.3g}"
        assert titles[2].startswith("#1 pgd\nfull image\nadv. class 5")
        # 4 rows x 5 panels, then the colour bars of each image: its |perturbation| scale, its maps
        bars = [ax.get_ylabel() or ax.get_xlabel() for ax in fig.axes[20:]]
        assert bars == [
            f"#{i} |perturbation| (max over channels)" if b else "saliency map"
            for i in (0, 1)
            for b in (1, 0)
        ]
        # one perturbation scale per image, the largest |delta| of its rows
        clims = [fig.axes[i + 3].images[0].get_clim() for i in range(0, 20, 5)]
        assert clims[0] == clims[1] and clims[2] == clims[3]
        assert clims[0][1] == pytest.approx(0.5, abs=0.02)
    finally:
        plt.close(fig)


def test_grid_rows_of_a_failed_attack_say_so(examples):
    failed = [_record(0, "fgsm", "none", 1.0, 1.0, True), _record(0, "fgsm", "cameras", 0.2, 1.0, False)]
    fig = attack_grid_figure(examples, failed, attack="fgsm", area=0.2, max_images=1)
    try:
        assert fig.axes[5].get_ylabel().endswith("failed: class 1")
        # the failed row does not set the scale: the unfocused row's |delta| (0.01) does
        assert fig.axes[3].images[0].get_clim()[1] == pytest.approx(0.01, abs=1e-4)
    finally:
        plt.close(fig)


def _paper_records():
    rng = np.random.default_rng(2)
    recs = []
    for i in range(12):
        plain = float(rng.uniform(0.5, 2))
        for focuser, l2, success in (
            ("none", plain, True),
            ("uniform", plain * 0.9, i != 0),
            ("cameras", plain * float(rng.uniform(0.3, 0.9)), i not in (1, 2)),
        ):
            recs.append(
                {
                    "image": i,
                    "name": f"img{i}",
                    "focuser": focuser,
                    "attacked": i != 11,
                    "success": success,
                    "l2": l2 if success else None,
                    "linf_255": 3.0 if success else None,
                    "iterations": 10,
                }
            )
    return recs


PAPER_CONFIG = {
    "model": "m",
    "weights": None,
    "data": "digits",
    "norm": "inf",
    "eps": 1.0,
    "eps_step": 1 / 255,
    "beta": 50.0,
    "confidence": 0.9999,
    "max_iter": 100,
    "focusers": ["uniform", "cameras"],
}


def test_paper_report_has_intervals_and_the_paired_figure(tmp_path):
    records = _paper_records()
    result = write_paper_report(tmp_path, records, PAPER_CONFIG)
    _assert_png(tmp_path / "figures" / "paired_l2.png")
    report = (tmp_path / "report.md").read_text()
    assert "](figures/paired_l2.png)" in report
    assert "| L2 reduction vs plain: mean | 95 % CI | median | 95 % CI | pairs |" in report
    rows = {r["focuser"]: r for r in summarize_paper(records, PAPER_CONFIG["focusers"])}
    cam = rows["cameras"]
    groups = {f: {r["image"]: r for r in records if r["focuser"] == f and r["attacked"]} for f in rows}
    reductions = paired_reductions(groups["cameras"], groups["none"])
    assert cam["pairs"] == len(reductions) == 9  # 11 attacked (0..10); cameras failed on images 1 and 2
    assert cam["reduction_ci"] == list(bootstrap_ci(reductions, np.mean))
    assert cam["median_reduction_ci"] == list(bootstrap_ci(reductions, np.median))
    assert rows["none"]["reduction_ci"] is None
    panels = paired_l2_panels(records, result["rows"])
    assert [p["label"] for p in panels] == ["uniform", "cameras"]
    assert len(panels[1]["images"]) == cam["pairs"]
