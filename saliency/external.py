"""Saliency maps of pytorch-grad-cam and captum as ordinary saliency methods.

Any CAM object of `pytorch-grad-cam <https://github.com/jacobgil/pytorch-grad-cam>`_ and any attribution
method of `captum <https://captum.ai>`_ becomes a callable ``maps = method(x, targets=None)`` with the
project's conventions: x (N,C,H,W) float, targets None (predicted class), an int or N ints, maps (N,H,W)
float32 in [0,1] on x's device, min-max normalised by :func:`saliency.base.normalize_maps`. So it can
focus every attack (``saliency=``) and take part in the evaluations. The libraries are optional
(``pip install 'focused-attacks[extra]'``) and imported only when used.

The library objects hold their own model. For an ART ``PyTorchClassifier`` build them on
:func:`as_module` (the classifier's module with its preprocessing), or use :func:`build_pytorch_grad_cam`,
:func:`build_captum` and :func:`occlusion`, which take a module or a classifier.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import numpy as np
import torch
from torch import nn

from saliency.base import (
    Preprocess,
    Targets,
    empty_maps,
    is_int,
    model_images,
    model_in_eval,
    normalize_maps,
    resolve_layer,
    resolve_targets,
    unwrap_model,
)

#: How to install the optional libraries.
EXTRA = "pip install 'focused-attacks[extra]'"
#: Channel reductions of captum attributions (N,C,h,w) -> (N,h,w), see :func:`from_captum`.
REDUCTIONS = ("abs-sum", "sum", "max-abs")


def _import(module: str, package: str) -> Any:
    """Import ``module`` of the optional ``package``; missing: ImportError naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"{package} could not be imported ({err}); {EXTRA} (or pip install {package})"
        ) from err


class _Preprocessed(nn.Module):
    """``model(preprocess(x))``: an ART classifier's module with its preprocessing, as one module."""

    def __init__(self, model: nn.Module, preprocess: Preprocess):
        super().__init__()
        self.model = model
        self.preprocess = preprocess

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.preprocess(x))


def as_module(model: object) -> nn.Module:
    """The ``nn.Module`` that maps input images to logits: ``model`` itself, or for an ART
    ``PyTorchClassifier`` its module, wrapped with the classifier's preprocessing when it has some.

    Args:
        model: an ``nn.Module`` or an ART ``PyTorchClassifier`` with PyTorch-native preprocessing.

    Returns:
        A module to build pytorch-grad-cam or captum objects on; its layers are the classifier's own.

    Example:
        >>> cam = pytorch_grad_cam.GradCAM(as_module(classifier), [classifier.model.layer4])
    """
    module, preprocess = unwrap_model(model)
    if isinstance(model, nn.Module) or not getattr(model, "preprocessing_operations", None):
        return module
    return _Preprocessed(module, preprocess)


def _logits(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """One forward pass without gradients; the output must be scores (N, classes)."""
    with torch.no_grad():
        logits = forward(x)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != x.shape[0]:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"model must return class scores (N, classes) for x (N,C,H,W), got {shape}")
    return logits


@contextmanager
def _kept_grads(model: nn.Module) -> Iterator[None]:
    """Restore the parameters' ``.grad`` after a call that runs ``backward()`` on the model."""
    saved = [(param, param.grad) for param in model.parameters()]
    try:
        yield
    finally:
        for param, grad in saved:
            param.grad = grad


def _finish(raw: torch.Tensor, x: torch.Tensor, source: str) -> torch.Tensor:
    """Raw maps (N,H,W) -> normalised float32 maps on x's device; shape and finiteness are checked."""
    expected = (x.shape[0], *x.shape[-2:])
    if tuple(raw.shape) != expected:
        raise ValueError(f"{source} returned maps of shape {tuple(raw.shape)}, expected {expected}")
    if not torch.isfinite(raw).all():
        raise ValueError(f"{source} returned NaN or infinite values")
    return normalize_maps(raw.float()).to(x.device)


class PytorchGradCamSaliency:
    """A pytorch-grad-cam CAM object as a saliency method; made by :func:`from_pytorch_grad_cam`."""

    def __init__(self, cam: Any):
        pgc = _import("pytorch_grad_cam", "grad-cam")
        if not isinstance(cam, pgc.base_cam.BaseCAM):
            raise TypeError(f"cam must be a pytorch-grad-cam CAM object (BaseCAM), got {type(cam).__name__}")
        cam.activations_and_grads.release()  # the hooks its constructor registered
        self.cam = cam

    def _hooks(self) -> Any:
        """A fresh ``ActivationsAndGradients`` for one call (the library's own hook holder)."""
        pgc = _import("pytorch_grad_cam", "grad-cam")
        cam = self.cam
        extra = (cam.detach,) if hasattr(cam, "detach") else ()  # grad-cam >= 1.5.5
        return pgc.ActivationsAndGradients(cam.model, cam.target_layers, cam.reshape_transform, *extra)

    def __call__(self, x: torch.Tensor, targets: Targets = None) -> torch.Tensor:
        """Maps (N,H,W) in [0,1] on x's device for x (N,C,H,W) and ``targets`` (None: predicted)."""
        x = model_images(x, self.cam.model)
        if x.shape[0] == 0:
            return empty_maps(x)
        pgc = _import("pytorch_grad_cam", "grad-cam")
        cam, xd = self.cam, x.detach().to(self.cam.device)
        with model_in_eval(cam.model), _kept_grads(cam.model):
            classes = resolve_targets(targets, _logits(cam.model, xd))
            target_objects = [pgc.utils.model_targets.ClassifierOutputTarget(c) for c in classes.tolist()]
            cam.activations_and_grads = self._hooks()
            try:
                raw = cam(xd, target_objects)
            finally:
                cam.activations_and_grads.release()
                if isinstance(getattr(cam, "outputs", None), torch.Tensor):
                    cam.outputs = cam.outputs.detach()  # frees the graph kept by backward(retain_graph)
        return _finish(torch.from_numpy(np.asarray(raw, dtype=np.float32)), x, type(cam).__name__)


def from_pytorch_grad_cam(cam: Any) -> PytorchGradCamSaliency:
    """A pytorch-grad-cam CAM object (GradCAM, ScoreCAM, EigenCAM, FullGrad, AblationCAM, ...) as a
    saliency method.

    Each call registers the library's hooks on the CAM's target layers, runs the CAM with
    ``ClassifierOutputTarget`` targets and releases the hooks (also when it raises); the hooks the CAM's
    constructor registered are released at once. The parameters' ``.grad`` are restored after the call
    and the model's train/eval flags too. The library's maps (already min-max scaled and resized to the
    input) are normalised once more by :func:`saliency.base.normalize_maps` (a constant map becomes 0).

    Args:
        cam: a CAM object built on the model as pytorch-grad-cam documents (for an ART classifier on
            :func:`as_module`).

    Returns:
        ``maps = method(x, targets=None)``: x (N,C,H,W) float, targets None (predicted class), an int or
        N ints -> (N,H,W) float32 in [0,1] on x's device.

    Example:
        >>> from pytorch_grad_cam import ScoreCAM
        >>> method = from_pytorch_grad_cam(ScoreCAM(model, [model.layer4]))
        >>> maps = method(x, targets=[3, 7])
    """
    return PytorchGradCamSaliency(cam)


def _reduce(attributions: torch.Tensor, reduce: str) -> torch.Tensor:
    """(N,C,h,w) -> (N,1,h,w) by :data:`REDUCTIONS`."""
    if reduce == "abs-sum":
        return attributions.abs().sum(dim=1, keepdim=True)
    if reduce == "sum":
        return attributions.sum(dim=1, keepdim=True)
    return attributions.abs().amax(dim=1, keepdim=True)


class CaptumSaliency:
    """A captum attribution method as a saliency method; made by :func:`from_captum`."""

    def __init__(self, method: Any, reduce: str = "abs-sum", **attribute_kwargs: Any):
        attr = _import("captum.attr", "captum")
        if not isinstance(method, attr.Attribution):
            raise TypeError(f"method must be a captum attribution method, got {type(method).__name__}")
        if reduce not in REDUCTIONS:
            raise ValueError(f"reduce must be one of {', '.join(map(repr, REDUCTIONS))}, got {reduce!r}")
        reserved = sorted({"inputs", "target"} & set(attribute_kwargs))
        if reserved:
            raise ValueError(f"attribute_kwargs: {', '.join(reserved)} are set by the adapter")
        self.method = method
        self.reduce = reduce
        self.attribute_kwargs = attribute_kwargs

    def _kwargs(self, x: torch.Tensor) -> dict[str, Any]:
        """Keyword arguments of ``attribute`` for images x."""
        return self.attribute_kwargs

    def __call__(self, x: torch.Tensor, targets: Targets = None) -> torch.Tensor:
        """Maps (N,H,W) in [0,1] on x's device for x (N,C,H,W) and ``targets`` (None: predicted)."""
        forward = self.method.forward_func
        x = model_images(x, forward)
        if x.shape[0] == 0:
            return empty_maps(x)
        attr = _import("captum.attr", "captum")
        mode = model_in_eval(forward) if isinstance(forward, nn.Module) else nullcontext()
        with mode:
            classes = resolve_targets(targets, _logits(forward, x.detach()))
            inputs = x.detach().requires_grad_(isinstance(self.method, attr.GradientAttribution))
            out = self.method.attribute(inputs, target=classes, **self._kwargs(x))
        source = type(self.method).__name__
        if isinstance(out, tuple) and len(out) == 1:
            out = out[0]
        if not isinstance(out, torch.Tensor) or out.ndim != 4 or out.shape[0] != x.shape[0]:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
            raise ValueError(f"{source} must return one attribution tensor (N,C,h,w), got {got}")
        raw = _reduce(out.detach().float(), self.reduce)
        if tuple(raw.shape[-2:]) != tuple(x.shape[-2:]):  # a layer attribution
            raw = attr.LayerAttribution.interpolate(raw, tuple(x.shape[-2:]), interpolate_mode="bilinear")
        return _finish(raw[:, 0], x, source)


def from_captum(method: Any, reduce: str = "abs-sum", **attribute_kwargs: Any) -> CaptumSaliency:
    """A captum attribution method (IntegratedGradients, Saliency, Occlusion, LayerGradCam, ...) as a
    saliency method.

    Each call runs ``method.attribute(x, target=classes, **attribute_kwargs)``, reduces the attribution
    (N,C,h,w) over its channels with ``reduce``, up-samples a layer attribution bilinearly to the input
    size (``LayerAttribution.interpolate``) and min-max normalises (:func:`saliency.base.normalize_maps`).

    Args:
        method: a captum attribution object built on the model (for an ART classifier on
            :func:`as_module`).
        reduce: the channel reduction. ``"abs-sum"`` (default): sum_c |a_c|, how much a pixel matters
            whatever the sign. ``"sum"``: sum_c a_c, signed: evidence for the class is high, against it
            low (use it for LayerGradCam and Occlusion, whose sign is meaningful). ``"max-abs"``:
            max_c |a_c|, Simonyan et al.'s reduction of the gradient saliency map.
        **attribute_kwargs: passed to ``attribute`` on every call (``n_steps``, ``baselines``,
            ``sliding_window_shapes``, ``relu_attributions``, ...); not ``inputs`` nor ``target``.

    Returns:
        ``maps = method(x, targets=None)``: x (N,C,H,W) float, targets None (predicted class), an int or
        N ints -> (N,H,W) float32 in [0,1] on x's device.

    Example:
        >>> from captum.attr import IntegratedGradients, LayerGradCam
        >>> ig = from_captum(IntegratedGradients(model), n_steps=32, internal_batch_size=32)
        >>> cam = from_captum(LayerGradCam(model, model.layer4), reduce="sum", relu_attributions=True)
        >>> maps = ig(x)
    """
    return CaptumSaliency(method, reduce, **attribute_kwargs)


class OcclusionSaliency(CaptumSaliency):
    """captum's Occlusion with a window and stride given at a reference image size and scaled to each
    call's images; made by :func:`occlusion`."""

    def __init__(
        self, method: Any, window: int, stride: int, reference: int, reduce: str, **attribute_kwargs: Any
    ):
        for arg, value in (("window", window), ("stride", stride), ("reference", reference)):
            if not is_int(value) or value <= 0:
                raise ValueError(f"{arg} must be a positive integer, got {value!r}")
        super().__init__(method, reduce, **attribute_kwargs)
        self.window, self.stride, self.reference = int(window), int(stride), int(reference)

    def _kwargs(self, x: torch.Tensor) -> dict[str, Any]:
        c, h, w = x.shape[1:]
        window = [max(1, round(self.window * side / self.reference)) for side in (h, w)]
        stride = [max(1, round(self.stride * side / self.reference)) for side in (h, w)]
        return {"sliding_window_shapes": (c, *window), "strides": (c, *stride), **self.attribute_kwargs}


def occlusion(
    model: object,
    window: int = 16,
    stride: int = 8,
    reference: int = 224,
    reduce: str = "sum",
    **attribute_kwargs: Any,
) -> OcclusionSaliency:
    """captum's Occlusion (Zeiler and Fergus) with a square window that scales with the image size.

    Args:
        model: an ``nn.Module`` or an ART ``PyTorchClassifier``.
        window: side of the occluding window (all channels) at ``reference`` px; H x W images get
            ``round(window * H / reference)`` x ``round(window * W / reference)`` windows (at least 1).
        stride: step of the window at ``reference`` px, scaled the same way.
        reference: the image side ``window`` and ``stride`` refer to.
        reduce: channel reduction, see :func:`from_captum`; ``"sum"`` keeps the sign (a high value: hiding
            the pixel lowers the class score).
        **attribute_kwargs: passed to ``Occlusion.attribute`` (``baselines``, default 0;
            ``perturbations_per_eval``).

    Returns:
        A saliency method ``maps = method(x, targets=None)``.

    Example:
        >>> maps = occlusion(classifier, perturbations_per_eval=32)(x)  # 64 px: 5 x 5 window, stride 2
    """
    attr = _import("captum.attr", "captum")
    return OcclusionSaliency(
        attr.Occlusion(as_module(model)), window, stride, reference, reduce, **attribute_kwargs
    )


def _layer(model: object, layer: str | nn.Module) -> nn.Module:
    """The layer (a module path in the model's own module, or the module) of an nn.Module or classifier."""
    return resolve_layer(unwrap_model(model)[0], layer)[1]


def build_pytorch_grad_cam(
    cam_class: str, model: object, layers: Sequence[str | nn.Module] = (), batch_size: int | None = None
) -> PytorchGradCamSaliency:
    """pytorch-grad-cam's ``cam_class`` built on ``model`` and ``layers``, as a saliency method.

    Args:
        cam_class: a CAM class name of ``pytorch_grad_cam`` (``"ScoreCAM"``, ``"EigenCAM"``, ...).
        model: an ``nn.Module`` or an ART ``PyTorchClassifier`` (its preprocessing is applied).
        layers: target layers, module paths of the model's module (``"layer4"``) or modules; FullGrad
            takes none (it uses every bias).
        batch_size: images per forward pass of ScoreCAM and AblationCAM (None: the library's default).

    Returns:
        :func:`from_pytorch_grad_cam` of the CAM object.

    Example:
        >>> method = build_pytorch_grad_cam("ScoreCAM", classifier, ["features.13"], batch_size=32)
    """
    pgc = _import("pytorch_grad_cam", "grad-cam")
    cam_type = getattr(pgc, cam_class, None)
    if not isinstance(cam_type, type) or not issubclass(cam_type, pgc.base_cam.BaseCAM):
        raise ValueError(f"cam_class: {cam_class!r} is not a CAM class of pytorch_grad_cam")
    if batch_size is not None and (not is_int(batch_size) or batch_size <= 0):
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    cam = cam_type(model=as_module(model), target_layers=[_layer(model, layer) for layer in layers])
    if batch_size is not None:
        cam.batch_size = int(batch_size)
    return from_pytorch_grad_cam(cam)


def build_captum(
    method_class: str,
    model: object,
    layer: str | nn.Module | None = None,
    reduce: str = "abs-sum",
    **attribute_kwargs: Any,
) -> CaptumSaliency:
    """captum's ``method_class`` built on ``model`` (and ``layer`` for a layer method), as a saliency method.

    Args:
        method_class: a class name of ``captum.attr`` (``"IntegratedGradients"``, ``"LayerGradCam"``, ...).
        model: an ``nn.Module`` or an ART ``PyTorchClassifier`` (its preprocessing is applied).
        layer: the layer of a layer method, a module path of the model's module or the module.
        reduce: channel reduction, see :func:`from_captum`.
        **attribute_kwargs: passed to ``attribute`` on every call.

    Returns:
        :func:`from_captum` of the method.

    Example:
        >>> method = build_captum("IntegratedGradients", classifier, n_steps=32, internal_batch_size=32)
    """
    attr = _import("captum.attr", "captum")
    method_type = getattr(attr, method_class, None)
    if not isinstance(method_type, type) or not issubclass(method_type, attr.Attribution):
        raise ValueError(f"method_class: {method_class!r} is not an attribution class of captum.attr")
    module = as_module(model)
    method = method_type(module) if layer is None else method_type(module, _layer(model, layer))
    return from_captum(method, reduce, **attribute_kwargs)


def as_saliency(obj: object, name: str = "saliency") -> Callable[..., torch.Tensor]:
    """A saliency method from ``obj``: a pytorch-grad-cam CAM object (:func:`from_pytorch_grad_cam`) or a
    captum attribution method (:func:`from_captum`, default settings) is wrapped; any other callable
    ``maps = obj(x, targets)`` is returned as it is.

    Args:
        obj: the object to use as a saliency method.
        name: the argument name used in the error message.

    Returns:
        A callable ``maps = method(x, targets)``.

    Raises:
        TypeError: ``obj`` is neither a library object nor callable.

    Example:
        >>> attack = FocusedPGD(classifier, saliency=as_saliency(ScoreCAM(model, [model.layer4])))
    """
    base_cam = sys.modules.get("pytorch_grad_cam.base_cam")  # a CAM object means the library is loaded
    if base_cam is not None and isinstance(obj, base_cam.BaseCAM):
        return from_pytorch_grad_cam(obj)
    captum_attr = sys.modules.get("captum.attr")
    if captum_attr is not None and isinstance(obj, captum_attr.Attribution):
        return from_captum(obj)
    if not callable(obj):
        raise TypeError(
            f"{name} must be a callable maps = {name}(x, targets), a pytorch-grad-cam CAM object or a captum "
            f"attribution method, got {type(obj).__name__}"
        )
    return obj
