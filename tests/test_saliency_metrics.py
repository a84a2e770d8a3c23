"""Pointing game, energy pointing game, insertion/deletion and the sanity check on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.ndimage import gaussian_filter
from scipy.stats import spearmanr
from torch import nn

from evaluation import centre_maps, energy_pointing_game, insertion_deletion, pointing_game, sanity_check
from evaluation.insertion_deletion_metric import gaussian_blur
from evaluation.saliency_metrics import _spearman, cascade_layers, cascade_maps
from saliency import GradCAM

# ---------------------------------------------------------------- pointing game


def _peak_map(h: int, w: int, y: int, x: int) -> np.ndarray:
    m = np.zeros((1, h, w), dtype=np.float32)
    m[0, y, x] = 1.0
    return m


@pytest.mark.parametrize(
    ("box", "tolerance", "hit"),
    [
        ([2, 4, 3, 5], 2.0, False),  # nearest box pixel (2,4) at distance exactly 2: strict rule -> miss
        ([2, 4, 3, 5], 2.01, True),
        ([0, 0, 1, 1], 2.8, False),  # pixel (0,0) at sqrt(8) = 2.83
        ([0, 0, 1, 1], 2.9, True),
        ([0, 0, 2, 2], 1.4, False),  # nearest pixel (1,1) at sqrt(2) = 1.414
        ([0, 0, 2, 2], 1.42, True),
        ([1, 1, 4, 4], 0.5, True),  # box contains the point
        ([4, 0, 5, 5], 2.0, False),  # bottom row, distance 2
        ([4, 0, 5, 5], 2.5, True),
    ],
)
def test_pointing_game_distances_on_a_5x5_map(box, tolerance, hit):
    maps = _peak_map(5, 5, 2, 2)
    result = pointing_game(maps, np.array([box]), tolerance=tolerance)
    assert result["hits"].tolist() == [hit]
    assert result["accuracy"] == float(hit)
    assert result["points"].tolist() == [[2, 2]]


def test_pointing_game_first_argmax_on_ties_and_several_boxes():
    maps = np.zeros((2, 5, 5), dtype=np.float32)
    maps[0, 0, 3] = maps[0, 4, 0] = 1.0  # tie: flat index 3 comes first -> point (0,3)
    maps[1, 4, 4] = 1.0
    boxes = [np.array([[3, 0, 5, 1]]), np.array([[0, 0, 1, 1], [3, 3, 5, 5]])]
    result = pointing_game(maps, boxes, tolerance=1)
    assert result["points"].tolist() == [[0, 3], [4, 4]]
    assert result["hits"].tolist() == [False, True]
    assert result["accuracy"] == 0.5


def test_pointing_game_per_class_mean():
    maps = np.concatenate([_peak_map(5, 5, 0, 0)] * 3)
    boxes = np.array([[0, 0, 1, 1], [4, 4, 5, 5], [0, 0, 2, 2]])
    result = pointing_game(maps, boxes, tolerance=1, classes=[7, 7, 3])
    assert result["class_accuracy"] == {3: 1.0, 7: 0.5}
    assert result["mean_class_accuracy"] == 0.75
    assert result["accuracy"] == pytest.approx(2 / 3)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(2, 9),
    st.integers(2, 9),
    st.floats(0, 8),
    st.data(),
)
def test_pointing_game_matches_brute_force(h, w, tolerance, data):
    values = data.draw(st.lists(st.integers(0, 3), min_size=h * w, max_size=h * w))
    maps = np.array(values, dtype=np.float32).reshape(1, h, w)
    y0 = data.draw(st.integers(0, h - 1))
    x0 = data.draw(st.integers(0, w - 1))
    y1 = data.draw(st.integers(y0 + 1, h))
    x1 = data.draw(st.integers(x0 + 1, w))
    py, px = divmod(int(np.argmax(maps)), w)
    expected = any((y - py) ** 2 + (x - px) ** 2 < tolerance**2 for y in range(y0, y1) for x in range(x0, x1))
    assert pointing_game(maps, np.array([[y0, x0, y1, x1]]), tolerance)["hits"][0] == expected


@pytest.mark.parametrize(("h", "w"), [(7, 9), (4, 4), (64, 64), (6, 9), (375, 500)])
def test_centre_baseline_points_at_torchray_centre(h, w):
    """TorchRay's centre point is (w/2, h/2): pixel (h//2, w//2), the unique maximum of the map."""
    maps = centre_maps(2, h, w)
    assert maps.shape == (2, h, w) and maps.min() >= 0 and maps.max() == 1
    assert (maps[0] == 1).sum() == 1
    points = pointing_game(maps, np.array([[0, 0, 1, 1]] * 2), tolerance=0.5)["points"]
    assert points.tolist() == [[h // 2, w // 2]] * 2


def test_pointing_game_clips_boxes_to_the_map():
    """A box wholly outside the map is empty there (TorchRay's mask): a miss, however close."""
    maps = _peak_map(10, 10, 0, 5)
    above = np.array([[-3, 5, 0, 6]])  # rows -3..-1, right above the point
    assert not pointing_game(maps, above, tolerance=2)["hits"][0]
    right = [np.array([[0, 10, 1, 12], [9, 0, 10, 1]])]  # columns 10..11 (distance 5) are outside
    assert not pointing_game(maps, right, tolerance=6)["hits"][0]
    partly = np.array([[-3, 7, 1, 12]])  # clipped to rows 0..0, columns 7..9: nearest pixel (0,7)
    assert not pointing_game(maps, partly, tolerance=2)["hits"][0]
    assert pointing_game(maps, partly, tolerance=2.01)["hits"][0]


def test_pointing_game_bad_input():
    with pytest.raises(ValueError, match=r"\(N,H,W\)"):
        pointing_game(np.zeros((5, 5)), np.array([[0, 0, 1, 1]]))
    with pytest.raises(ValueError, match="boxes for 1 images"):
        pointing_game(np.zeros((1, 5, 5)), np.array([[0, 0, 1, 1]] * 2))
    with pytest.raises(ValueError, match="empty box"):
        pointing_game(np.zeros((1, 5, 5)), np.array([[2, 0, 2, 1]]))
    with pytest.raises(ValueError, match="tolerance"):
        pointing_game(np.zeros((1, 5, 5)), np.array([[0, 0, 1, 1]]), tolerance=-1)
    with pytest.raises(ValueError, match="classes: expected 1"):
        pointing_game(np.zeros((1, 5, 5)), np.array([[0, 0, 1, 1]]), classes=[1, 2])


# ---------------------------------------------------------------- energy pointing game


def test_energy_pointing_game_by_hand():
    maps = np.arange(16, dtype=np.float32).reshape(1, 4, 4)  # total 120
    result = energy_pointing_game(maps, np.array([[0, 0, 2, 2]]))  # 0+1+4+5 = 10
    assert result["fractions"][0] == pytest.approx(10 / 120)
    # overlapping boxes count their union once: rows 0-1 all columns (0..7 = 28) plus (2,0) = 8
    union = energy_pointing_game(maps, [np.array([[0, 0, 2, 4], [0, 0, 3, 1]])])
    assert union["fractions"][0] == pytest.approx(36 / 120)
    assert energy_pointing_game(maps, np.array([[0, 0, 4, 4]]))["mean"] == pytest.approx(1.0)


def test_energy_pointing_game_zero_map_counts_zero_and_negative():
    maps = np.zeros((2, 3, 3), dtype=np.float32)
    maps[1, 0, 0] = 2.0
    result = energy_pointing_game(maps, np.array([[0, 0, 1, 1]] * 2))
    assert result["fractions"].tolist() == [0.0, 1.0] and result["mean"] == 0.5
    assert result["blank"].tolist() == [True, False]
    with pytest.raises(ValueError, match="non-negative"):
        energy_pointing_game(-np.ones((1, 3, 3)), np.array([[0, 0, 1, 1]]))


# ---------------------------------------------------------------- insertion / deletion


class KeptFraction(nn.Module):
    """P(class 0) = share of the pixels of ``region`` that still equal the reference image (all channels)."""

    def __init__(self, reference: torch.Tensor, region: torch.Tensor):
        super().__init__()
        self.register_buffer("reference", reference)
        self.register_buffer("region", region.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        same = ((x - self.reference).abs() < 1e-6).all(dim=1).float()
        f = (same * self.region).sum((1, 2)) / self.region.sum()
        return torch.stack([torch.log(f + 1e-12), torch.log(1 - f + 1e-12)], dim=1)


@pytest.fixture
def reference_image() -> torch.Tensor:
    return 0.1 + 0.8 * torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(0))


def test_insertion_deletion_auc_by_hand(reference_image):
    model = KeptFraction(reference_image, torch.ones(4, 4))
    maps = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(1))
    x = reference_image.repeat(2, 1, 1, 1)
    # 16 pixels, 3 steps -> 6 pixels a step, kept counts 0, 6, 12, 16
    result = insertion_deletion(model, x, maps, steps=3)
    np.testing.assert_allclose(result["deletion_curve"], [[1, 10 / 16, 4 / 16, 0]] * 2, atol=1e-6)
    np.testing.assert_allclose(result["insertion_curve"], [[0, 6 / 16, 12 / 16, 1]] * 2, atol=1e-6)
    np.testing.assert_allclose(result["deletion"], [(1 + 10 / 16 + 4 / 16 - 0.5) / 3] * 2, atol=1e-6)
    np.testing.assert_allclose(result["insertion"], [(6 / 16 + 12 / 16 + 1 - 0.5) / 3] * 2, atol=1e-6)
    assert result["targets"].tolist() == [0, 0]


def test_insertion_deletion_follows_the_map_order(reference_image):
    region = torch.zeros(4, 4)
    region[0] = 1  # the top row decides the class
    model = KeptFraction(reference_image, region)
    good = torch.zeros(1, 4, 4)
    good[0, 0] = 1.0
    bad = 1.0 - good
    x = reference_image
    good_result = insertion_deletion(model, x, good, steps=4)
    bad_result = insertion_deletion(model, x, bad, steps=4)
    # good map deletes the top row first: curve 1,0,0,0,0 -> AUC 0.125; bad map last: 1,1,1,1,0 -> 0.875
    assert good_result["deletion"][0] == pytest.approx(0.125, abs=1e-6)
    assert bad_result["deletion"][0] == pytest.approx(0.875, abs=1e-6)
    assert good_result["insertion"][0] == pytest.approx(0.875, abs=1e-6)
    assert bad_result["insertion"][0] == pytest.approx(0.125, abs=1e-6)


def _rise_scores(model, x, maps, steps):
    """RISE's CausalMetric loop, one image at a time: ``step`` pixels per iteration, ``n`` iterations."""
    hw = x.shape[2] * x.shape[3]
    step = math.ceil(hw / steps)
    n = (hw + step - 1) // step
    out = {}
    with torch.no_grad():
        target = model(x).argmax(1)
        for mode, start, finish in (
            ("deletion", x, torch.zeros_like(x)),
            ("insertion", gaussian_blur(x), x),
        ):
            curves = []
            for i in range(len(x)):
                order = np.argsort(-maps[i].ravel(), kind="stable")
                current = start[i].clone().reshape(x.shape[1], -1)
                scores = []
                for k in range(n + 1):
                    p = torch.softmax(model(current.reshape(1, *x.shape[1:])), 1)[0, target[i]]
                    scores.append(p.item())
                    pixels = torch.from_numpy(order[step * k : step * (k + 1)])
                    current[:, pixels] = finish[i].reshape(x.shape[1], -1)[:, pixels]
                curves.append(scores)
            s = np.array(curves)
            out[mode] = (s.sum(1) - s[:, 0] / 2 - s[:, -1] / 2) / n
            out[f"{mode}_curve"] = s
    return out


@pytest.mark.parametrize("steps", [7, 6, 36])
def test_insertion_deletion_matches_a_rise_loop(steps):
    """36 pixels in 7 requested steps: 6 a step, so 6 steps (RISE's rule), not 7 with a repeated end."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 36, 4))
    x = torch.rand(3, 3, 6, 6)
    maps = np.random.default_rng(1).random((3, 6, 6)).astype(np.float32)
    maps[0, :2] = 1.0  # ties
    ours = insertion_deletion(model, x, maps, steps=steps, batch_size=5)
    rise = _rise_scores(model, x, maps, steps)
    for key in ("deletion", "insertion", "deletion_curve", "insertion_curve"):
        np.testing.assert_allclose(ours[key], rise[key], atol=1e-6)


def test_insertion_deletion_batch_size_invariant(small_cnn, images):
    images = images[:2]
    maps = torch.rand(2, 32, 32, generator=torch.Generator().manual_seed(2))
    a = insertion_deletion(small_cnn, images, maps, steps=4, batch_size=3)
    b = insertion_deletion(small_cnn, images, maps, steps=4, batch_size=64)
    np.testing.assert_allclose(a["deletion"], b["deletion"], atol=1e-5)
    np.testing.assert_allclose(a["insertion"], b["insertion"], atol=1e-5)
    probs = torch.softmax(small_cnn(images), 1).max(1).values.detach().numpy()
    np.testing.assert_allclose(a["deletion_curve"][:, 0], probs, atol=1e-5)  # step 0 = clean image
    assert ((a["deletion"] >= 0) & (a["deletion"] <= 1)).all()


def test_gaussian_blur_matches_scipy():
    x = torch.rand(2, 3, 20, 17, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    expected = gaussian_filter(x.numpy(), sigma=(0, 0, 5, 5), truncate=1.0, mode="constant")
    np.testing.assert_allclose(gaussian_blur(x).numpy(), expected, atol=1e-12)


def test_insertion_deletion_bad_input(small_cnn, images):
    with pytest.raises(ValueError, match="maps must have shape"):
        insertion_deletion(small_cnn, images, torch.rand(5, 16, 16))
    with pytest.raises(ValueError, match="steps"):
        insertion_deletion(small_cnn, images, torch.rand(5, 32, 32), steps=0)


# ---------------------------------------------------------------- sanity check


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 4, size=(3, 30)).astype(float)
    b = a + rng.integers(0, 3, size=(3, 30))
    expected = [spearmanr(u, v).statistic for u, v in zip(a, b)]
    np.testing.assert_allclose(_spearman(a, b), expected, atol=1e-12)
    assert np.isnan(_spearman(np.ones((1, 5)), np.arange(5.0)[None]))[0]


class FirstConvEnergy:
    """A 'saliency method' that only depends on the first conv layer: sum of its output channels."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __call__(self, x: torch.Tensor, targets=None) -> torch.Tensor:
        with torch.no_grad():
            return self.model.features[0](x).abs().sum(1)


def test_sanity_check_cascade_order(small_cnn, images):
    rows = sanity_check(FirstConvEnergy, small_cnn, images)
    assert [r["layer"] for r in rows] == ["none", "fc", "features.5", "features.2", "features.0"]
    for row in rows[:4]:  # layers above the first conv do not change its map
        np.testing.assert_allclose(row["spearman"], 1.0, atol=1e-12)
    assert rows[4]["mean_spearman"] < 0.99


class ConstantForFirstImage(FirstConvEnergy):
    """FirstConvEnergy, but the first image's map is all zero: its Spearman is undefined in every row."""

    def __call__(self, x: torch.Tensor, targets=None) -> torch.Tensor:
        maps = super().__call__(x, targets)
        maps[0] = 0
        return maps


def test_sanity_check_counts_images_with_a_defined_correlation(small_cnn, images):
    rows = sanity_check(ConstantForFirstImage, small_cnn, images, layers=["fc", "features.0"])
    assert [r["n_defined"] for r in rows] == [len(images) - 1] * 3
    for row in rows:
        assert np.isnan(row["spearman"][0])
        assert row["mean_spearman"] == pytest.approx(row["spearman"][1:].mean())
    assert rows[0]["mean_spearman"] == pytest.approx(1.0)


def test_sanity_check_gradcam_does_not_touch_the_model(small_cnn, images):
    before = {k: v.clone() for k, v in small_cnn.state_dict().items()}
    rows = sanity_check(lambda m: GradCAM(m, "features.5"), small_cnn, images, seed=0)
    assert rows[0]["mean_spearman"] == pytest.approx(1.0)
    assert rows[0]["spearman"].shape == (5,)
    randomised = [r["mean_spearman"] for r in rows[1:] if r["n_defined"]]
    assert randomised and max(randomised) < 0.9
    for k, v in small_cnn.state_dict().items():
        assert torch.equal(v, before[k])
    again = sanity_check(lambda m: GradCAM(m, "features.5"), small_cnn, images, seed=0)
    np.testing.assert_allclose(
        np.nan_to_num([r["mean_spearman"] for r in rows]), np.nan_to_num([r["mean_spearman"] for r in again])
    )


def test_sanity_check_explicit_layers_and_bad_name(small_cnn, images):
    rows = sanity_check(FirstConvEnergy, small_cnn, images, layers=["features.0"])
    assert [r["layer"] for r in rows] == ["none", "features.0"]
    with pytest.raises(ValueError, match="unknown layer"):
        sanity_check(FirstConvEnergy, small_cnn, images, layers=["features.9"])


class NoisyFirstConvEnergy(FirstConvEnergy):
    """FirstConvEnergy plus noise from torch's global random stream, as a stochastic method draws it;
    records the first conv's weights it saw."""

    weights: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor, targets=None) -> torch.Tensor:
        self.weights.append(self.model.features[0].weight.detach().clone())
        maps = super().__call__(x, targets)
        return maps + 1e-3 * torch.rand(maps.shape)


def test_sanity_check_resumes_from_completed_rows(small_cnn, images, monkeypatch):
    monkeypatch.setattr(NoisyFirstConvEnergy, "weights", [])
    full = sanity_check(NoisyFirstConvEnergy, small_cnn, images, seed=3)
    full_weights = NoisyFirstConvEnergy.weights[-1]
    saved = []
    monkeypatch.setattr(NoisyFirstConvEnergy, "weights", [])
    resumed = sanity_check(
        NoisyFirstConvEnergy, small_cnn, images, seed=3, completed=full[:3], on_step=saved.append
    )
    assert [r["layer"] for r in saved] == [r["layer"] for r in full[3:]]
    assert [r["layer"] for r in resumed] == [r["layer"] for r in full]
    for a, b in zip(resumed[:3], full[:3]):
        assert a["layer"] == b["layer"] and a["n_defined"] == b["n_defined"]
        np.testing.assert_array_equal(a["spearman"], b["spearman"])
    # The randomised weights of the last step do not depend on the noise the skipped steps drew.
    assert not torch.equal(full_weights, small_cnn.features[0].weight)
    assert torch.equal(NoisyFirstConvEnergy.weights[-1], full_weights)
    np.testing.assert_allclose(resumed[-1]["spearman"], full[-1]["spearman"], atol=0.05)
    with pytest.raises(ValueError, match="completed: row 1 is for layer 'features.0'"):
        sanity_check(FirstConvEnergy, small_cnn, images, completed=[full[0], full[4]])
    with pytest.raises(ValueError, match="completed: 6 rows"):
        sanity_check(FirstConvEnergy, small_cnn, images, completed=[*full, full[0]])


def test_cascade_layers_is_the_default_cascade(small_cnn, images):
    assert cascade_layers(small_cnn) == ["fc", "features.5", "features.2", "features.0"]
    rows = sanity_check(FirstConvEnergy, small_cnn, images)
    assert [r["layer"] for r in rows[1:]] == cascade_layers(small_cnn)


def test_cascade_maps_are_the_maps_sanity_check_correlates(small_cnn, images):
    """Maps at steps 2 and 4 only: their Spearman with the trained maps is sanity_check's row 2 and 4,
    and the model is untouched."""
    before = {k: v.clone() for k, v in small_cnn.state_dict().items()}
    factory = lambda m: GradCAM(m, "features.5")  # noqa: E731
    rows = sanity_check(factory, small_cnn, images, seed=2)
    result = cascade_maps(factory, small_cnn, images, steps=[2, 4], seed=2)
    assert result["layers"] == ["features.5", "features.0"]
    assert result["maps"].shape == (2, 5, 32, 32) and result["trained"].shape == (5, 32, 32)
    trained = result["trained"].reshape(5, -1)
    for maps, step in zip(result["maps"], (2, 4)):
        np.testing.assert_array_equal(_spearman(trained, maps.reshape(5, -1)), rows[step]["spearman"])
    for k, v in small_cnn.state_dict().items():
        assert torch.equal(v, before[k])
    for bad in ([], [0], [3, 2], [5]):
        with pytest.raises(ValueError, match="steps must be"):
            cascade_maps(factory, small_cnn, images, steps=bad)
