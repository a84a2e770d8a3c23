"""Contract of every saliency method: shapes, ranges, hooks removed, model untouched, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from saliency import CAMERAS, METHODS, GradCAM
from saliency.base import normalize_maps, resolve_layer

SINGLE_LAYER = list(METHODS.values())


def make(cls, model, layer="features.5"):
    return cls(model, layer, resolutions=[32, 48]) if cls is CAMERAS else cls(model, layer)


def hook_count(model: torch.nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()
    )


@pytest.mark.parametrize("cls", SINGLE_LAYER)
def test_maps_shape_range_device_dtype(cls, small_cnn, images):
    maps = make(cls, small_cnn)(images)
    assert maps.shape == (5, 32, 32) and maps.dtype == torch.float32 and maps.device == images.device
    assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    assert torch.allclose(maps.flatten(1).max(1).values, torch.ones(5))


@pytest.mark.parametrize("cls", SINGLE_LAYER)
def test_hooks_removed_and_model_untouched(cls, small_cnn, images):
    small_cnn.train()
    small_cnn.fc.requires_grad_(False)
    method = make(cls, small_cnn)
    before = {k: v.clone() for k, v in small_cnn.state_dict().items()}
    method(images)
    with pytest.raises(ValueError, match="targets"):
        method(images, targets=99)  # fails after the forward pass, inside the hooks' lifetime
    assert hook_count(small_cnn) == 0
    assert all(m.training for m in small_cnn.modules())
    assert not small_cnn.fc.weight.requires_grad and small_cnn.features[0].weight.requires_grad
    assert all(p.grad is None for p in small_cnn.parameters())
    assert all(torch.equal(before[k], v) for k, v in small_cnn.state_dict().items())


@pytest.mark.parametrize("cls", SINGLE_LAYER)
def test_inplace_relu_model_equals_out_of_place_model(cls, small_cnn, images):
    import copy

    plain = copy.deepcopy(small_cnn)
    for module in plain.modules():
        if isinstance(module, torch.nn.ReLU):
            module.inplace = False
    torch.testing.assert_close(
        make(cls, small_cnn)(images, 2), make(cls, plain)(images, 2), atol=1e-6, rtol=0
    )


@pytest.mark.parametrize("cls", SINGLE_LAYER)
def test_targets_forms_agree(cls, small_cnn, images):
    method = make(cls, small_cnn)
    with torch.no_grad():
        predicted = small_cnn(images).argmax(1)
    by_none = method(images)
    for form in (predicted, predicted.tolist(), predicted.numpy()):
        torch.testing.assert_close(method(images, form), by_none)
    torch.testing.assert_close(method(images, 3), method(images, [3] * 5))
    for one_class in (np.int64(3), np.array(3), torch.tensor(3), np.array([3] * 5, dtype=np.uint8)):
        torch.testing.assert_close(method(images, one_class), method(images, [3] * 5))


def test_numpy_input_is_accepted(small_cnn, images):
    torch.testing.assert_close(
        GradCAM(small_cnn, "features.5")(images.numpy()), GradCAM(small_cnn, "features.5")(images)
    )


def test_layer_given_as_module(small_cnn, images):
    torch.testing.assert_close(
        GradCAM(small_cnn, small_cnn.features[5])(images), GradCAM(small_cnn, "features.5")(images)
    )


@pytest.mark.parametrize(
    ("x", "targets", "error", "match"),
    [
        (torch.rand(3, 32, 32), None, ValueError, "shape"),
        (torch.randint(0, 255, (2, 3, 32, 32)), None, TypeError, "floating"),
        (torch.full((2, 3, 32, 32), float("nan")), None, ValueError, "NaN"),
        (torch.rand(2, 3, 32, 32), 10, ValueError, r"\[0, 10\)"),
        (torch.rand(2, 3, 32, 32), -1, ValueError, r"\[0, 10\)"),
        (torch.rand(2, 3, 32, 32), [1, 2, 3], ValueError, "expected 2"),
        (torch.rand(2, 3, 32, 32), [1.0, 2.0], TypeError, "integers"),
        (torch.rand(2, 3, 32, 32), torch.tensor(1.0), TypeError, "integers"),
        (torch.rand(2, 3, 32, 32), "cat", TypeError, "integers"),
        (torch.rand(2, 3, 32, 32), True, TypeError, "integers"),
        ([[1.0]], None, TypeError, "x must be"),
    ],
)
@pytest.mark.parametrize("cls", SINGLE_LAYER)
def test_bad_input_is_rejected(cls, small_cnn, x, targets, error, match):
    with pytest.raises(error, match=match):
        make(cls, small_cnn)(x, targets)
    assert hook_count(small_cnn) == 0


def test_unknown_layer_lists_close_names(small_cnn):
    with pytest.raises(ValueError, match=r"unknown layer 'feature.5'.*features\.5"):
        GradCAM(small_cnn, "feature.5")
    with pytest.raises(ValueError, match="not a submodule"):
        resolve_layer(small_cnn, torch.nn.Conv2d(1, 1, 1))
    with pytest.raises(TypeError, match="target_layer"):
        resolve_layer(small_cnn, 5)


def test_bad_model_and_resolutions(small_cnn):
    with pytest.raises(TypeError, match="model must be"):
        GradCAM("resnet", "layer4")
    with pytest.raises(ValueError, match="non-empty"):
        CAMERAS(small_cnn, "features.5", resolutions=[])
    with pytest.raises(ValueError, match="positive ints"):
        CAMERAS(small_cnn, "features.5", resolutions=[32, 0])


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 3),
    st.integers(1, 6),
    st.integers(1, 6),
    st.floats(-1e3, 1e3),
    st.floats(0, 1e3),
    st.booleans(),
)
def test_normalize_maps_range_and_constant(n, h, w, offset, scale, constant):
    raw = torch.full((n, h, w), offset) if constant else offset + scale * torch.rand(n, h, w)
    maps = normalize_maps(raw)
    assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    flat = raw.flatten(1)
    for i in range(n):
        span, magnitude = float(flat[i].max() - flat[i].min()), float(flat[i].abs().max())
        if span <= 1e-12 or span <= 0.5e-5 * magnitude:  # constant up to rounding (CONSTANT_RTOL)
            assert (maps[i] == 0).all()
        elif span > 2e-5 * magnitude:  # clear of the boundary, where float32 decides
            assert np.isclose(float(maps[i].max()), 1.0) and float(maps[i].min()) == 0.0


def test_normalize_maps_does_not_stretch_rounding_noise():
    """A map that is constant up to float32 round-off (e.g. bilinear resizing of a constant) is constant:
    normalising it would turn the rounding noise into a full-contrast map."""
    rng = np.random.default_rng(0)
    noisy = torch.from_numpy(0.05 * (1 + 3e-7 * rng.standard_normal((2, 8, 8)))).float()
    assert (normalize_maps(noisy) == 0).all()
    real = noisy.clone()
    real[:, 3, 3] += 1e-3  # a real peak, 2 % of the level
    out = normalize_maps(real)
    assert (out[:, 3, 3] == 1).all() and (out.flatten(1).min(1).values == 0).all()


@pytest.mark.parametrize("cls", SINGLE_LAYER)
@pytest.mark.parametrize("grad_mode", [True, False])
def test_grad_mode_is_restored_and_no_grad_callers_work(cls, small_cnn, images, grad_mode):
    expected = make(cls, small_cnn)(images, 1)
    with torch.set_grad_enabled(grad_mode):
        maps = make(cls, small_cnn)(images, 1)
        assert torch.is_grad_enabled() == grad_mode
    torch.testing.assert_close(maps, expected)


def test_layer_not_reached_is_reported(small_cnn, images):
    small_cnn.unused = torch.nn.Conv2d(3, 3, 1)
    with pytest.raises(ValueError, match="not called"):
        GradCAM(small_cnn, "unused")(images)
    assert hook_count(small_cnn) == 0


@pytest.mark.parametrize("cls", SINGLE_LAYER)
def test_layer_without_feature_maps_is_reported(cls, small_cnn, images):
    """A target layer must give (N,K,h,w): CAMERAS used to mix the images of a (N,classes) output."""
    with pytest.raises(
        ValueError, match=r"target layer 'fc' must output feature maps \(N,K,h,w\), got shape \(5, 10\)"
    ):
        make(cls, small_cnn, "fc")(images)
    assert hook_count(small_cnn) == 0
