"""FocusedCarliniL2: same success and L2 as ART's CarliniL2Method with a full mask; zero perturbation
outside a top-k mask; targeted and untargeted; resnet18."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from art.attacks.evasion import CarliniL2Method
from art.estimators.classification import PyTorchClassifier
from conftest import art_classifier, calibrate_head
from torch import nn

from focused_attacks import FocusedCarliniL2

CW_SETTINGS = dict(binary_search_steps=2, max_iter=4, batch_size=6, verbose=False)


@pytest.fixture
def clf(small_cnn):
    return art_classifier(calibrate_head(small_cnn))


@pytest.fixture
def x() -> np.ndarray:
    return np.random.default_rng(0).random((6, 3, 32, 32), dtype=np.float32)


def _success(clf, x, x_adv, y, targeted):
    pred = clf.predict(x_adv).argmax(1)
    return pred == y if targeted else pred != clf.predict(x).argmax(1)


@pytest.mark.parametrize("targeted", [False, True])
def test_full_mask_matches_art(clf, x, targeted):
    y = np.random.default_rng(1).integers(0, 10, len(x)) if targeted else None
    reference = CarliniL2Method(clf, targeted=targeted, **CW_SETTINGS).generate(x, y)
    attack = FocusedCarliniL2(clf, targeted=targeted, **CW_SETTINGS)
    got = attack.generate(x, y, mask=np.ones((32, 32), np.float32))
    ok_ref, ok_got = _success(clf, x, reference, y, targeted), _success(clf, x, got, y, targeted)
    assert ok_got.mean() == ok_ref.mean() and ok_got.any()
    l2_ref = np.linalg.norm((reference - x).reshape(len(x), -1), axis=1)[ok_ref].mean()
    l2_got = np.linalg.norm((got - x).reshape(len(x), -1), axis=1)[ok_got].mean()
    assert abs(l2_got - l2_ref) <= 0.1 * l2_ref
    # no mask at all is ART's attack itself
    plain = FocusedCarliniL2(clf, targeted=targeted, **CW_SETTINGS).generate(x, y)
    np.testing.assert_allclose(plain, reference, atol=1e-5)


def test_topk_mask_keeps_outside_pixels(clf, x):
    maps = np.random.default_rng(2).random((len(x), 32, 32), dtype=np.float32)
    attack = FocusedCarliniL2(clf, area=0.2, **CW_SETTINGS)
    before = x.copy()
    x_adv = attack.generate(x, maps=maps)
    np.testing.assert_array_equal(x, before)
    outside = np.broadcast_to(attack.last_mask_, x.shape) == 0
    np.testing.assert_array_equal(x_adv[outside], x[outside])
    assert np.abs(x_adv - x).max() > 0 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert x_adv.dtype == x.dtype and x_adv.shape == x.shape


def test_soft_mask_weights_the_change(clf, x):
    maps = np.zeros((len(x), 32, 32), np.float32)
    maps[:, 4:28, 4:28] = 0.5
    x_adv = FocusedCarliniL2(clf, focus="soft", **CW_SETTINGS).generate(x, maps=maps)
    delta = np.abs(x_adv - x)
    assert (delta[:, :, :4] == 0).all()
    # x_adv = x + 0.5 (g - x) with g in [0,1]: at most half-way to the clip bound
    assert (delta <= 0.5 * np.maximum(x, 1 - x) + 1e-6).all()


def test_resnet18_masked_cw():
    torch.manual_seed(0)
    clf = art_classifier(torchvision.models.resnet18(weights=None, num_classes=10).eval())
    x = np.random.default_rng(3).random((2, 3, 32, 32), dtype=np.float32)
    mask = np.zeros((2, 1, 32, 32), np.float32)
    mask[:, :, 10:20, 10:20] = 1
    x_adv = FocusedCarliniL2(clf, binary_search_steps=1, max_iter=2, verbose=False).generate(x, mask=mask)
    outside = np.broadcast_to(mask, x.shape) == 0
    np.testing.assert_array_equal(x_adv[outside], x[outside])


def test_targeted_without_y_raises(clf, x):
    with pytest.raises(ValueError, match="Target labels `y` need to be provided for a targeted attack."):
        FocusedCarliniL2(clf, targeted=True, verbose=False).generate(x)


def test_per_channel_clip_values():
    """Per-channel clip_values arrays (as in ART): equal to ART unmasked, inside the box when masked."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 4))
    low = np.array([0.0, 0.1, 0.2], np.float32).reshape(3, 1, 1)
    high = np.array([1.0, 0.6, 0.9], np.float32).reshape(3, 1, 1)
    clf = PyTorchClassifier(
        model, nn.CrossEntropyLoss(), (3, 8, 8), 4, clip_values=(low, high), device_type="cpu"
    )
    x = (low + (high - low) * np.random.default_rng(4).random((4, 3, 8, 8))).astype(np.float32)
    kwargs = dict(binary_search_steps=2, max_iter=4, batch_size=4, initial_const=1.0, verbose=False)
    expected = CarliniL2Method(clf, **kwargs).generate(x)
    assert (clf.predict(expected).argmax(1) != clf.predict(x).argmax(1)).any()
    np.testing.assert_allclose(FocusedCarliniL2(clf, **kwargs).generate(x), expected, atol=1e-5)
    mask = np.zeros((8, 8), np.float32)
    mask[:, :4] = 1
    x_adv = FocusedCarliniL2(clf, **kwargs).generate(x, mask=mask)
    assert (x_adv >= low).all() and (x_adv <= high).all() and (x_adv != x).any()
    np.testing.assert_array_equal(x_adv[..., 4:], x[..., 4:])
