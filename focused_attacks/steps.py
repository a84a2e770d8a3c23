"""The projected gradient steps behind FocusedPGD and FocusedFGSM (FGSM is one step of size eps), in torch
on the gradient back-end's device, one batch at a time. How the mask enters the step, and the CAMERAS
penalty, are described in ``docs/algorithms.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from art.config import ART_NUMPY_DTYPE
from art.utils import random_sphere
from tqdm.auto import trange

from focused_attacks.gradients import ARTGradients, TorchGradients, clip_bounds


@dataclass(frozen=True)
class StepSettings:
    """What every step of one attack does, the same for all its batches.

    Attributes:
        max_iter (int): number of steps (FGSM: 1).
        norm (float): norm of the step and of the ball, ``np.inf`` or a real p >= 1.
        targeted (bool): step towards the label (True) or away from it (False).
        clip_values (tuple | None): the estimator's (min, max), scalars or per channel; None: no clipping.
        focus (str): ``"topk"`` or ``"soft"`` (the mask weights gradient and step) or ``"penalty"``.
        beta (float): weight of the out-of-map L2 penalty (``focus="penalty"``).
        restarts (int): random starts in the (masked) ball; 0 starts at x once (ART's ``num_random_init``).
        verbose (bool): show progress bars.
        stop_confidence (float | None): None (all ``max_iter`` steps) or the probability at which a sample
            stops (:func:`reached_confidence`).
    """

    max_iter: int
    norm: float
    targeted: bool
    clip_values: tuple | None
    focus: str = "topk"
    beta: float = 0.0
    restarts: int = 0
    verbose: bool = False
    stop_confidence: float | None = None


def _clip(x: torch.Tensor, bounds: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    return x if bounds is None else torch.maximum(torch.minimum(x, bounds[1]), bounds[0])


#: Share of the allowed miss ``1 - confidence`` kept in reserve by :func:`reached_confidence`: the logits
#: of one image change in float32 round-off with the batch it is computed in (the attack's active
#: samples, a later ``predict``), and a smallest-norm search stops right at the threshold.
ROUND_OFF_MARGIN = 0.01


def reached_confidence(
    logits: torch.Tensor, labels: torch.Tensor, targeted: bool, confidence: float
) -> torch.Tensor:
    """(B,) bool: the softmax probability of the target class (targeted) or of a predicted class other
    than the label (untargeted) is at least ``confidence``, with :data:`ROUND_OFF_MARGIN` of ``1 -
    confidence`` to spare (0.9999 -> 0.999901); ``labels`` are one-hot (B,K)."""
    probs = torch.softmax(logits.double(), dim=1)
    threshold = 1.0 - (1.0 - confidence) * (1.0 - ROUND_OFF_MARGIN)
    cls = labels.argmax(dim=1)
    if targeted:
        return probs.gather(1, cls[:, None])[:, 0] >= threshold
    top, pred = probs.max(dim=1)
    return (pred != cls) & (top >= threshold)


def _ascent_direction(
    grad: torch.Tensor,
    x: torch.Tensor,
    x_adv: torch.Tensor,
    mask: torch.Tensor | None,
    norm: float,
    targeted: bool,
    penalty: bool,
    beta: float,
) -> torch.Tensor:
    """The unit-``norm`` step direction from the loss gradient: reversed when targeted, minus ``beta`` times
    the gradient of ``||delta * (1 - mask)||_2`` (``penalty``), or weighted by the mask (topk/soft)."""
    grad = torch.nan_to_num(grad, nan=0.0, posinf=torch.inf, neginf=-torch.inf)
    if targeted:
        grad = -grad
    if mask is not None and penalty:
        outside = 1.0 - mask
        weighted = (x_adv - x) * outside
        size = torch.linalg.vector_norm(weighted.reshape(len(x), -1), dim=1).reshape(-1, 1, 1, 1)
        penalty_grad = torch.where(size == 0, 0.0, outside * weighted / torch.where(size == 0, 1.0, size))
        grad = grad - beta * penalty_grad
    elif mask is not None:
        grad = torch.where(mask == 0, 0.0, grad * mask)
    step = lp_direction(grad, norm)
    return step * mask if mask is not None and not penalty else step


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


def gradient_steps(
    grads: TorchGradients | ARTGradients,
    x: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor | None,
    eps: torch.Tensor,
    eps_step: torch.Tensor,
    settings: StepSettings,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``settings.max_iter`` projected steps of size ``eps_step`` (B,1,1,1) inside the ball ``eps`` (B,1,1,1).

    For focus topk/soft the gradient is weighted by ``mask`` ((B,1,H,W) or x's shape) before the norm and
    the step after it (a 0/1 mask equals ART's ``mask``); for ``"penalty"`` the mask is the saliency map Psi
    and ``beta * ||delta * (1 - Psi)||_2`` is subtracted from each sample's loss instead. With restarts the
    run starts at a random point of the (masked) ball, as ART only when ``max_iter > 0``. With
    ``stop_confidence`` a sample stops once :func:`reached_confidence` holds at its current point (checked
    on the logits of the gradient's own forward pass, before each step).

    Args:
        grads: the gradient back-end.
        x: clean images (B,C,H,W); labels: one-hot (B,K); mask: the focus mask or None (whole image).
        eps: radius of the ball per sample; eps_step: step size per sample.
        settings: the attack's step settings.

    Returns:
        ``(x_adv, iterations)``: the adversarial images and the steps each sample took (B,) int64.
    """
    penalty = settings.focus == "penalty"
    bounds = clip_bounds(settings.clip_values, x.device)
    if penalty and mask is not None and settings.stop_confidence is not None:
        return _penalty_steps_keeping_confidence(grads, x, labels, mask, eps, eps_step, settings, bounds)
    x_adv = x.clone()
    if settings.restarts > 0 and settings.max_iter > 0:
        noise = random_sphere(len(x), int(np.prod(x.shape[1:])), 1.0, settings.norm).reshape(x.shape)
        noise = torch.from_numpy(noise.astype(ART_NUMPY_DTYPE)).to(x.device) * eps
        if mask is not None:
            noise = noise * mask
        x_adv = _clip(x + noise, bounds)
    iterations = torch.zeros(len(x), dtype=torch.int64, device=x.device)
    stop = settings.stop_confidence
    # the samples still stepping: all of them (a slice, no copies) unless some may stop
    active = slice(None) if stop is None else torch.arange(len(x), device=x.device)
    bar = trange(settings.max_iter, desc="FocusedPGD - Iterations", leave=False, disable=not settings.verbose)
    for _ in bar:
        if stop is None:  # every sample steps
            xs, xa, ys, ms = x, x_adv, labels, mask
            grad = grads.loss_gradient(xa, ys, per_sample=penalty)
        else:
            xs, xa, ys = x[active], x_adv[active], labels[active]
            grad, logits = grads.loss_gradient_and_logits(xa, ys, per_sample=penalty)
            moving = ~reached_confidence(logits, ys, settings.targeted, stop)
            active, xs, xa, grad = active[moving], xs[moving], xa[moving], grad[moving]
            ms = None if mask is None else mask[active]
            if len(active) == 0:
                break
        step = _ascent_direction(grad, xs, xa, ms, settings.norm, settings.targeted, penalty, settings.beta)
        xa = _clip(xa + torch.nan_to_num(eps_step[active] * step, nan=0.0), bounds)
        x_adv[active] = xs + project(xa - xs, eps[active], settings.norm)
        iterations[active] += 1
    return x_adv, iterations


def _penalty_steps_keeping_confidence(
    grads: TorchGradients | ARTGradients,
    x: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    eps: torch.Tensor,
    eps_step: torch.Tensor,
    settings: StepSettings,
    bounds: tuple[torch.Tensor, torch.Tensor] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The CAMERAS penalty with the fooling confidence maintained: a sample below ``stop_confidence`` steps
    on its loss alone (towards the threshold), one at or above it on loss + penalty (shrinking the
    perturbation outside the map); all ``max_iter`` steps run. Returns, per sample, the iterate with the
    smallest L2 perturbation among those at or above the threshold (else the last one) and its step
    number."""
    max_iter, norm, targeted = settings.max_iter, settings.norm, settings.targeted
    x_adv = x.clone()
    best, best_size = x.clone(), torch.full((len(x),), torch.inf, device=x.device)
    iterations = torch.full((len(x),), max_iter, dtype=torch.int64, device=x.device)
    for step_number in range(max_iter + 1):
        grad, logits = grads.loss_gradient_and_logits(x_adv, labels, per_sample=True)
        feasible = reached_confidence(logits, labels, targeted, settings.stop_confidence)
        size = torch.linalg.vector_norm((x_adv - x).reshape(len(x), -1), dim=1)
        better = feasible & (size < best_size)
        best[better], best_size[better], iterations[better] = x_adv[better], size[better], step_number
        if step_number == max_iter:
            break
        focus = torch.where(feasible.reshape(-1, 1, 1, 1), mask, torch.ones_like(mask))
        step = _ascent_direction(grad, x, x_adv, focus, norm, targeted, True, settings.beta)
        x_adv = _clip(x_adv + torch.nan_to_num(eps_step * step, nan=0.0), bounds)
        x_adv = x + project(x_adv - x, eps, norm)
    found = torch.isfinite(best_size)
    return torch.where(found.reshape(-1, 1, 1, 1), best, x_adv), iterations
