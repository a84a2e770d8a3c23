"""GPNN-CAM: the closed-form ridge against sklearn, the output contract on the small CNN, determinism, the
single-layer case, ART preprocessing, bad input, and a known-answer test (a small red object on clutter)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import LAYERS, fast_cam, fast_gpnn
from sklearn.linear_model import Ridge
from torch import nn

from saliency import GPNNCAM
from saliency.base import normalize_maps
from saliency.gpnn_cam import gpnn_cam_preset, ridge_regression


@pytest.mark.parametrize("n, c", [(12, 40), (60, 8), (20, 20)])
@pytest.mark.parametrize("penalty", [1e-4, 0.01, 3.0])
def test_ridge_matches_sklearn(n: int, c: int, penalty: float) -> None:
    rng = np.random.default_rng(n * c)
    x = rng.normal(size=(n, c)) * rng.uniform(0.1, 3, size=c) + rng.normal(size=c)
    y = x @ rng.normal(size=c) + 0.1 * rng.normal(size=n) + 2.0
    w, b = ridge_regression(torch.from_numpy(x).float(), torch.from_numpy(y).float(), penalty)
    ref = Ridge(alpha=penalty, fit_intercept=True, solver="svd").fit(
        x.astype(np.float32), y.astype(np.float32)
    )
    np.testing.assert_allclose(w.numpy(), ref.coef_, rtol=1e-4, atol=1e-4)
    assert b == pytest.approx(ref.intercept_, rel=1e-4, abs=1e-4)


def _reference_fused(var_acts, scores, orig_acts, ridge_top, ridge_lower) -> np.ndarray:
    """Phase 1 + 2 and the fusion written directly with numpy and sklearn Ridge (torch only to resize)."""

    def gate(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        g = torch.from_numpy(1 / (1 + np.exp(-(m - 0.5))))[:, None]
        return torch.nn.functional.interpolate(g, size=size, mode="bilinear", align_corners=False)[
            :, 0
        ].numpy()

    grid = max((a.shape[-2:] for a in orig_acts), key=lambda s: s[0] * s[1])
    fused, above = np.ones((1, *grid)), []
    for level, (acts, orig) in enumerate(zip(var_acts, orig_acts)):
        acts, orig = acts.double().numpy(), orig.double().numpy()
        mean = acts.mean(axis=(0, 2, 3))[None, :, None, None]
        std = acts.std(axis=(0, 2, 3))[None, :, None, None]
        std[std == 0] = 1
        feats = (acts - mean) / std
        if level == 0:
            coef = Ridge(alpha=ridge_top).fit(feats.sum(axis=(2, 3)), scores.double().numpy()).coef_
        else:
            size = acts.shape[-2:]
            target = np.prod([gate(m, size) for m in above], axis=0)
            samples = feats.transpose(0, 2, 3, 1).reshape(-1, feats.shape[1])
            coef = Ridge(alpha=ridge_lower).fit(samples, target.reshape(-1)).coef_
        var_map = np.maximum(np.einsum("bchw,c->bhw", feats, coef), 0)
        above.append(var_map / var_map.max())
        orig_map = np.maximum(np.einsum("bchw,c->bhw", (orig - mean) / std, coef), 0)
        fused = fused * gate(orig_map / orig_map.max(), grid)
    return fused[0]


def test_ridge_of_a_target_constant_up_to_round_off_is_zero() -> None:
    """A float32 target that varies only by round-off (a resized constant gate) explains nothing: w = 0,
    the intercept is its mean. A target that varies by more is fitted as usual."""
    features = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    level = torch.full((50,), 0.3775407)
    rounding = level + torch.randint(-2, 3, (50,), generator=torch.Generator().manual_seed(1)) * 3e-8
    assert rounding.unique().numel() > 1
    w, intercept = ridge_regression(features, rounding, 1e-4)
    assert (w == 0).all() and intercept == pytest.approx(0.3775407, rel=1e-6)
    w, _ = ridge_regression(features, level + 1e-3 * features[:, 0], 1e-4)
    assert w[0] == pytest.approx(1e-3, rel=1e-2)


def test_a_channel_constant_up_to_round_off_is_not_scaled_up(small_cnn: nn.Module) -> None:
    """A channel at 0.5 up to 1e-6 noise in the variations (std ~1e-6) must not be divided by that std:
    where the original differs there by 0.1, it would outweigh every other channel by orders of
    magnitude."""
    g = torch.Generator().manual_seed(1)
    acts = [torch.rand(6, 8, 4, 4, generator=g)]
    scores = acts[0][:, 1].sum((1, 2)) + 0.1 * torch.rand(6, generator=g)
    original = [acts[0][2:3].clone()]
    cam = fast_cam(small_cnn)
    reference = cam.fit_and_map(acts, scores, original)
    acts[0][:, 3] = 0.5 + 1e-6 * torch.randn(6, 4, 4, generator=g)
    original[0][0, 3] = 0.5
    original[0][0, 3, 0, 0] = 0.6
    torch.testing.assert_close(cam.fit_and_map(acts, scores, original), reference, atol=0.05, rtol=0)


def test_fit_and_map_matches_direct_computation(small_cnn: nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    shapes = [(6, 4, 4), (5, 8, 8), (3, 16, 16)]  # top first: (C, h, w); B=7 < C_top for Phase 1's dual
    var_acts = [torch.rand(7, *s, generator=g).relu_() for s in shapes]
    var_acts[0][:, 0] += torch.arange(7.0)[:, None, None]  # a channel that explains the score
    orig_acts = [a[3:4] + 0.1 * torch.rand(1, *a.shape[1:], generator=g) for a in var_acts]
    scores = var_acts[0][:, 0].sum((1, 2)) * 0.3 + torch.rand(7, generator=g)
    cam = GPNNCAM(small_cnn, LAYERS, n_variations=7, batch_variations=7, ridge_top=0.01, ridge_lower=1e-4)
    fused = cam.fit_and_map(var_acts, scores, orig_acts)
    assert fused.shape == (16, 16)
    expected = _reference_fused(var_acts, scores, orig_acts, 0.01, 1e-4)
    assert np.isfinite(expected).all() and expected.std() > 1e-3  # every layer's map is non-degenerate
    np.testing.assert_allclose(fused.numpy(), expected, rtol=1e-4, atol=1e-5)


def test_preset() -> None:
    gpnn = gpnn_cam_preset()
    assert (gpnn.noise_sigma, gpnn.init, gpnn.alpha, gpnn.patch_size, gpnn.iters, gpnn.fold) == (
        3.0,
        "zeros",
        0.005,
        7,
        10,
        "distance",
    )


def test_output_contract_and_determinism(small_cnn: nn.Module, images: torch.Tensor) -> None:
    x = images[:2]
    cam = fast_cam(small_cnn)
    maps = cam(x)
    assert maps.shape == (2, 32, 32) and maps.dtype == torch.float32 and maps.device == x.device
    assert maps.min() >= 0 and maps.max() <= 1
    assert torch.isclose(maps.flatten(1).amax(1), torch.ones(2)).all()  # min-max normalised, not constant
    assert torch.equal(maps, fast_cam(small_cnn)(x))
    assert not torch.equal(maps, fast_cam(small_cnn, seed=1)(x))
    # a given target equal to the predicted class gives the predicted-class map
    predicted = small_cnn(x).argmax(1)
    assert torch.equal(cam(x, targets=predicted), maps)
    # each image's map depends only on that image (and its own seeds)
    # (batch-size dependent conv rounding only)
    torch.testing.assert_close(cam(x[:1]), maps[:1], rtol=1e-4, atol=1e-4)


def test_batch_maps_make_the_map_and_nest_across_variation_counts(
    small_cnn: nn.Module, images: torch.Tensor
) -> None:
    x = images[:2]
    cam = fast_cam(small_cnn, n_variations=6, batch_variations=2)
    per_batch = cam.batch_maps(x)
    assert per_batch.shape == (2, 3, 32, 32)
    # the fused maps of 2 layers lie in [sigmoid(-0.5)^2, sigmoid(0.5)^2]
    assert per_batch.min() >= torch.sigmoid(torch.tensor(-0.5)) ** 2 - 1e-6
    assert per_batch.max() <= torch.sigmoid(torch.tensor(0.5)) ** 2 + 1e-6
    torch.testing.assert_close(normalize_maps(per_batch.mean(1)), cam(x), rtol=0, atol=1e-6)
    # a 4-variation run's batches are the first two of the 6-variation run's
    shorter = fast_cam(small_cnn, n_variations=4, batch_variations=2).batch_maps(x)
    torch.testing.assert_close(shorter, per_batch[:, :2], rtol=0, atol=1e-6)
    assert not torch.allclose(per_batch[:, 0], per_batch[:, 1])  # each batch has its own seed
    assert cam.batch_maps(x[:0]).shape == (0, 3, 32, 32)


def test_single_layer(small_cnn: nn.Module, images: torch.Tensor) -> None:
    maps = fast_cam(small_cnn, layers=["features.5"])(images[:1])
    assert maps.shape == (1, 32, 32) and 0 <= maps.min() and maps.max() <= 1
    assert maps.std() > 0


def test_art_classifier_with_preprocessing(small_cnn: nn.Module, images: torch.Tensor) -> None:
    from art.estimators.classification import PyTorchClassifier

    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    classifier = PyTorchClassifier(
        small_cnn,
        loss=nn.CrossEntropyLoss(),
        input_shape=(3, 32, 32),
        nb_classes=10,
        preprocessing=(mean, std),
    )

    class Normalised(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = small_cnn
            self.register_buffer("mean", torch.tensor(mean)[:, None, None])
            self.register_buffer("std", torch.tensor(std)[:, None, None])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net((x - self.mean) / self.std)

    x = images[:1]
    reference = fast_cam(Normalised(), layers=["net.features.5", "net.features.2"])(x)
    torch.testing.assert_close(fast_cam(classifier)(x), reference, rtol=1e-4, atol=1e-4)


def test_bad_input(small_cnn: nn.Module, images: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="target_layers"):
        GPNNCAM(small_cnn, [])
    with pytest.raises(ValueError, match="target_layers"):
        GPNNCAM(small_cnn, "features.5")
    with pytest.raises(ValueError, match="unknown layer"):
        GPNNCAM(small_cnn, ["features.50"])
    with pytest.raises(ValueError, match="n_variations"):
        GPNNCAM(small_cnn, LAYERS, n_variations=1, batch_variations=2)
    with pytest.raises(ValueError, match="batch_variations"):
        GPNNCAM(small_cnn, LAYERS, n_variations=4, batch_variations=1)
    with pytest.raises(ValueError, match="batch_variations"):
        GPNNCAM(small_cnn, LAYERS, n_variations=4, batch_variations=5)
    with pytest.raises(ValueError, match="ridge"):
        GPNNCAM(small_cnn, LAYERS, ridge_top=0)
    with pytest.raises(TypeError, match="gpnn"):
        GPNNCAM(small_cnn, LAYERS, gpnn="fast")
    cam = fast_cam(small_cnn)
    with pytest.raises(ValueError, match="coarsest"):
        cam(images[:1, :, :10, :10])
    with pytest.raises(ValueError, match=r"\[0,1\]"):
        cam(images[:1] * 3)
    with pytest.raises(ValueError, match="targets"):
        cam(images[:2], targets=[1, 2, 3])


def test_layers_that_give_no_feature_maps_are_named(small_cnn: nn.Module, images: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"target layer 'fc' must output feature maps \(N,K,h,w\)"):
        fast_cam(small_cnn, layers=["fc"])(images[:1])
    unused = nn.Conv2d(3, 3, 1)
    small_cnn.add_module("unused", unused)
    try:
        with pytest.raises(ValueError, match="not called in the model's forward pass"):
            fast_cam(small_cnn, layers=["unused"])(images[:1])
    finally:
        del small_cnn.unused


def test_a_model_blind_to_the_image_gives_a_blank_map() -> None:
    """With the last layer zeroed the logits do not depend on the image, every ridge weight is 0 and the
    fused map is constant up to the rounding of its bilinear resizings (three grids, a 24x32 image): the
    result must be blank, not that rounding noise stretched to [0,1]."""
    torch.manual_seed(0)
    blind = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 5),
    ).eval()
    nn.init.zeros_(blind[-1].weight)
    x = torch.rand(1, 3, 24, 32, generator=torch.Generator().manual_seed(0))
    assert (fast_cam(blind, layers=["7", "3", "0"])(x) == 0).all()


def test_batches_are_nearly_equal(small_cnn: nn.Module) -> None:
    assert fast_cam(small_cnn, n_variations=11, batch_variations=5).batch_sizes == [6, 5]
    assert fast_cam(small_cnn, n_variations=100, batch_variations=10).batch_sizes == [10] * 10


# --- known answer: a red 5x5 object on a cluttered, never-red background ---------------------------------


class RedDetector(nn.Module):
    """Hand-set CNN: class 0's logit grows with the amount of pure red; the other channels see clutter.

    features.1 (32x32): ReLU(R - G - B - 0.3) and 3 random colour channels; features.4 (16x16, after a max
    pool): a 3x3 mean of the red channel plus random channels; the head averages and mixes them.
    """

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 3)
        with torch.no_grad():
            conv1, conv2 = self.features[0], self.features[3]
            conv1.weight.copy_(torch.rand(4, 3, 1, 1, generator=g) - 0.3)
            conv1.weight[0, :, 0, 0] = torch.tensor([1.0, -1.0, -1.0])
            conv1.bias.copy_(torch.rand(4, generator=g) * 0.1)
            conv1.bias[0] = -0.3
            conv2.weight.copy_((torch.rand(6, 4, 3, 3, generator=g) - 0.5) * 0.3)
            conv2.weight[0] = 0.0
            conv2.weight[0, 0] = 1 / 9
            conv2.weight[1:, 0] = 0.0  # the clutter channels do not see the red detector
            conv2.bias.zero_()
            self.fc.weight.copy_(torch.rand(3, 6, generator=g) - 0.5)
            self.fc.weight[0] = 0.0
            self.fc.weight[0, 0] = 20.0
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def cluttered_scenes(n: int, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Random 4x4 colour blocks (never red: R <= max(G, B)) plus noise, and a 5x5 red square per image."""
    rng = np.random.default_rng(seed)
    images, corners = [], []
    for _ in range(n):
        blocks = rng.uniform(0, 1, size=(3, size // 4, size // 4))
        blocks[0] = np.minimum(blocks[0], np.maximum(blocks[1], blocks[2]))
        image = np.kron(blocks, np.ones((4, 4))) + rng.normal(0, 0.03, size=(3, size, size))
        image[0] = np.minimum(image[0], np.maximum(image[1], image[2]))
        top, left = rng.integers(3, size - 8, size=2)
        image[:, top : top + 5, left : left + 5] = np.array([1.0, 0.0, 0.0])[:, None, None]
        images.append(np.clip(image, 0, 1))
        corners.append((int(top), int(left)))
    return torch.tensor(np.stack(images), dtype=torch.float32), corners


def _hit_rate(maps: torch.Tensor, corners: list[tuple[int, int]]) -> float:
    """Fraction of maps whose argmax lies on the 5x5 object (+- 1 px)."""
    hits = []
    for m, (top, left) in zip(maps, corners):
        row, col = divmod(int(m.argmax()), m.shape[1])
        hits.append(top - 1 <= row <= top + 5 and left - 1 <= col <= left + 5)
    return float(np.mean(hits))


def test_known_answer_small_object_on_clutter() -> None:
    model = RedDetector().eval()
    x, corners = cluttered_scenes(8)
    assert (model(x).argmax(1) == 0).all()
    cam = GPNNCAM(model, ["features.4", "features.1"], n_variations=10, batch_variations=10, gpnn=fast_gpnn())
    # measured: 8/8 here (30/30 on 30 scenes); the object covers 25/1024 = 2.4% of the image
    assert _hit_rate(cam(x, targets=0), corners) >= 0.75
    # the clutter class's map points elsewhere (measured 0/30), so the test can tell a wrong map
    assert _hit_rate(cam(x, targets=1), corners) <= 0.25
