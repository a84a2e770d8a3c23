"""Shared plumbing for the focused attacks: mask normalisation, saliency maps -> masks, label handling
(the check itself in :mod:`focused_attacks.inputs`) and the two ways of asking an ART estimator for
gradients.

Conventions: the attacks compute in float32 numpy (N,C,H,W); masks are float32 numpy in [0,1] of shape
(N,1,H,W) (shared over channels) or ``x.shape``; saliency maps are (N,H,W) in [0,1]. An empty batch
(N = 0) goes through every step and gives an empty result.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import numpy as np
import torch
from art.attacks.attack import EvasionAttack
from art.config import ART_NUMPY_DTYPE
from art.estimators.classification import PyTorchClassifier
from art.utils import get_labels_np_array

from focused_attacks.inputs import Labels, check_labels
from saliency import masks as saliency_masks
from saliency.base import is_int, is_real, model_in_eval
from saliency.external import as_saliency

#: Focus modes every attack supports; FocusedPGD adds ``"penalty"``.
FOCUS_MODES = ("topk", "soft")
TARGETS_REQUIRED = "Target labels `y` need to be provided for a targeted attack."
#: How far (absolute) x may lie outside the estimator's clip_values.
CLIP_TOLERANCE = 1e-6


def normalize_mask(mask: np.ndarray | torch.Tensor, x_shape: tuple[int, ...]) -> np.ndarray:
    """Broadcast a mask to (N,1,H,W) (one channel) or to ``x_shape`` (per channel), float32.

    Accepted shapes are those broadcastable to x (N,C,H,W): (H,W), (1,H,W), (C,H,W), (N,1,H,W), (1,C,H,W),
    x.shape, ... A 3-D mask is (C,H,W); one whose first dimension is N > 1 is refused as ambiguous (per-image
    masks are (N,1,H,W)). Values must lie in [0,1]; bool masks become 0/1.
    """
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"mask must be a numpy array or torch tensor, got {type(mask).__name__}")
    if not (np.issubdtype(mask.dtype, np.floating) or mask.dtype == bool):
        raise TypeError(f"mask must have a floating or bool dtype, got {mask.dtype}")
    if len(x_shape) != 4:
        raise ValueError(f"x must have shape (N,C,H,W), got shape {tuple(x_shape)}")
    if mask.ndim > 4 or mask.ndim < 2:
        raise ValueError(f"mask of shape {mask.shape} is not broadcastable to x of shape {tuple(x_shape)}")
    m = mask.astype(ART_NUMPY_DTYPE)
    if not np.isfinite(m).all():
        raise ValueError("mask contains NaN or infinite values")
    if ((m < 0) | (m > 1)).any():
        raise ValueError(f"mask values must lie in [0, 1], got values in [{m.min()}, {m.max()}]")
    if m.ndim == 3 and m.shape[0] == x_shape[0] > 1:
        raise ValueError(
            f"mask of shape {mask.shape} is ambiguous for x of shape {tuple(x_shape)}: a 3-D mask is read as "
            "(C,H,W); pass (N,1,H,W) for one mask per image (e.g. mask[:, None]) or (1,C,H,W) for one per "
            "channel"
        )
    m = m.reshape((1,) * (4 - m.ndim) + m.shape)
    if any(d not in (1, xd) for d, xd in zip(m.shape, x_shape)):
        raise ValueError(f"mask of shape {mask.shape} is not broadcastable to x of shape {tuple(x_shape)}")
    n, c, h, w = x_shape
    target = (n, 1, h, w) if m.shape[1] == 1 else (n, c, h, w)
    return np.array(np.broadcast_to(m, target), dtype=ART_NUMPY_DTYPE, copy=True)


def maps_to_mask(maps: np.ndarray | torch.Tensor, focus: str, area: float) -> np.ndarray:
    """Saliency maps (N,H,W) -> mask (N,1,H,W): top-``area`` 0/1 mask (``"topk"``) or the map itself
    clipped to [0,1] (``"soft"`` and ``"penalty"``)."""
    if isinstance(maps, torch.Tensor):
        maps = maps.detach().cpu().numpy()
    maps = np.asarray(maps, dtype=np.float32)
    if focus == "topk":
        return saliency_masks.top_k(maps, area)
    return saliency_masks.soft(maps)


def keep_outside(x: np.ndarray, x_adv: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """``x_adv`` in x's dtype, equal to ``x`` exactly where ``mask`` (broadcastable to x; None: nowhere) is 0
    (the float32 computation would otherwise round those pixels of a float64 x)."""
    out = x_adv.astype(x.dtype, copy=False)
    return out if mask is None else np.where(mask == 0, x, out)


def clip_bounds(clip_values: tuple | None, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The estimator's (min, max), scalars or per-channel arrays, as float32 tensors on ``device`` (None: no
    clipping)."""
    if clip_values is None:
        return None
    low, high = (torch.as_tensor(np.asarray(v, dtype=ART_NUMPY_DTYPE), device=device) for v in clip_values)
    return low, high


def check_focus(area: float, focus: str, modes: tuple[str, ...] = FOCUS_MODES) -> None:
    """Validate ``area`` in (0,1] and ``focus`` in ``modes``."""
    if isinstance(area, bool) or not isinstance(area, (int, float, np.floating)) or not 0.0 < area <= 1.0:
        raise ValueError(f"area must be a fraction of the image in (0, 1], got {area!r}")
    if focus not in modes:
        raise ValueError(f"focus must be one of {', '.join(map(repr, modes))}, got {focus!r}")


def is_torch_estimator(estimator: object) -> bool:
    """True for a PyTorchClassifier whose preprocessing is PyTorch-native (the fast path)."""
    return isinstance(estimator, PyTorchClassifier) and estimator.all_framework_preprocessing


@contextmanager
def frozen_eval(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode and ``requires_grad=False`` on the parameters for one attack (only input gradients are
    needed, so autograd neither records nor computes weight gradients); both are restored on exit."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    with model_in_eval(model):
        for param in trainable:
            param.requires_grad_(False)
        try:
            yield
        finally:
            for param in trainable:
                param.requires_grad_(True)


class TorchGradients:
    """Gradients from a PyTorchClassifier's model and preprocessing, all in torch on its device.

    Only the input gradient is computed (no parameter gradients), with the estimator's own loss, so the
    values equal ``estimator.loss_gradient`` / ``class_gradient``.
    """

    def __init__(self, estimator: PyTorchClassifier):
        self.estimator = estimator
        self.device = estimator.device

    def context(self) -> AbstractContextManager:
        return frozen_eval(self.estimator.model)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x_pre, _ = self.estimator._apply_preprocessing(x, y=None, fit=False, no_grad=False)
        return self.estimator.model(x_pre)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self._forward(x)

    def loss_gradient(self, x: torch.Tensor, y: torch.Tensor, per_sample: bool = False) -> torch.Tensor:
        """d loss / dx for one-hot ``y`` (B,K); ``per_sample`` undoes a batch-mean reduction."""
        return self.loss_gradient_and_logits(x, y, per_sample)[0]

    def loss_gradient_and_logits(
        self, x: torch.Tensor, y: torch.Tensor, per_sample: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`loss_gradient` and the logits at ``x`` of the same forward pass (detached)."""
        with torch.enable_grad():
            x_req = x.detach().requires_grad_(True)
            loss_fn = self.estimator._loss
            logits = self._forward(x_req)
            loss = loss_fn(logits, self.estimator.reduce_labels(y))
            if per_sample and getattr(loss_fn, "reduction", None) == "mean":
                loss = loss * x.shape[0]
            (grad,) = torch.autograd.grad(loss, x_req)
        return grad, logits.detach()

    def margin_gradient(self, x: torch.Tensor, add: torch.Tensor, sub: torch.Tensor) -> torch.Tensor:
        """d (z_add - z_sub) / dx per sample, for logit indices ``add``, ``sub`` (B,)."""
        with torch.enable_grad():
            x_req = x.detach().requires_grad_(True)
            z = self._forward(x_req)
            margin = z.gather(1, add[:, None]) - z.gather(1, sub[:, None])
            (grad,) = torch.autograd.grad(margin.sum(), x_req)
        return grad


class ARTGradients:
    """Gradients through ART's generic calls (``loss_gradient``, ``class_gradient``, ``predict``) with numpy
    round trips; works for any ART classifier with those mixins. Tensors stay on the CPU."""

    def __init__(self, estimator: object, batch_size: int):
        self.estimator = estimator
        self.batch_size = batch_size
        self.device = torch.device("cpu")

    def context(self) -> AbstractContextManager:
        return nullcontext()

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        out = self.estimator.predict(x.numpy().astype(ART_NUMPY_DTYPE), batch_size=self.batch_size)
        return torch.from_numpy(np.asarray(out, dtype=ART_NUMPY_DTYPE))

    def loss_gradient(self, x: torch.Tensor, y: torch.Tensor, per_sample: bool = False) -> torch.Tensor:
        """The estimator's loss gradient; ``per_sample``: the gradient of each sample's own loss, i.e. a batch
        mean is undone (scaled by B when the loss, e.g. a PyTorchClassifier's ``loss``, says ``reduction=
        "mean"``; one sample per call when the reduction is unknown)."""
        x_np, y_np = x.numpy(), y.numpy()
        reduction = getattr(getattr(self.estimator, "loss", None), "reduction", None)
        if per_sample and reduction not in ("mean", "sum"):
            grad = np.concatenate(
                [self.estimator.loss_gradient(x_np[i : i + 1], y_np[i : i + 1]) for i in range(len(x_np))]
            )
        else:
            grad = self.estimator.loss_gradient(x_np, y_np)
            if per_sample and reduction == "mean":
                grad = grad * len(x_np)
        return torch.from_numpy(np.asarray(grad, dtype=ART_NUMPY_DTYPE).reshape(x.shape))

    def loss_gradient_and_logits(
        self, x: torch.Tensor, y: torch.Tensor, per_sample: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`loss_gradient` and the estimator's predictions at ``x`` (one more call)."""
        return self.loss_gradient(x, y, per_sample), self.logits(x)

    def margin_gradient(self, x: torch.Tensor, add: torch.Tensor, sub: torch.Tensor) -> torch.Tensor:
        x_np = x.numpy().astype(ART_NUMPY_DTYPE)
        grad = self.estimator.class_gradient(x_np, label=add.numpy())
        grad = grad - self.estimator.class_gradient(x_np, label=sub.numpy())
        return torch.from_numpy(np.asarray(grad, dtype=ART_NUMPY_DTYPE).reshape(x.shape))


class FocusedEvasionAttack(EvasionAttack):
    """Base of the focused attacks: saliency/mask resolution, labels and the gradient back-end.

    Subclasses set ``attack_params``, ``_estimator_requirements`` and ``focus_modes`` and implement
    :meth:`_attack` (x, one-hot labels, mask or None, per-sample eps or None) -> x_adv.
    """

    focus_modes: tuple[str, ...] = FOCUS_MODES

    def __init__(
        self,
        estimator: object,
        saliency: Callable | object | None,
        area: float,
        focus: str,
        targeted: bool,
        batch_size: int,
    ):
        super().__init__(estimator=estimator)
        self.saliency = saliency
        self.area = area
        self.focus = focus
        self._targeted = targeted
        self.batch_size = batch_size
        self.last_mask_: np.ndarray | None = None

    def _check_focus_params(self) -> None:
        check_focus(self.area, self.focus, self.focus_modes)
        if self.saliency is not None:
            # a pytorch-grad-cam CAM or captum attribution object is wrapped; a non-callable: TypeError
            self.saliency = as_saliency(self.saliency, "saliency")
            if not is_torch_estimator(self.estimator):
                raise TypeError(
                    "saliency: a saliency method needs a torch model, i.e. an ART PyTorchClassifier with "
                    "PyTorch-native preprocessing; for other estimators pass `maps` or `mask` to generate()"
                )
        if not isinstance(self.targeted, bool):
            raise ValueError("The flag `targeted` has to be of type bool.")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")

    # ----------------------------------------------------------------------------------------- inputs
    def _gradients(self) -> TorchGradients | ARTGradients:
        if is_torch_estimator(self.estimator):
            return TorchGradients(self.estimator)
        return ARTGradients(self.estimator, self.batch_size)

    def _check_x(self, x: np.ndarray) -> None:
        """x: a floating numpy array (N,C,H,W), finite and inside the estimator's clip_values."""
        if not isinstance(x, np.ndarray):
            raise TypeError(f"x must be a numpy array (N,C,H,W), got {type(x).__name__}")
        if x.ndim != 4:
            raise ValueError(f"x must have shape (N,C,H,W), got shape {x.shape}")
        if not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"x must have a floating dtype, got {x.dtype}")
        if not np.isfinite(x).all():
            raise ValueError("x contains NaN or infinite values")
        if self.estimator.clip_values is None:
            return
        low, high = self.estimator.clip_values
        if (x < low - CLIP_TOLERANCE).any() or (x > high + CLIP_TOLERANCE).any():
            raise ValueError(
                f"x must lie within the estimator's clip_values ({low}, {high}), got values in "
                f"[{x.min()}, {x.max()}]"
            )

    def _predict_classes(self, x: np.ndarray) -> np.ndarray:
        return np.argmax(predict(self.estimator, x, self.batch_size), axis=1)

    def _labels(self, x: np.ndarray, y: Labels | None) -> np.ndarray:
        """One-hot float32 labels (N,K): ``y`` checked by :func:`check_labels`, else (untargeted) the
        predictions."""
        if y is not None:
            return check_labels(y, len(x), self.estimator.nb_classes)
        if self.targeted:
            raise ValueError(TARGETS_REQUIRED)
        return get_labels_np_array(predict(self.estimator, x, self.batch_size)).astype(ART_NUMPY_DTYPE)

    def _attacked_classes(self, x: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """The attacked (true) class: the labels if untargeted, the clean prediction if targeted."""
        return self._predict_classes(x) if self.targeted else np.argmax(labels, axis=1)

    def saliency_maps(self, x: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """Run ``self.saliency`` batch by batch on the estimator's device -> (N,H,W) float32 numpy."""
        if self.saliency is None:
            raise ValueError("saliency: no saliency method was given to the attack")
        device = self.estimator.device
        out = [np.zeros((0, *x.shape[2:]), np.float32)]  # an empty batch gets empty maps
        for start in range(0, len(x), self.batch_size):
            xb = torch.from_numpy(x[start : start + self.batch_size].copy()).to(device)  # x stays intact
            tb = torch.from_numpy(np.asarray(classes[start : start + self.batch_size], dtype=np.int64))
            maps = self.saliency(xb, tb.to(device))
            out.append(torch.as_tensor(maps).detach().float().cpu().numpy())
        maps = np.concatenate(out)
        if maps.shape != (x.shape[0], *x.shape[2:]):
            raise ValueError(
                f"saliency returned maps of shape {maps.shape}, expected {(x.shape[0], *x.shape[2:])}"
            )
        return maps

    def _resolve_mask(
        self,
        x: np.ndarray,
        labels: np.ndarray,
        mask: np.ndarray | None,
        maps: np.ndarray | None,
    ) -> np.ndarray | None:
        """mask > maps > saliency(x, attacked class) > None (whole image)."""
        if mask is not None:
            return normalize_mask(mask, x.shape)
        if maps is None and self.saliency is not None:
            maps = self.saliency_maps(x, self._attacked_classes(x, labels))
        if maps is None:
            return None
        maps = maps.detach().cpu().numpy() if isinstance(maps, torch.Tensor) else np.asarray(maps)
        if maps.shape != (x.shape[0], *x.shape[2:]):
            raise ValueError(f"maps must have shape (N,H,W) = {(x.shape[0], *x.shape[2:])}, got {maps.shape}")
        return maps_to_mask(maps, self.focus, self.area)

    def generate(
        self,
        x: np.ndarray,
        y: Labels | None = None,
        mask: np.ndarray | None = None,
        maps: np.ndarray | None = None,
        **kwargs,
    ) -> np.ndarray:
        """Adversarial examples for x (N,C,H,W), floating and within clip_values -> same shape and dtype.

        The attack runs in float32 (as ART's); pixels where the mask is 0 are returned as x exactly. An
        empty batch (N = 0) gives an empty result (0,C,H,W) once its arguments are checked.

        :param y: true labels (untargeted; default the model's predictions) or target labels (targeted),
            as class indices (N,) or one-hot rows (N,K), a numpy array, list or tensor; anything else
            raises (:func:`focused_attacks.inputs.check_labels`).
        :param mask: perturbation mask in [0,1] broadcastable to x ((H,W), (1,H,W), (N,1,H,W), x.shape).
        :param maps: saliency maps (N,H,W) in [0,1], turned into a mask by ``focus`` and ``area``.
        Without mask and maps, ``saliency(x, attacked class)`` gives the maps; without it, the whole image.
        """
        if kwargs:
            raise TypeError(f"generate() got unexpected keyword arguments: {', '.join(kwargs)}")
        self._check_x(x)
        x32 = x.astype(ART_NUMPY_DTYPE)
        labels = self._labels(x32, y)
        resolved = self._resolve_mask(x32, labels, mask, maps)
        self.last_mask_ = (
            resolved if resolved is not None else np.ones((x.shape[0], 1, *x.shape[2:]), ART_NUMPY_DTYPE)
        )
        x_adv = self._attack(x32, labels, resolved, None)
        return keep_outside(x, x_adv, None if self.focus == "penalty" else resolved)

    def _attack(
        self, x: np.ndarray, labels: np.ndarray, mask: np.ndarray | None, eps: np.ndarray | None
    ) -> np.ndarray:
        raise NotImplementedError


def lp_direction(grad: torch.Tensor, norm: float) -> torch.Tensor:
    """Steepest-ascent direction of unit ``norm`` for ``grad`` (B,...): sign for Linf, one-hot of the
    largest entry for L1, ``(|g|/||g||_q)^(q-1) sign(g)`` for p > 1 (q the dual exponent)."""
    if norm == np.inf:
        return grad.sign()
    flat = grad.reshape(len(grad), -1)
    if norm == 1:
        unit = torch.zeros_like(flat)
        unit[torch.arange(len(flat)), flat.abs().argmax(dim=1)] = 1
    else:
        dual = norm / (norm - 1)
        q_norm = torch.linalg.norm(flat, ord=dual, dim=1, keepdim=True)
        unit = (flat.abs() * torch.where(q_norm == 0, q_norm, 1 / q_norm)) ** (dual - 1)
    return unit.reshape(grad.shape) * grad.sign()


def project(delta: torch.Tensor, eps: torch.Tensor, norm: float) -> torch.Tensor:
    """Project perturbations (B,...) onto the ``norm`` ball of radius ``eps`` (B,1,1,1): clip for Linf,
    rescale for finite p (exact for L2)."""
    flat = delta.reshape(len(delta), -1)
    radius = eps.reshape(len(eps), -1).to(flat.dtype)
    if norm == np.inf:
        flat = flat.sign() * torch.minimum(flat.abs(), radius)
    else:
        size = torch.linalg.norm(flat, ord=norm, dim=1, keepdim=True)
        factor = torch.where(size == 0, size, torch.minimum(torch.ones_like(size), radius / size))
        flat = flat * factor
    return flat.reshape(delta.shape)


def parse_norm(norm: int | float | str) -> float:
    """``"inf"``/``np.inf``/p >= 1 -> float; anything else -> ValueError."""
    try:
        value = np.inf if norm == "inf" else float(norm)
    except (TypeError, ValueError):
        raise ValueError(f'norm must be "inf", np.inf or a real p >= 1, got {norm!r}') from None
    if not value >= 1:
        raise ValueError(f'norm must be "inf", np.inf or a real p >= 1, got {norm!r}')
    return value


def predict(estimator: object, x: np.ndarray, batch_size: int) -> np.ndarray:
    """``estimator.predict(x)`` (N,K); an empty batch gives (0,K) without asking ART (which fails on it)."""
    if len(x) == 0:
        return np.zeros((0, estimator.nb_classes), ART_NUMPY_DTYPE)
    return estimator.predict(x, batch_size=batch_size)


def success_mask(
    estimator: object, x_adv: np.ndarray, labels: np.ndarray, targeted: bool, batch_size: int
) -> np.ndarray:
    """(N,) bool: prediction on x_adv equals the target (targeted) or differs from ``labels`` (untargeted)."""
    pred = np.argmax(predict(estimator, x_adv, batch_size), axis=1)
    cls = np.argmax(labels, axis=1)
    return pred == cls if targeted else pred != cls


def check_number(name: str, value: object, allow_zero: bool) -> None:
    """Raise ValueError naming ``name`` unless ``value`` is a finite number >= 0 (> 0 if not allow_zero)."""
    if not is_real(value) or not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")


def check_count(name: str, value: object) -> None:
    """Raise ValueError naming ``name`` unless ``value`` is an int >= 0."""
    if not is_int(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
