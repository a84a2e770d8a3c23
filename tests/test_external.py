"""pytorch-grad-cam and captum as saliency methods (saliency.external), the focuser registry's names for
them, and timm models in the zoo."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("pytorch_grad_cam")
pytest.importorskip("captum")

import captum.attr as ca  # noqa: E402
import pytorch_grad_cam as pgc  # noqa: E402
import timm  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

from evaluation import datasets, focusers, zoo  # noqa: E402
from focused_attacks import FocusedPGD  # noqa: E402
from focused_attacks.base import maps_to_mask  # noqa: E402
from saliency import external  # noqa: E402
from saliency.base import normalize_maps  # noqa: E402

TOL = 1e-5
HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def hook_count(model: nn.Module) -> int:
    return sum(len(getattr(m, d)) for m in model.modules() for d in HOOK_DICTS)


def assert_clean(model: nn.Module) -> None:
    """No hooks left and no parameter gradients written."""
    assert hook_count(model) == 0
    assert all(p.grad is None for p in model.parameters())


@pytest.fixture(scope="module")
def digits():
    classifier = zoo.classifier("digits-cnn", device="cpu")
    x, _, _ = datasets.cluttered_digits(5, "test")
    return classifier, torch.from_numpy(np.asarray(x, dtype=np.float32))


@pytest.fixture(scope="module")
def lite():
    classifier = zoo.classifier("efficientnet-lite0", device="cpu")
    x = torch.from_numpy(np.asarray(datasets.sample_photos()[0][:5], dtype=np.float32))
    return classifier, x


def predicted(module: nn.Module, x: torch.Tensor) -> list[int]:
    with torch.no_grad():
        return module(x).argmax(1).tolist()


def library_cam(cam_class: type, module: nn.Module, layers: list, x: torch.Tensor, classes: list[int]):
    """pytorch-grad-cam's own maps, after our normalisation."""
    with cam_class(model=module, target_layers=layers) as cam:
        out = cam(x, [ClassifierOutputTarget(c) for c in classes])
    module.zero_grad(set_to_none=True)  # the library leaves parameter gradients
    return normalize_maps(torch.from_numpy(out))


def check_grad_cam(cam_class: type, module: nn.Module, layers: list, x: torch.Tensor) -> None:
    """The adapter equals the library for batch sizes 1 and 5, targets None and explicit."""
    method = external.from_pytorch_grad_cam(cam_class(model=module, target_layers=layers))
    assert_clean(module)  # the constructor's hooks are released by the adapter
    for xb, targets in ((x[:1], None), (x, np.array([3, 1, 4, 1, 5]))):
        classes = predicted(module, xb) if targets is None else targets.tolist()
        expected = library_cam(cam_class, module, layers, xb, classes)
        maps = method(xb, targets)
        assert_clean(module)
        assert maps.shape == (len(xb), *x.shape[-2:]) and maps.dtype == torch.float32
        assert float(maps.min()) >= 0 and float(maps.max()) <= 1
        assert (maps - expected).abs().max() < TOL


@pytest.mark.parametrize(
    "cam_class", [pgc.GradCAM, pgc.ScoreCAM, pgc.EigenCAM, pgc.AblationCAM, pgc.FullGrad]
)
def test_pytorch_grad_cam_matches_library_on_digits(digits, cam_class):
    classifier, x = digits
    module = classifier.model
    layers = [] if cam_class is pgc.FullGrad else [module.features[13]]
    check_grad_cam(cam_class, module, layers, x)


@pytest.mark.parametrize("cam_class", [pgc.GradCAM, pgc.EigenCAM])
def test_pytorch_grad_cam_matches_library_on_efficientnet(lite, cam_class):
    classifier, x = lite
    module = external.as_module(classifier)  # with the classifier's (0.5, 0.5) normalisation
    check_grad_cam(cam_class, module, [classifier.model.bn2], x)


def test_as_module_applies_the_preprocessing(lite, digits):
    classifier, x = lite
    with torch.no_grad():
        logits = external.as_module(classifier)(x[:2]).numpy()
    np.testing.assert_allclose(logits, classifier.predict(x[:2].numpy()), atol=1e-4)
    assert external.as_module(digits[0]) is digits[0].model  # no preprocessing: the module itself


def library_captum(method, x, classes, reduce, **kwargs) -> torch.Tensor:
    """captum's own attribution, reduced over channels, bilinearly resized and normalised."""
    inputs = x.clone().requires_grad_(isinstance(method, ca.GradientAttribution))
    a = method.attribute(inputs, target=torch.tensor(classes), **kwargs).detach()
    a = {"abs-sum": a.abs().sum(1), "sum": a.sum(1), "max-abs": a.abs().amax(1)}[reduce]
    if a.shape[-2:] != x.shape[-2:]:
        a = F.interpolate(a[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return normalize_maps(a)


def check_captum(method, module: nn.Module, x: torch.Tensor, reduce: str, **kwargs) -> None:
    adapter = external.from_captum(method, reduce, **kwargs)
    for xb, targets in ((x[:1], None), (x, 2)):
        classes = predicted(module, xb) if targets is None else [targets] * len(xb)
        expected = library_captum(method, xb, classes, reduce, **kwargs)
        maps = adapter(xb, targets)
        assert_clean(module)
        assert maps.shape == (len(xb), *x.shape[-2:]) and maps.dtype == torch.float32
        assert (maps - expected).abs().max() < TOL


@pytest.mark.parametrize(
    "make, reduce, kwargs",
    [
        (lambda m: ca.Saliency(m), "max-abs", {}),
        (lambda m: ca.IntegratedGradients(m), "abs-sum", {"n_steps": 8, "internal_batch_size": 20}),
        (lambda m: ca.Occlusion(m), "sum", {"sliding_window_shapes": (3, 8, 8), "strides": (3, 8, 8)}),
        (lambda m: ca.LayerGradCam(m, m.features[13]), "sum", {"relu_attributions": True}),
    ],
    ids=["saliency", "integrated-gradients", "occlusion", "layer-gradcam"],
)
def test_captum_matches_library_on_digits(digits, make, reduce, kwargs):
    module = digits[0].model
    check_captum(make(module), module, digits[1], reduce, **kwargs)


@pytest.mark.parametrize(
    "make, kwargs",
    [(ca.Saliency, {}), (ca.IntegratedGradients, {"n_steps": 4, "internal_batch_size": 10})],
    ids=["saliency", "integrated-gradients"],
)
def test_captum_matches_library_on_efficientnet(lite, make, kwargs):
    module = external.as_module(lite[0])
    check_captum(make(module), module, lite[1], "abs-sum", **kwargs)


def test_focused_pgd_with_a_score_cam_object(digits):
    classifier, x = digits
    model, layer = classifier.model, classifier.model.features[13]
    attack = FocusedPGD(
        classifier,
        saliency=pgc.ScoreCAM(model=model, target_layers=[layer]),
        focus="topk",
        area=0.1,
        eps=0.2,
        eps_step=0.05,
        max_iter=3,
        verbose=False,
    )
    assert isinstance(attack.saliency, external.PytorchGradCamSaliency)
    x_adv = attack.generate(x.numpy())
    assert_clean(model)
    expected = maps_to_mask(library_cam(pgc.ScoreCAM, model, [layer], x, predicted(model, x)), "topk", 0.1)
    np.testing.assert_array_equal(attack.last_mask_, expected)
    outside = np.broadcast_to(attack.last_mask_ == 0, x.shape)
    np.testing.assert_array_equal(x_adv[outside], x.numpy()[outside])
    assert (x_adv != x.numpy()).any()


def test_as_saliency_wraps_library_objects_and_passes_callables(digits):
    model = digits[0].model
    assert isinstance(
        external.as_saliency(pgc.EigenCAM(model, [model.features[13]])), external.PytorchGradCamSaliency
    )
    assert isinstance(external.as_saliency(ca.Saliency(model)), external.CaptumSaliency)
    assert_clean(model)

    def fn(x, targets=None):
        return torch.zeros(x.shape[0], *x.shape[-2:])

    assert external.as_saliency(fn) is fn
    with pytest.raises(TypeError, match="saliency must be a callable"):
        external.as_saliency(42)
    with pytest.raises(TypeError, match="saliency"):
        FocusedPGD(digits[0], saliency=42)


def test_argument_errors(digits):
    model = digits[0].model
    with pytest.raises(ValueError, match="reduce must be one of"):
        external.from_captum(ca.Saliency(model), reduce="mean")
    with pytest.raises(ValueError, match="attribute_kwargs: target"):
        external.from_captum(ca.Saliency(model), target=1)
    with pytest.raises(TypeError, match="captum attribution method"):
        external.from_captum(model)
    with pytest.raises(TypeError, match="CAM object"):
        external.from_pytorch_grad_cam(model)
    with pytest.raises(ValueError, match="cam_class"):
        external.build_pytorch_grad_cam("NoSuchCAM", model, ["features.13"])
    with pytest.raises(ValueError, match="targets"):
        external.build_captum("Saliency", model)(digits[1][:2], [1, 2, 3])


@pytest.mark.parametrize(
    "blocked, build",
    [
        (("pytorch_grad_cam",), lambda m: external.build_pytorch_grad_cam("GradCAM", m, ["features.13"])),
        (("captum", "captum.attr"), lambda m: external.build_captum("Saliency", m)),
        (("captum", "captum.attr"), lambda m: external.occlusion(m)),
    ],
    ids=["grad-cam", "captum", "occlusion"],
)
def test_missing_library_names_the_extra(digits, monkeypatch, blocked, build):
    for module in blocked:
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError, match=r"pip install 'focused-attacks\[extra\]'"):
        build(digits[0])


def test_registry_names_build_working_methods(digits):
    classifier, x = digits
    focusers.check_names(focusers.EXTRA_METHODS, "--methods")
    assert set(focusers.EXTRA_METHODS) <= set(focusers.saliency_names())
    layers = zoo.default_layers("digits-cnn")
    for name in focusers.EXTRA_METHODS:
        maps = focusers.compute_maps(name, classifier, x[:2].numpy(), np.array([1, 2]), [0, 1], layers)
        assert maps.shape == (2, 64, 64) and maps.dtype == np.float32, name
        assert 0 <= maps.min() and maps.max() == 1, name
        assert_clean(classifier.model)


def test_focusers_apply_the_preprocessing_and_takes_objects(lite, digits):
    classifier, x = lite
    maps = focusers.saliency_method("eigencam", classifier, ["bn2"])(x[:2])

    class Normalised(nn.Module):  # the classifier's (0.5, 0.5) normalisation, by hand
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, t):
            return self.model((t - 0.5) / 0.5)

    module = Normalised(classifier.model)
    expected = library_cam(pgc.EigenCAM, module, [classifier.model.bn2], x[:2], [0, 0])
    assert (maps - expected).abs().max() < TOL
    # an object instead of a name
    d_classifier, xd = digits
    cam = pgc.GradCAM(d_classifier.model, [d_classifier.model.features[13]])
    got = focusers.compute_maps(cam, d_classifier, xd.numpy(), np.arange(5), range(5), ["features.13"])
    expected = library_cam(
        pgc.GradCAM, d_classifier.model, [d_classifier.model.features[13]], xd, list(range(5))
    )
    assert np.abs(got - expected.numpy()).max() < TOL


# ------------------------------------------------------------------------------------------------ timm
TIMM_MODEL = "test_resnet"  # a tiny ResNet; its cfg: 160 px, mean = std = 0.5, crop_pct 0.95


def test_timm_weights_as_state_dict_checkpoint_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    source = timm.create_model(TIMM_MODEL, num_classes=7).eval()
    state = source.state_dict()
    torch.save(state, tmp_path / "w.pt")
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ckpt.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = source(x)
        for file in ("w.pt", "ckpt.pth", "w.safetensors"):
            model = zoo.load(f"timm:{TIMM_MODEL}", weights=tmp_path / file)
            assert not model.training
            torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="timm models take"):
        zoo.load(f"timm:{TIMM_MODEL}", weights="DEFAULT")


def test_timm_names_layers_and_preprocessing():
    name = f"timm:{TIMM_MODEL}"
    cfg = timm.get_pretrained_cfg(TIMM_MODEL)
    assert zoo.input_size(name) == tuple(cfg.input_size)
    mean, std = zoo.normalisation(name)
    np.testing.assert_allclose(mean.ravel(), cfg.mean, rtol=1e-6)
    np.testing.assert_allclose(std.ravel(), cfg.std, rtol=1e-6)
    assert zoo.resize_size(name, 224) == int(224 // cfg.crop_pct)
    assert zoo.resize_interpolation(name) == cfg.interpolation
    assert not zoo.ships_weights(name)
    layers = zoo.default_layers(name)
    assert layers == ["layer4", "layer3", "layer2"]
    classifier = zoo.classifier(name, device="cpu")  # random weights
    assert focusers.check_layers(classifier, layers) is None
    assert classifier.predict(np.zeros((1, *zoo.input_size(name)), np.float32)).shape == (1, 1000)
    with pytest.raises(
        ValueError, match="unknown model 'timm:test_resnetx'; close timm names: .*test_resnet"
    ):
        zoo.load("timm:test_resnetx")
    with pytest.raises(ValueError, match="no convolutional feature maps"):
        zoo.default_layers("timm:deit_tiny_patch16_224")  # tokens, though not named vit_
    with pytest.raises(ValueError, match="takes only 224 x 224"):
        zoo.check_size("timm:vit_tiny_patch16_224", 160)
