"""Shared plumbing for every saliency method: model unwrapping, layer lookup, input and target checks,
one-call activation recording and map normalisation.

Conventions (``docs/algorithms.md``): images ``x`` are float tensors (N,C,H,W) in the model's input
space; maps are float32 tensors (N,H,W) in [0,1] on x's device.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

Preprocess = Callable[[torch.Tensor], torch.Tensor]
Targets = int | Sequence[int] | np.ndarray | torch.Tensor | None


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def unwrap_model(model: object) -> tuple[nn.Module, Preprocess]:
    """Return ``(module, preprocess)`` for an ``nn.Module`` or an ART ``PyTorchClassifier``.

    For an ART classifier the module is ``classifier.model`` and ``preprocess`` applies the classifier's
    own (differentiable) preprocessing, so inputs stay in the classifier's input space.
    """
    if isinstance(model, nn.Module):
        return model, _identity
    try:
        from art.estimators.classification import PyTorchClassifier
    except ImportError:  # pragma: no cover - ART is a declared dependency
        PyTorchClassifier = ()  # noqa: N806
    if isinstance(model, PyTorchClassifier):
        if not model.all_framework_preprocessing:
            raise ValueError(
                "model: the PyTorchClassifier's preprocessing must be PyTorch-native "
                "(e.g. preprocessing=(mean, std)) so that gradients flow through it"
            )

        def preprocess(x: torch.Tensor) -> torch.Tensor:
            x_pre, _ = model._apply_preprocessing(x, y=None, fit=False, no_grad=False)
            return x_pre

        return model.model, preprocess
    raise TypeError(
        f"model must be a torch.nn.Module or an ART PyTorchClassifier, got {type(model).__name__}"
    )


def resolve_layer(model: nn.Module, layer: str | nn.Module) -> tuple[str, nn.Module]:
    """Find a layer by module path (``"layer4"``, ``"features.29"``) or by identity.

    An unknown name raises ``ValueError`` listing the closest valid names.
    """
    modules = dict(model.named_modules())
    if isinstance(layer, nn.Module):
        for name, module in modules.items():
            if module is layer:
                return name, module
        raise ValueError("target_layer: the given module is not a submodule of the model")
    if not isinstance(layer, str):
        raise TypeError(
            f"target_layer must be a module path string or an nn.Module, got {type(layer).__name__}"
        )
    if layer not in modules or layer == "":
        names = [n for n in modules if n]
        close = difflib.get_close_matches(layer, names, n=8, cutoff=0.3) or names[:8]
        raise ValueError(f"target_layer: unknown layer {layer!r}; close valid names: {', '.join(close)}")
    return layer, modules[layer]


def check_images(x: torch.Tensor | np.ndarray, name: str = "x", allow_empty: bool = False) -> torch.Tensor:
    """Validate a batch of images (N,C,H,W) of a floating dtype with finite values; numpy is converted. An
    empty batch (N = 0) is refused unless ``allow_empty``."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array (N,C,H,W), got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{name} must have shape (N,C,H,W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {x.dtype}")
    if x.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{name} is an empty batch")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def model_dtype(model: object) -> torch.dtype:
    """The dtype of the first floating parameter or buffer of ``model`` (an ``nn.Module``); PyTorch's
    default dtype (float32) for a module without one or for any other callable."""
    if isinstance(model, nn.Module):
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                return tensor.dtype
    return torch.get_default_dtype()


def model_images(x: torch.Tensor | np.ndarray, model: object) -> torch.Tensor:
    """Images for a saliency method: validated by :func:`check_images` (an empty batch allowed) and cast to
    :func:`model_dtype` (a float64, float16 or bfloat16 x runs in the model's dtype), on x's device.

    Args:
        x (torch.Tensor or np.ndarray): images (N,C,H,W) of any floating dtype.
        model (nn.Module or callable): the module (or forward function) the method runs.

    Returns:
        torch.Tensor: x in the model's dtype.
    """
    return check_images(x, allow_empty=True).to(model_dtype(model))


def empty_maps(x: torch.Tensor) -> torch.Tensor:
    """The maps of an empty batch of images x (0,C,H,W): float32 (0,H,W) on x's device."""
    return torch.zeros((0, *x.shape[-2:]), dtype=torch.float32, device=x.device)


def resolve_targets(targets: Targets, logits: torch.Tensor) -> torch.Tensor:
    """``targets`` (None = predicted class; an int, numpy int or 0-d integer array/tensor for every image;
    or N ints) -> long tensor (N,) on logits' device."""
    n, n_classes = logits.shape
    if targets is None:
        return logits.argmax(dim=1)
    if isinstance(targets, torch.Tensor):
        if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
            raise TypeError(f"targets must be integers, got dtype {targets.dtype}")
        targets = targets.cpu().numpy()
    array = np.asarray(targets)
    if array.dtype.kind not in "iu":
        raise TypeError(f"targets must be integers, got dtype {array.dtype}")
    t = torch.as_tensor(array.astype(np.int64))
    if t.ndim == 0:  # one class for every image: an int, numpy int or 0-d array/tensor
        t = t.expand(n)
    elif t.numel() != n:
        raise ValueError(f"targets: expected {n} class indices (one per image), got {t.numel()}")
    t = t.reshape(-1)
    if (t < 0).any() or (t >= n_classes).any():
        raise ValueError(f"targets must lie in [0, {n_classes}), got {t.tolist()}")
    return t.to(logits.device)


def class_scores(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum over the batch of each image's target logit (per-image gradients stay independent)."""
    with torch.enable_grad():
        return logits.gather(1, targets[:, None]).sum()


def gradients_of(score: torch.Tensor, activations: torch.Tensor) -> tuple[torch.Tensor]:
    """d score / d activations; works when the caller has gradients turned off."""
    with torch.enable_grad():
        return torch.autograd.grad(score, activations)


#: A map (or GPNN-CAM's regression target or activation channel) counts as constant when its spread is at
#: most this fraction of its largest magnitude (about 80 float32 round-offs): what is left is rounding
#: noise, which normalisation would stretch to full contrast.
CONSTANT_RTOL = 1e-5


def is_int(value: object) -> bool:
    """An int or numpy integer, not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    """An int, float or numpy number, not a bool (nor a string)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def normalize_maps(maps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Min-max normalise each map (N,H,W) to [0,1]; a constant map becomes all zeros, never NaN.

    Constant: a span <= ``eps`` or <= :data:`CONSTANT_RTOL` x the map's largest magnitude.
    """
    flat = maps.reshape(maps.shape[0], -1)
    low = flat.min(dim=1, keepdim=True).values
    high = flat.max(dim=1, keepdim=True).values
    span = high - low
    varies = (span > eps) & (span > CONSTANT_RTOL * torch.maximum(low.abs(), high.abs()))
    safe = torch.where(varies, span, torch.ones_like(span))
    out = torch.where(varies, (flat - low) / safe, torch.zeros_like(flat))
    return out.reshape(maps.shape).float()


def resize(t: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize (N,C,h,w) to ``size`` with align_corners=False (no-op when the size already matches)."""
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    return F.interpolate(t, size=size, mode=mode, align_corners=False)


@contextmanager
def model_in_eval(model: nn.Module) -> Iterator[None]:
    """Run ``model`` in eval mode for one call and restore every submodule's train/eval flag."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


class ActivationRecorder:
    """Records the outputs of some layers during one forward pass.

    The forward hook returns a clone of the layer output, so a following in-place op (``ReLU(inplace=True)``)
    changes the clone and the recorded tensor keeps the layer's own output. Use as a context manager: the
    hooks are removed on exit, also when the call raises.
    """

    def __init__(self, layers: Sequence[nn.Module]):
        self.layers = list(layers)
        self.outputs: list[torch.Tensor | None] = [None] * len(self.layers)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _record(self, index: int, output: torch.Tensor) -> torch.Tensor:
        return output

    def _hook(self, index: int) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"target layer {type(module).__name__} must return a tensor")
            self.outputs[index] = self._record(index, output)
            return self.outputs[index].clone()

        return hook

    def recorded(self) -> list[torch.Tensor]:
        """The recorded outputs; a layer the forward pass never reached is an error."""
        missing = [type(self.layers[i]).__name__ for i, out in enumerate(self.outputs) if out is None]
        if missing:
            raise ValueError(f"target layer(s) {missing} were not called in the model's forward pass")
        return self.outputs

    def feature_maps(self, names: Sequence[str]) -> list[torch.Tensor]:
        """:meth:`recorded`, each checked to be feature maps (N,K,h,w); ``names`` name them in errors."""
        outputs = self.recorded()
        for name, output in zip(names, outputs):
            if output.ndim != 4:
                shape = tuple(output.shape)
                raise ValueError(
                    f"target layer {name!r} must output feature maps (N,K,h,w), got shape {shape}"
                )
        return outputs

    def __enter__(self) -> ActivationRecorder:
        self._handles = [layer.register_forward_hook(self._hook(i)) for i, layer in enumerate(self.layers)]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


class LayerGradients(ActivationRecorder):
    """Records one layer's output A as an autograd leaf, for ``torch.autograd.grad(score, rec.recorded())``.

    Run the forward pass under ``torch.no_grad()``: the hook turns gradients on from the layer onwards, so
    the graph covers only the layers after A. dy/dA is unchanged (it is the gradient the layer's output
    receives), while nothing before A is kept for backward and the backward pass stops at A. The grad mode
    is restored when the ``no_grad`` block exits.
    """

    def _record(self, index: int, output: torch.Tensor) -> torch.Tensor:
        torch.set_grad_enabled(True)
        return output.detach().requires_grad_(True)


class SaliencyMethod:
    """Base class: ``maps = method(x, targets=None)`` -> float32 (N,H,W) in [0,1] on x's device.

    x of any floating dtype runs in the model's (:func:`model_images`); an empty batch gives empty maps
    (0,H,W) (:func:`empty_maps`) without running the model.
    """

    def __init__(self, model: object):
        self.model, self.preprocess = unwrap_model(model)

    def __call__(self, x: torch.Tensor, targets: Targets = None) -> torch.Tensor:
        raise NotImplementedError


class GradientCAM(SaliencyMethod):
    """A CAM computed from one layer's activations A (N,K,h,w) and the gradients G = dy_c/dA.

    Subclasses implement :meth:`combine` (A, G -> raw map (N,h,w)); the map is up-sampled bilinearly to
    the input size and min-max normalised.
    """

    def __init__(self, model: object, target_layer: str | nn.Module):
        super().__init__(model)
        self.target_layer_name, self.target_layer = resolve_layer(self.model, target_layer)

    def _activations_and_gradients(
        self, x: torch.Tensor, targets: Targets
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward/backward pass on validated images: (activations, gradients), detached."""
        with model_in_eval(self.model), LayerGradients([self.target_layer]) as rec:
            with torch.no_grad():
                logits = self.model(self.preprocess(x))
            t = resolve_targets(targets, logits)
            (activations,) = rec.feature_maps([self.target_layer_name])
            (grads,) = gradients_of(class_scores(logits, t), activations)
        return activations.detach(), grads

    def combine(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, targets: Targets = None) -> torch.Tensor:
        x = model_images(x, self.model)
        if x.shape[0] == 0:
            return empty_maps(x)
        activations, gradients = self._activations_and_gradients(x, targets)
        cam = self.combine(activations, gradients)
        return normalize_maps(resize(cam[:, None], tuple(x.shape[-2:]))[:, 0])
