"""CAMERAS and the Grad-CAM family against direct computations from hooks and autograd."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from benchmarks.reference_cameras import reference_cameras
from saliency import CAMERAS, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM
from saliency.base import normalize_maps
from saliency.cameras import default_resolutions


def without_inplace(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` whose ReLUs are not in-place (for hook-based reference computations;
    frozen so that ``backward`` computes only the input-side gradients the references need)."""
    model = copy.deepcopy(model).requires_grad_(False)
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    return model


def direct_acts_grads(plain: nn.Module, layer_name: str, x: torch.Tensor, targets: list[int]):
    """Activations and logit gradients at a layer, one image at a time, with a forward hook and a
    tensor hook, using ``backward`` as a user would, on a model from :func:`without_inplace`."""
    model = plain
    layer = dict(model.named_modules())[layer_name]
    acts, grads = [], []
    for i, t in enumerate(targets):
        store = {}

        def hook(module, inputs, output, store=store):
            store["a"] = output
            output.register_hook(lambda g: store.__setitem__("g", g))

        handle = layer.register_forward_hook(hook)
        try:
            logits = model(x[i : i + 1].clone().requires_grad_(True))
            logits[0, t].backward()
        finally:
            handle.remove()
        acts.append(store["a"].detach())
        grads.append(store["g"].detach())
    return torch.cat(acts), torch.cat(grads)


def up(cam: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def reference_map(name: str, a: torch.Tensor, g: torch.Tensor, size) -> torch.Tensor:
    """Each method's formula, written out independently of the package."""
    if name == "gradcam":
        cam = F.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(1))
    elif name == "hirescam":
        cam = F.relu((g * a).sum(1))
    elif name == "layercam":
        cam = F.relu((g.clamp(min=0) * a).sum(1))
    else:  # gradcam++
        alpha = g**2 / (2 * g**2 + a.sum(dim=(2, 3), keepdim=True) * g**3)
        alpha = torch.nan_to_num(torch.where(g != 0, alpha, 0.0), nan=0.0, posinf=0.0, neginf=0.0)
        weights = (alpha * g.clamp(min=0)).sum(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * a).sum(1))
    cam = up(cam, size)
    low = cam.flatten(1).min(1).values[:, None, None]
    span = cam.flatten(1).max(1).values[:, None, None] - low
    return torch.where(span > 0, (cam - low) / span.clamp(min=1e-30), torch.zeros_like(cam))


METHODS = {"gradcam": GradCAM, "hirescam": HiResCAM, "layercam": LayerCAM, "gradcam++": GradCAMPlusPlus}


def torchvision_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None).eval()


CASES = [("small", "features.5", 32), ("resnet18", "layer4", 64), ("vgg11", "features.15", 64)]


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def case(request):
    name, layer, size = request.param
    if name == "small":
        from conftest import SmallCNN

        torch.manual_seed(0)
        model = SmallCNN().eval()
    else:
        model = torchvision_model(name)
    x = torch.rand(5, 3, size, size, generator=torch.Generator().manual_seed(3))
    return model, without_inplace(model), layer, x


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("batch", [1, 5])
def test_cam_equals_direct_computation(case, method, batch):
    model, plain, layer, x = case
    x = x[:batch]
    with torch.no_grad():
        targets = model(x).argmax(1).tolist()
    a, g = direct_acts_grads(plain, layer, x, targets)
    expected = reference_map(method, a, g, x.shape[-2:])
    maps = METHODS[method](model, layer)(x)
    assert maps.shape == (batch, *x.shape[-2:]) and maps.dtype == torch.float32
    torch.testing.assert_close(maps, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("batch", [1, 5])
def test_cameras_equals_official_algorithm(case, batch):
    model, plain, layer, x = case
    x = x[:batch]
    targets = [1, 2, 3, 4, 5][:batch]
    method = CAMERAS(model, layer, resolutions=default_resolutions(x.shape[-1])[:3])
    expected = reference_cameras(
        plain, dict(plain.named_modules())[layer], x, targets, method.sizes(*x.shape[-2:])
    )
    torch.testing.assert_close(method(x, targets), expected, atol=1e-4, rtol=0)


def test_cameras_single_resolution_is_upsampled_product(case):
    model, plain, layer, x = case
    with torch.no_grad():
        targets = model(x).argmax(1).tolist()
    a, g = direct_acts_grads(plain, layer, x, targets)
    size = x.shape[-2:]
    up4 = lambda t: F.interpolate(t, size=size, mode="bilinear", align_corners=False)  # noqa: E731
    expected = normalize_maps(F.relu((up4(a) * up4(g)).sum(1)))
    maps = CAMERAS(model, layer, resolutions=[x.shape[-1]])(x)
    torch.testing.assert_close(maps, expected, atol=1e-5, rtol=0)


def test_cameras_at_input_resolution_layer_equals_hirescam(small_cnn, images):
    cameras = CAMERAS(small_cnn, "features.2", resolutions=[32])(images)
    hirescam = HiResCAM(small_cnn, "features.2")(images)
    assert (cameras - hirescam).abs().max() < 1e-5


def test_cameras_default_schedule_matches_official():
    assert default_resolutions(224) == [224, 324, 424, 524, 624, 724, 824, 924]


def test_cameras_keeps_aspect_ratio_and_handles_non_square(small_cnn):
    method = CAMERAS(small_cnn, "features.5", resolutions=[32, 48, 64])
    assert method.sizes(32, 48) == [(32, 48), (48, 72), (64, 96)]
    maps = method(torch.rand(2, 3, 32, 48))
    assert maps.shape == (2, 32, 48) and torch.isfinite(maps).all()


class ScaleSensitive(nn.Module):
    """``net``, except that from 48 px up, images brighter than 0.5 on average are predicted as class
    ``flip_to``."""

    def __init__(self, net: nn.Module, flip_to: int = 9) -> None:
        super().__init__()
        self.net = net
        self.flip_to = flip_to

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        flips = (x.mean(dim=(1, 2, 3)) > 0.5) & (x.shape[-1] >= 48)
        one_hot = F.one_hot(torch.tensor(self.flip_to), logits.shape[1])
        return logits + 100.0 * flips[:, None].float() * one_hot


def test_cameras_same_label_gate(small_cnn, images):
    """With same_label, a resolution counts only if it predicts what the input resolution predicts (the
    paper's K(I_t) = K(I)), whatever target class is given: each image's map equals CAMERAS over exactly
    its consistent resolutions (ungated). A target no resolution predicts does not drop the others."""
    model = ScaleSensitive(small_cnn)
    x = (images * torch.tensor([0.5, 1.5, 0.5, 1.5, 0.5])[:, None, None, None]).clamp(0, 1)
    sizes = [32, 40, 48, 64]
    with torch.no_grad():
        preds = model(x).argmax(1)
    bright = x.mean(dim=(1, 2, 3)) > 0.5
    assert bright.tolist() == [False, True, False, True, False] and not (preds == 9).any()
    kept = [[32, 40] if b else sizes for b in bright]  # bright images predict 9 from 48 px up
    gated = CAMERAS(model, "net.features.5", resolutions=sizes)
    for targets in (None, [9, 9, 9, 9, 9], [0, 1, 2, 3, 4]):
        maps = gated(x, targets)
        for i in range(len(x)):
            target = None if targets is None else targets[i]
            reference = CAMERAS(model, "net.features.5", resolutions=kept[i], same_label=False)
            expected = reference(x[i : i + 1], target)
            torch.testing.assert_close(maps[i : i + 1], expected, atol=1e-5, rtol=0)
    ungated = CAMERAS(model, "net.features.5", resolutions=sizes, same_label=False)
    assert not torch.allclose(gated(x), ungated(x))


def test_cameras_resolutions_in_any_order_and_without_the_input_size(small_cnn, images):
    """K(I) is the input resolution's prediction whatever the list's order, also when the list leaves the
    input size out; an image that no listed resolution keeps gets a zero map and a warning."""
    model, layer = ScaleSensitive(small_cnn), "net.features.5"
    x = (images * torch.tensor([0.5, 1.5, 0.5, 1.5, 0.5])[:, None, None, None]).clamp(0, 1)
    in_order = CAMERAS(model, layer, resolutions=[32, 40, 48, 64])(x)
    torch.testing.assert_close(
        CAMERAS(model, layer, resolutions=[64, 32, 48, 40])(x), in_order, atol=1e-5, rtol=0
    )
    maps = CAMERAS(model, layer, resolutions=[40, 48, 64])(x)
    for i, bright in enumerate([False, True, False, True, False]):
        kept = [40] if bright else [40, 48, 64]  # bright images predict 9 from 48 px up
        expected = CAMERAS(model, layer, resolutions=kept, same_label=False)(x[i : i + 1])
        torch.testing.assert_close(maps[i : i + 1], expected, atol=1e-5, rtol=0)
    with pytest.warns(UserWarning, match=r"images \[1, 3\] keep their predicted class at none"):
        maps = CAMERAS(model, layer, resolutions=[48, 64])(x)
    assert maps[[1, 3]].max() == 0 and maps[[0, 2, 4]].amax(dim=(1, 2)).min() == 1


def flipping_case(small_cnn: nn.Module, images: torch.Tensor) -> tuple[nn.Module, torch.Tensor, list, list]:
    """ScaleSensitive around ``small_cnn``, flipping to class 8 (whose maps are not all zero, unlike
    class 9's), and images of which 1 and 3 (the bright ones) predict 8 from 48 px up, the others their
    32 px class at every size; with those sizes and the 32 px predictions."""
    model = ScaleSensitive(small_cnn, flip_to=8)
    x = (images * torch.tensor([0.5, 1.5, 0.5, 1.5, 0.5])[:, None, None, None]).clamp(0, 1)
    with torch.no_grad():
        preds = model(x).argmax(1)
        at_48 = model(F.interpolate(x, size=(48, 48), mode="bicubic", align_corners=False)).argmax(1)
    assert not (preds == 8).any() and (at_48 == 8).tolist() == [False, True, False, True, False]
    return model, x, [32, 40, 48, 64], preds.tolist()


def test_cameras_same_label_official_gates_only_without_a_class(small_cnn, images):
    """same_label="official" is the official code's rule: with a class given every resolution counts (as with
    same_label=False and the re-stated official algorithm without its gate); with targets=None it is the
    prediction gate ("prediction", and the re-stated algorithm with its gate)."""
    model, x, sizes, preds = flipping_case(small_cnn, images)
    layer = "net.features.5"
    official = CAMERAS(model, layer, resolutions=sizes, same_label="official")
    plain = ScaleSensitive(without_inplace(small_cnn), flip_to=8)
    plain_layer, full_sizes = plain.net.features[5], official.sizes(32, 32)
    for targets in ([8, 8, 8, 8, 8], [0, 1, 2, 3, 4], 3):
        maps = official(x, targets)
        assert torch.equal(maps, CAMERAS(model, layer, resolutions=sizes, same_label=False)(x, targets))
        assert not torch.allclose(maps, CAMERAS(model, layer, resolutions=sizes)(x, targets))
        listed = targets if isinstance(targets, list) else [targets] * 5
        expected = reference_cameras(plain, plain_layer, x, listed, full_sizes, same_label=False)
        torch.testing.assert_close(maps, expected, atol=1e-4, rtol=0)
    maps = official(x)
    assert torch.equal(maps, CAMERAS(model, layer, resolutions=sizes, same_label="prediction")(x))
    assert not torch.allclose(maps, CAMERAS(model, layer, resolutions=sizes, same_label=False)(x))
    expected = reference_cameras(plain, plain_layer, x, preds, full_sizes, same_label=True)
    torch.testing.assert_close(maps, expected, atol=1e-4, rtol=0)


def test_cameras_same_label_target_keeps_the_resolutions_predicting_the_target(small_cnn, images):
    """same_label="target": a resolution counts for an image when it predicts that image's target (the input
    resolution included); an image whose target no resolution predicts gets a zero map and a warning.
    With targets=None the target is the prediction, so it equals "prediction"."""
    model, x, sizes, preds = flipping_case(small_cnn, images)
    layer = "net.features.5"
    method = CAMERAS(model, layer, resolutions=sizes, same_label="target")
    targets = [preds[0], 8, preds[2], 8, 8]  # image 4 predicts 8 nowhere
    kept = [sizes, [48, 64], sizes, [48, 64]]
    with pytest.warns(UserWarning, match=r"images \[4\] predict their target class at none"):
        maps = method(x, targets)
    assert maps[4].max() == 0 and maps[:4].amax(dim=(1, 2)).min() == 1
    for i, resolutions in enumerate(kept):
        expected = CAMERAS(model, layer, resolutions=resolutions, same_label=False)(x[i : i + 1], targets[i])
        torch.testing.assert_close(maps[i : i + 1], expected, atol=1e-5, rtol=0)
    assert torch.equal(method(x), CAMERAS(model, layer, resolutions=sizes, same_label="prediction")(x))


@pytest.mark.parametrize("value", ["paper", "Prediction", None, 1, 0, np.True_])
def test_cameras_same_label_rejects_other_values(small_cnn, value):
    with pytest.raises(ValueError, match=r"same_label must be one of \('prediction', 'target', 'official'"):
        CAMERAS(small_cnn, "features.5", same_label=value)


def test_cameras_same_label_default_and_true_alias_are_the_paper_gate(small_cnn, images):
    """The default is "prediction", and True (the former boolean option) is an alias of it: identical maps,
    which the gate makes differ from the ungated ones."""
    model, x, sizes, _ = flipping_case(small_cnn, images)
    make = lambda **kw: CAMERAS(model, "net.features.5", resolutions=sizes, **kw)  # noqa: E731
    assert make(same_label=True).same_label == make().same_label == "prediction"
    for targets in (None, [0, 1, 2, 3, 4]):
        default = make()(x, targets)
        assert torch.equal(make(same_label=True)(x, targets), default)
        assert torch.equal(make(same_label="prediction")(x, targets), default)
        assert not torch.allclose(make(same_label=False)(x, targets), default)


def test_grad_cam_and_hirescam_agree_with_pytorch_grad_cam(small_cnn, images):
    from pytorch_grad_cam import GradCAM as PGCGradCAM
    from pytorch_grad_cam import HiResCAM as PGCHiResCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    targets = [0, 1, 2, 3, 4]
    for ours, theirs in [(GradCAM, PGCGradCAM), (HiResCAM, PGCHiResCAM)]:
        for layer_name, tolerance in [("features.2", 1e-5), ("features.5", 0.08)]:
            model = without_inplace(small_cnn).requires_grad_(True)
            layer = dict(model.named_modules())[layer_name]
            with theirs(model=model, target_layers=[layer]) as cam:
                expected = cam(images, targets=[ClassifierOutputTarget(t) for t in targets])
            maps = ours(small_cnn, layer_name)(images, targets).numpy()
            # pytorch-grad-cam normalises before its (cv2) resize and adds 1e-7 to the max: at a layer
            # at the input resolution no resize happens; one octave down the resize differs.
            assert np.abs(maps - expected).max() < tolerance, (ours.__name__, layer_name)


def test_art_classifier_uses_its_preprocessing(small_cnn, images):
    from art.estimators.classification import PyTorchClassifier

    mean, std = np.array([0.4, 0.5, 0.6], np.float32), np.array([0.2, 0.25, 0.3], np.float32)
    classifier = PyTorchClassifier(
        small_cnn, nn.CrossEntropyLoss(), (3, 32, 32), 10, clip_values=(0.0, 1.0), preprocessing=(mean, std)
    )
    normalised = (images - torch.from_numpy(mean)[:, None, None]) / torch.from_numpy(std)[:, None, None]
    for method in [
        GradCAM(classifier, "features.5"),
        CAMERAS(classifier, "features.5", resolutions=[32, 48]),
    ]:
        reference = type(method)(
            small_cnn, "features.5", **({"resolutions": [32, 48]} if isinstance(method, CAMERAS) else {})
        )
        torch.testing.assert_close(method(images, 3), reference(normalised, 3), atol=1e-4, rtol=0)


@pytest.mark.parametrize("layer_sizes", [[(2, 3), (3, 4), (4, 6)], [(7, 7)], [(5, 9), (1, 1)]])
def test_cameras_factored_fusion_equals_upsampled_sum(layer_sizes):
    """The factored fusion (late layers) equals up-sampling every channel and summing (the chunked one)."""
    from saliency.cameras import _fuse_chunked, _fuse_factored

    g = torch.Generator().manual_seed(len(layer_sizes))
    stored = [
        (torch.randn(3, 6, h, w, generator=g), torch.randn(3, 6, h, w, generator=g)) for h, w in layer_sizes
    ]
    size = (23, 31)
    torch.testing.assert_close(
        _fuse_factored(stored, size), _fuse_chunked(stored, size), atol=1e-4, rtol=1e-4
    )
