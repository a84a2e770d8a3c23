"""Model zoo: shipped digits-cnn weights, torchvision models, weights files, ART classifiers, CAM layers."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torchvision
from art.estimators.classification import PyTorchClassifier
from torch import nn

from evaluation import zoo
from evaluation.datasets import cluttered_digits
from evaluation.models import DigitsCNN
from saliency.base import ActivationRecorder, resolve_layer


@pytest.fixture(scope="module")
def digits_test():
    return cluttered_digits(300, split="test", seed=0)


def test_digits_cnn_shipped_weights_accuracy(digits_test):
    x, y, _ = digits_test
    model = zoo.load("digits-cnn")
    assert isinstance(model, DigitsCNN) and not model.training
    with torch.no_grad():
        accuracy = (model(torch.from_numpy(x)).argmax(1).numpy() == y).mean()
    assert accuracy >= 0.95
    assert zoo.DIGITS_CNN_WEIGHTS.stat().st_size < 2_000_000


def test_digits_cnn_classifier_matches_module(digits_test):
    x, _, _ = digits_test
    clf = zoo.classifier("digits-cnn", device="cpu")
    assert isinstance(clf, PyTorchClassifier)
    assert clf.input_shape == (3, 64, 64) and clf.nb_classes == 10 and tuple(clf.clip_values) == (0.0, 1.0)
    model = zoo.load("digits-cnn")
    with torch.no_grad():
        expected = model(torch.from_numpy(x[:8])).numpy()
    np.testing.assert_allclose(clf.predict(x[:8]), expected, atol=1e-5)


def test_digits_cnn_layers_resolution():
    model = zoo.load("digits-cnn")
    layers = zoo.default_layers("digits-cnn")
    modules = [resolve_layer(model, name)[1] for name in layers]
    with ActivationRecorder(modules) as rec, torch.no_grad():
        model(torch.rand(1, *zoo.input_size("digits-cnn")))
    assert [tuple(o.shape[-2:]) for o in rec.outputs] == [(8, 8), (16, 16), (32, 32)]


def test_weights_path_round_trip(tmp_path):
    torch.manual_seed(3)
    model = DigitsCNN()
    path = tmp_path / "digits.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    loaded = zoo.load("digits-cnn", weights=path)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_torchvision_models_without_weights():
    resnet = zoo.load("resnet18", weights=None)
    assert isinstance(resnet, nn.Module) and not resnet.training
    assert zoo.default_layers("resnet18") == ["layer4", "layer3", "layer2"]
    assert zoo.input_size("resnet18") == (3, 224, 224)
    assert zoo.input_size("inception_v3") == (3, 299, 299)
    vgg = zoo.load("vgg11", weights=None)
    layers = zoo.default_layers("vgg11")
    assert layers == ["features.20", "features.15", "features.10"]  # the pool outputs
    assert all(isinstance(resolve_layer(vgg, name)[1], nn.MaxPool2d) for name in layers)
    # GPNN-CAM's ImageNet layers: the BN before the ReLU before each of the last three pools
    assert zoo.default_layers("vgg16") == ["features.30", "features.23", "features.16"]
    assert zoo.default_layers("vgg16_bn") == ["features.41", "features.31", "features.21"]
    vgg_bn = zoo.load("vgg16_bn", weights=None)
    assert all(
        isinstance(resolve_layer(vgg_bn, n)[1], nn.BatchNorm2d) for n in zoo.default_layers("vgg16_bn")
    )


def test_torchvision_classifier_normalises_inputs(tmp_path):
    torch.manual_seed(0)
    model = zoo.load("squeezenet1_1", weights=None)  # its head is a conv: nb_classes from a forward pass
    path = tmp_path / "squeezenet.pt"
    torch.save(model.state_dict(), path)
    clf = zoo.classifier("squeezenet1_1", weights=str(path), device="cpu")
    assert clf.nb_classes == 1000 and clf.input_shape == (3, 224, 224)
    x = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    mean = torch.tensor(zoo.IMAGENET_MEAN).reshape(1, 3, 1, 1)
    std = torch.tensor(zoo.IMAGENET_STD).reshape(1, 3, 1, 1)
    with torch.no_grad():
        expected = model((torch.from_numpy(x) - mean) / std).numpy()
    np.testing.assert_allclose(clf.predict(x), expected, rtol=1e-4, atol=1e-5)


def test_fine_tuned_head_size_from_weights_file(tmp_path):
    model = torchvision.models.mobilenet_v3_small(num_classes=20)
    torch.save(model.state_dict(), tmp_path / "voc.pt")
    loaded = zoo.load("mobilenet_v3_small", weights=tmp_path / "voc.pt")
    assert loaded.classifier[-1].out_features == 20
    assert zoo.classifier("mobilenet_v3_small", weights=tmp_path / "voc.pt", device="cpu").nb_classes == 20


def test_generic_default_layers_by_resolution():
    layers = zoo.default_layers("mobilenet_v3_small")
    with torch.device("meta"):
        model = torchvision.models.mobilenet_v3_small()
        modules = [resolve_layer(model, name)[1] for name in layers]
        with ActivationRecorder(modules) as rec, torch.no_grad():
            model(torch.zeros(1, 3, 224, 224))
    sides = [o.shape[-1] for o in rec.outputs]
    assert len(layers) == 3 and sides == [7, 14, 28]
    assert zoo.default_layers("densenet121")[0] == "features.norm5"


def test_unknown_name_lists_close_names():
    with pytest.raises(ValueError, match="resnet18") as info:
        zoo.load("resnet-18")
    assert "unknown model 'resnet-18'" in str(info.value)
    with pytest.raises(ValueError, match="digits-cnn"):
        zoo.default_layers("digit-cnn")


def test_missing_and_corrupt_weights_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.pt"):
        zoo.load("digits-cnn", weights=tmp_path / "nothere.pt")
    with pytest.raises(FileNotFoundError, match="IMAGENET1K_V1"):
        zoo.load("resnet18", weights="IMAGENET_V9")  # neither a file nor a weights name
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="corrupt.pt"):
        zoo.load("digits-cnn", weights=corrupt)
    mismatched = tmp_path / "other.pt"
    torch.save(nn.Linear(2, 2).state_dict(), mismatched)
    with pytest.raises(ValueError, match="other.pt.*does not fit"):
        zoo.load("digits-cnn", weights=mismatched)


def test_bad_device():
    with pytest.raises(ValueError, match="device"):
        zoo.classifier("digits-cnn", device="tpu")


def test_training_is_deterministic(tmp_path):
    from evaluation.train import train_digits_cnn

    kwargs = {"n_train": 128, "epochs": 1, "n_test": 32, "seed": 5, "verbose": False}
    a = train_digits_cnn(tmp_path / "a.pt", **kwargs)
    b = train_digits_cnn(tmp_path / "b.pt", **kwargs)
    assert a["accuracy"] == b["accuracy"] and 0 <= a["accuracy"] <= 1
    state_a, state_b = torch.load(tmp_path / "a.pt"), torch.load(tmp_path / "b.pt")
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert not torch.are_deterministic_algorithms_enabled()  # the global flag is restored
    with pytest.raises(ValueError, match="epochs"):
        train_digits_cnn(tmp_path / "c.pt", epochs=0)


def test_resize_size_follows_the_torchvision_weights_transforms():
    assert zoo.resize_size("resnet50", 224) == 232  # DEFAULT = IMAGENET1K_V2: 232 -> 224
    assert zoo.resize_size("resnet50", 224, "IMAGENET1K_V1") == 256
    assert zoo.resize_size("vgg16", 224) == 256
    assert zoo.resize_size("inception_v3", 299) == 342
    assert zoo.resize_size("resnet50", 64) == 66  # scaled to a smaller crop
    assert zoo.resize_size("digits-cnn", 64) == 64


@pytest.mark.parametrize("name", ["vit_b_16", "swin_t", "maxvit_t"])
def test_no_default_layers_for_transformers(name):
    with pytest.raises(ValueError, match="--layer"):
        zoo.default_layers(name)


def test_check_size():
    zoo.check_size("resnet18", 64)
    zoo.check_size("vit_b_16", 224)
    with pytest.raises(ValueError, match="at least 32"):
        zoo.check_size("resnet18", 2)
    with pytest.raises(ValueError, match="only 224 x 224"):
        zoo.check_size("vit_b_16", 64)


def test_offline_default_weights_raise_weights_unavailable(monkeypatch):
    from urllib.error import URLError

    def offline(name, weights=None, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(torchvision.models, "get_model", offline)
    with pytest.raises(zoo.WeightsUnavailableError, match="state_dict file"):
        zoo.load("resnet18", "DEFAULT")


def test_any_torch_load_failure_is_a_value_error(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise KeyError("archive/data.pkl")

    (tmp_path / "w.pt").write_bytes(b"\x80\x02x")  # binary, not a text file
    monkeypatch.setattr(torch, "load", broken)
    with pytest.raises(
        ValueError, match="could not be read as a PyTorch state_dict: KeyError: 'archive/data.pkl'"
    ):
        zoo.load("resnet18", tmp_path / "w.pt")


@pytest.mark.parametrize("device", ["cuda", "gpu"])
def test_cuda_device_without_cuda_is_refused(monkeypatch, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    message = (
        f"device '{device}' was asked for but CUDA is not available on this machine; use --device cpu or "
        "leave it unset"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        zoo.classifier("digits-cnn", device=device)
    assert zoo.classifier("digits-cnn").device.type == "cpu"  # unset: the CPU when there is no CUDA


TEXT = "is a text file, not a PyTorch state_dict (.pt/.pth saved with torch.save) or .safetensors file"


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("w.pt", b"", re.escape("is empty (0 bytes)")),
        ("w.pth", b"", re.escape("is empty (0 bytes)")),
        ("w.safetensors", b"", re.escape("is empty (0 bytes)")),
        ("w.pt", b"https://example.org/weights.pt\n", re.escape(TEXT)),
        ("w.safetensors", "poids: réseau\n".encode(), re.escape(TEXT)),
        ("w.pt", bytes(range(256)) * 4, r"could not be read as a PyTorch state_dict: \w+: \S"),
    ],
    ids=["empty-pt", "empty-pth", "empty-safetensors", "text", "utf8-text-safetensors", "binary"],
)
def test_unreadable_weights_file_says_what_it_is(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"^weights file {re.escape(str(path))} {message}"):
        zoo.load("digits-cnn", weights=path)


def test_unreadable_weights_reason_is_never_empty(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise EOFError()

    path = tmp_path / "w.pt"
    path.write_bytes(b"\x80\x02\x00")
    monkeypatch.setattr(torch, "load", broken)
    with pytest.raises(ValueError, match=r"could not be read as a PyTorch state_dict: EOFError$"):
        zoo.load("digits-cnn", weights=path)
