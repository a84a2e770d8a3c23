"""The base class of the focused attacks and the batch loop FGSM and PGD share.

:class:`FocusedEvasionAttack` checks x and the labels (:mod:`focused_attacks.inputs`), resolves the focus
mask (:mod:`focused_attacks.masks`) and hands float32 x, one-hot labels and the mask to a subclass's
``_attack``; :func:`run_batches` runs :func:`focused_attacks.steps.gradient_steps` batch by batch with the
gradient back-end of :mod:`focused_attacks.gradients`. An empty batch (N = 0) goes through every step and
gives an empty result.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from art.attacks.attack import EvasionAttack
from art.config import ART_NUMPY_DTYPE
from art.utils import get_labels_np_array
from tqdm.auto import trange

from focused_attacks.gradients import ARTGradients, TorchGradients, is_torch_estimator
from focused_attacks.inputs import Labels, check_labels
from focused_attacks.masks import FOCUS_MODES, check_focus, keep_outside, maps_to_mask, normalize_mask
from focused_attacks.steps import StepSettings, gradient_steps
from saliency.external import as_saliency

TARGETS_REQUIRED = "Target labels `y` need to be provided for a targeted attack."
#: How far (absolute) x may lie outside the estimator's clip_values.
CLIP_TOLERANCE = 1e-6


class FocusedEvasionAttack(EvasionAttack):
    """Base of the focused attacks: saliency/mask resolution, labels and the gradient back-end.

    Subclasses set ``attack_params``, ``_estimator_requirements`` and ``focus_modes`` and implement
    :meth:`_attack`. The protected methods :meth:`_prepare`, :meth:`_attacked_maps`, :meth:`_resolve_mask`,
    :meth:`_perturb_at` and :meth:`_fooled` are what :meth:`generate` and the searches
    (:mod:`focused_attacks.search`) drive an attack with.
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

    # ------------------------------------------------------------------------------------------ inputs
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
        mask: np.ndarray | None = None,
        maps: np.ndarray | None = None,
    ) -> np.ndarray | None:
        """The focus mask for prepared ``x`` and ``labels``, also kept in ``last_mask_``.

        Precedence: ``mask`` > ``maps`` > ``saliency(x, attacked class)`` > none (the whole image).

        Args:
            x: float32 images (N,C,H,W) from :meth:`_prepare`.
            labels: one-hot labels (N,K) from :meth:`_prepare`.
            mask: a mask broadcastable to x (:func:`normalize_mask`), or None.
            maps: saliency maps (N,H,W), turned into a mask by ``focus`` and ``area``, or None.

        Returns:
            The mask (N,1,H,W) or x.shape, float32 in [0,1]; None for the whole image, where ``last_mask_``
            is all ones (N,1,H,W).
        """
        resolved = None
        if mask is not None:
            resolved = normalize_mask(mask, x.shape)
        else:
            if maps is None and self.saliency is not None:
                maps = self._attacked_maps(x, labels)
            if maps is not None:
                maps = maps.detach().cpu().numpy() if isinstance(maps, torch.Tensor) else np.asarray(maps)
                if maps.shape != (x.shape[0], *x.shape[2:]):
                    expected = (x.shape[0], *x.shape[2:])
                    raise ValueError(f"maps must have shape (N,H,W) = {expected}, got {maps.shape}")
                resolved = maps_to_mask(maps, self.focus, self.area)
        whole = np.ones((x.shape[0], 1, *x.shape[2:]), ART_NUMPY_DTYPE)
        self.last_mask_ = whole if resolved is None else resolved
        return resolved

    # ------------------------------------------------------------------- the searches' protected API
    def _prepare(self, x: np.ndarray, y: Labels | None) -> tuple[np.ndarray, np.ndarray]:
        """Check ``x`` and ``y`` as :meth:`generate` does.

        Args:
            x: images (N,C,H,W), floating, finite and within the estimator's clip_values.
            y: labels as :meth:`generate` takes them, or None.

        Returns:
            ``(x32, labels)``: x as float32 and one-hot float32 labels (N,K).
        """
        self._check_x(x)
        x32 = x.astype(ART_NUMPY_DTYPE)
        return x32, self._labels(x32, y)

    def _attacked_maps(self, x: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Saliency maps (N,H,W) of the attacked class (:meth:`_attacked_classes`) for prepared x."""
        return self.saliency_maps(x, self._attacked_classes(x, labels))

    def _perturb_at(
        self, x: np.ndarray, labels: np.ndarray, eps: np.ndarray | None, mask: np.ndarray | None
    ) -> np.ndarray:
        """One run of the attack on prepared ``x`` and ``labels``.

        Args:
            x: float32 images (N,C,H,W); labels: one-hot (N,K) (both from :meth:`_prepare`).
            eps: the budget per image (N,), or None for the attack's own ``eps`` (attacks without a budget
                accept only None).
            mask: a mask from :meth:`_resolve_mask` or :func:`maps_to_mask`, or None (the whole image).

        Returns:
            x_adv (N,C,H,W) float32; pixels outside the mask may differ from x by float32 round-off, which
            :func:`keep_outside` removes.
        """
        return self._attack(x, labels, mask, None if eps is None else np.asarray(eps, ART_NUMPY_DTYPE))

    def _fooled(self, x_adv: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """(N,) bool: x_adv is classified as the target (targeted) or not as the label (untargeted)."""
        return success_mask(self.estimator, x_adv, labels, self.targeted, self.batch_size)

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
        The mask used is kept in ``last_mask_`` (all ones for the whole image).
        """
        if kwargs:
            raise TypeError(f"generate() got unexpected keyword arguments: {', '.join(kwargs)}")
        x32, labels = self._prepare(x, y)
        resolved = self._resolve_mask(x32, labels, mask, maps)
        x_adv = self._perturb_at(x32, labels, None, resolved)
        return keep_outside(x, x_adv, None if self.focus == "penalty" else resolved)

    def _attack(
        self, x: np.ndarray, labels: np.ndarray, mask: np.ndarray | None, eps: np.ndarray | None
    ) -> np.ndarray:
        """The attack itself, implemented by each subclass; called through :meth:`_perturb_at`.

        Args:
            x: float32 images (N,C,H,W); labels: one-hot (N,K).
            mask: the resolved mask or None (the whole image).
            eps: float32 budget per image (N,), or None for the attack's own.

        Returns:
            x_adv (N,C,H,W) float32.
        """
        raise NotImplementedError


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


def run_batches(
    attack: FocusedEvasionAttack,
    x: np.ndarray,
    labels: np.ndarray,
    mask: np.ndarray | None,
    eps: np.ndarray,
    eps_step: np.ndarray,
    settings: StepSettings,
) -> tuple[np.ndarray, np.ndarray]:
    """Run :func:`gradient_steps` batch by batch; later random restarts replace only successful samples.

    Args:
        attack: gives the gradient back-end and ``batch_size``.
        x: float32 images (N,C,H,W); labels: one-hot (N,K); mask: the resolved mask or None.
        eps: radius of the ball per image (N,); eps_step: step size per image (N,).
        settings: the attack's step settings.

    Returns:
        ``(x_adv, iterations)``: the adversarial images and the steps each image's kept run took (N,).
    """
    grads = attack._gradients()
    device = grads.device
    x_adv = x.astype(ART_NUMPY_DTYPE)
    iterations = np.zeros(len(x), dtype=np.int64)
    size = attack.batch_size
    batches = trange(0, len(x), size, desc="FocusedPGD - Batches", leave=False, disable=not settings.verbose)
    with grads.context():
        for start in batches:
            sl = slice(start, start + size)
            xb = torch.from_numpy(x_adv[sl].copy()).to(device)
            yb = torch.from_numpy(labels[sl]).to(device)
            mb = None if mask is None else torch.from_numpy(mask[sl]).to(device)
            eb = torch.from_numpy(np.asarray(eps[sl], ART_NUMPY_DTYPE)).reshape(-1, 1, 1, 1).to(device)
            sb = torch.from_numpy(np.asarray(eps_step[sl], ART_NUMPY_DTYPE)).reshape(-1, 1, 1, 1).to(device)
            best, best_iterations = None, None
            for _ in range(max(1, settings.restarts)):
                adv, steps = gradient_steps(grads, xb, yb, mb, eb, sb, settings)
                if best is None:
                    best, best_iterations = adv, steps
                else:
                    pred = grads.logits(adv).argmax(dim=1)
                    wanted = yb.argmax(dim=1)
                    hit = pred == wanted if settings.targeted else pred != wanted
                    best[hit], best_iterations[hit] = adv[hit], steps[hit]
            x_adv[sl] = best.detach().cpu().numpy()
            iterations[sl] = best_iterations.cpu().numpy()
    return x_adv, iterations
