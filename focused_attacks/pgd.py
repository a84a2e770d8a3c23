"""Saliency-focused Projected Gradient Descent (Madry et al. 2018) as an ART evasion attack.

| Paper link: https://arxiv.org/abs/1706.06083 (PGD); CAMERAS attack: https://arxiv.org/abs/2106.10649
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from art.attacks.attack import EvasionAttack
from art.config import ART_NUMPY_DTYPE
from art.estimators.classification.classifier import ClassifierMixin
from art.estimators.estimator import BaseEstimator, LossGradientsMixin
from art.utils import random_sphere
from tqdm.auto import trange

from focused_attacks.base import (
    ARTGradients,
    FocusedEvasionAttack,
    TorchGradients,
    check_count,
    check_number,
    clip_bounds,
    is_real,
    lp_direction,
    parse_norm,
    project,
)


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


def gradient_steps(
    grads: TorchGradients | ARTGradients,
    x: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor | None,
    eps: torch.Tensor,
    eps_step: torch.Tensor,
    max_iter: int,
    norm: float,
    targeted: bool,
    clip_values: tuple | None,
    focus: str = "topk",
    beta: float = 0.0,
    random_init: bool = False,
    verbose: bool = False,
    stop_confidence: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``max_iter`` projected steps of size ``eps_step`` (B,1,1,1) inside the ``norm`` ball ``eps`` (B,1,1,1).

    ``mask`` (B,1,H,W) or x's shape: for ``focus`` topk/soft the gradient is weighted by the mask before the
    norm and the step after it (a 0/1 mask equals ART's ``mask``); for ``"penalty"`` the mask is the saliency
    map Psi and ``beta * ||delta * (1 - Psi)||_2`` is subtracted from each sample's loss instead.
    ``random_init`` starts at a random point of the (masked) ball, as ART only when ``max_iter > 0``.
    ``stop_confidence``: a sample stops stepping once :func:`reached_confidence` holds at its current
    point (checked on the logits of the gradient's own forward pass, before each step).
    Returns ``(x_adv, iterations)``: the steps each sample took (B,) int64.
    """
    penalty = focus == "penalty"
    bounds = clip_bounds(clip_values, x.device)
    if penalty and mask is not None and stop_confidence is not None:
        return _penalty_steps_keeping_confidence(
            grads, x, labels, mask, eps, eps_step, max_iter, norm, targeted, bounds, beta, stop_confidence
        )
    x_adv = x.clone()
    if random_init and max_iter > 0:
        noise = random_sphere(len(x), int(np.prod(x.shape[1:])), 1.0, norm).reshape(x.shape)
        noise = torch.from_numpy(noise.astype(ART_NUMPY_DTYPE)).to(x.device) * eps
        if mask is not None:
            noise = noise * mask
        x_adv = _clip(x + noise, bounds)
    iterations = torch.zeros(len(x), dtype=torch.int64, device=x.device)
    # the samples still stepping: all of them (a slice, no copies) unless some may stop
    active = slice(None) if stop_confidence is None else torch.arange(len(x), device=x.device)
    for _ in trange(max_iter, desc="FocusedPGD - Iterations", leave=False, disable=not verbose):
        if stop_confidence is None:  # every sample steps
            xs, xa, ys, ms = x, x_adv, labels, mask
            grad = grads.loss_gradient(xa, ys, per_sample=penalty)
        else:
            xs, xa, ys = x[active], x_adv[active], labels[active]
            grad, logits = grads.loss_gradient_and_logits(xa, ys, per_sample=penalty)
            moving = ~reached_confidence(logits, ys, targeted, stop_confidence)
            active, xs, xa, grad = active[moving], xs[moving], xa[moving], grad[moving]
            ms = None if mask is None else mask[active]
            if len(active) == 0:
                break
        step = _ascent_direction(grad, xs, xa, ms, norm, targeted, penalty, beta)
        xa = _clip(xa + torch.nan_to_num(eps_step[active] * step, nan=0.0), bounds)
        x_adv[active] = xs + project(xa - xs, eps[active], norm)
        iterations[active] += 1
    return x_adv, iterations


def _penalty_steps_keeping_confidence(
    grads: TorchGradients | ARTGradients,
    x: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    eps: torch.Tensor,
    eps_step: torch.Tensor,
    max_iter: int,
    norm: float,
    targeted: bool,
    bounds: tuple[torch.Tensor, torch.Tensor] | None,
    beta: float,
    confidence: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The CAMERAS penalty with the fooling confidence maintained: a sample below ``confidence`` steps on
    its loss alone (towards the threshold), one at or above it on loss + penalty (shrinking the
    perturbation outside the map); all ``max_iter`` steps run. Returns, per sample, the iterate with the
    smallest L2 perturbation among those at or above the threshold (else the last one) and its step
    number."""
    x_adv = x.clone()
    best, best_size = x.clone(), torch.full((len(x),), torch.inf, device=x.device)
    iterations = torch.full((len(x),), max_iter, dtype=torch.int64, device=x.device)
    for step_number in range(max_iter + 1):
        grad, logits = grads.loss_gradient_and_logits(x_adv, labels, per_sample=True)
        feasible = reached_confidence(logits, labels, targeted, confidence)
        size = torch.linalg.vector_norm((x_adv - x).reshape(len(x), -1), dim=1)
        better = feasible & (size < best_size)
        best[better], best_size[better], iterations[better] = x_adv[better], size[better], step_number
        if step_number == max_iter:
            break
        focus = torch.where(feasible.reshape(-1, 1, 1, 1), mask, torch.ones_like(mask))
        step = _ascent_direction(grad, x, x_adv, focus, norm, targeted, True, beta)
        x_adv = _clip(x_adv + torch.nan_to_num(eps_step * step, nan=0.0), bounds)
        x_adv = x + project(x_adv - x, eps, norm)
    found = torch.isfinite(best_size)
    return torch.where(found.reshape(-1, 1, 1, 1), best, x_adv), iterations


class FocusedPGD(FocusedEvasionAttack):
    """PGD whose perturbation is focused on the salient pixels.

    ``focus="topk"``: perturb only the top ``area`` fraction of each saliency map (hard 0/1 mask);
    ``"soft"``: gradient and step weighted per pixel by the map; ``"penalty"``: the CAMERAS paper's
    attack, loss CE - ``beta`` * ||delta * (1 - map)||_2 (targeted: CE + penalty, minimised), no hard
    constraint. With ``saliency=None`` and no mask it equals ART's ``ProjectedGradientDescent``; with
    ``num_random_init > 1`` only where ``y`` is the clean prediction (e.g. ``y=None``): untargeted, a later
    restart replaces a sample when its prediction differs from ``y``, ART's when it differs from the clean
    prediction.
    """

    attack_params = EvasionAttack.attack_params + [
        "saliency",
        "area",
        "focus",
        "norm",
        "eps",
        "eps_step",
        "max_iter",
        "targeted",
        "num_random_init",
        "beta",
        "stop_confidence",
        "batch_size",
        "verbose",
    ]
    _estimator_requirements = (BaseEstimator, LossGradientsMixin, ClassifierMixin)
    focus_modes = ("topk", "soft", "penalty")

    def __init__(
        self,
        estimator: object,
        saliency: Callable | object | None = None,
        area: float = 0.1,
        focus: str = "topk",
        eps: float = 0.3,
        eps_step: float = 0.1,
        max_iter: int = 100,
        norm: int | float | str = np.inf,
        targeted: bool = False,
        num_random_init: int = 0,
        beta: float = 50.0,
        stop_confidence: float | None = None,
        batch_size: int = 32,
        verbose: bool = True,
    ):
        """
        :param estimator: ART classifier with loss gradients (a PyTorchClassifier runs in torch).
        :param saliency: ``maps = saliency(x, targets)`` (N,H,W) in [0,1], e.g.
            ``saliency.CAMERAS(clf, "layer4")``; a pytorch-grad-cam CAM or a captum attribution object is
            wrapped by :func:`saliency.external.as_saliency`.
        :param area: fraction of pixels in (0,1] kept by ``focus="topk"``.
        :param focus: ``"topk"``, ``"soft"`` or ``"penalty"``.
        :param eps: radius of the ``norm`` ball (input units).
        :param eps_step: step size per iteration.
        :param max_iter: number of iterations.
        :param norm: ``np.inf``, ``"inf"`` or a real p >= 1.
        :param targeted: move towards ``y`` (True) or away from it (False).
        :param num_random_init: random starts in the (masked) eps ball (norm 1, 2 or inf); 0 starts at x.
        :param beta: weight of the out-of-saliency L2 penalty (``focus="penalty"``).
        :param stop_confidence: None (run ``max_iter`` steps) or a probability in (0,1]: a sample stops
            once the softmax of the estimator's outputs gives its target class (targeted), or a class other
            than ``y`` (untargeted), at least this probability; ``last_iterations_`` holds the steps taken.
            With ``focus="penalty"`` and a map, the confidence is *maintained* instead: below it a sample
            steps on the loss alone, at or above it on loss + penalty, for all ``max_iter`` steps, and the
            smallest-L2 iterate at or above it is returned (``last_iterations_``: its step number).
        :param batch_size: images per batch.
        :param verbose: show progress bars.
        """
        super().__init__(estimator, saliency, area, focus, targeted, batch_size)
        self.norm = norm
        self.eps = eps
        self.eps_step = eps_step
        self.max_iter = max_iter
        self.num_random_init = num_random_init
        self.beta = beta
        self.stop_confidence = stop_confidence
        self.verbose = verbose
        self.last_iterations_: np.ndarray | None = None
        FocusedPGD._check_params(self)

    def _check_params(self) -> None:
        self._check_focus_params()
        norm = parse_norm(self.norm)
        check_number("eps", self.eps, allow_zero=True)
        check_number("eps_step", self.eps_step, allow_zero=False)
        check_count("max_iter", self.max_iter)
        check_count("num_random_init", self.num_random_init)
        if self.num_random_init > 0 and norm not in (1, 2, np.inf):
            raise ValueError(
                f"norm must be 1, 2 or inf with random initialisation (num_random_init > 0), "
                f"got {self.norm!r}"
            )
        check_number("beta", self.beta, allow_zero=True)
        confidence = self.stop_confidence
        if confidence is not None and not (is_real(confidence) and 0 < confidence <= 1):
            raise ValueError(f"stop_confidence must be None or a probability in (0, 1], got {confidence!r}")
        if not isinstance(self.verbose, bool):
            raise ValueError("The verbose has to be a Boolean.")

    def _attack(
        self, x: np.ndarray, labels: np.ndarray, mask: np.ndarray | None, eps: np.ndarray | None
    ) -> np.ndarray:
        if eps is None:
            eps = np.full(len(x), self.eps, dtype=ART_NUMPY_DTYPE)
            eps_step = np.full(len(x), self.eps_step, dtype=ART_NUMPY_DTYPE)
        else:
            scale = eps / self.eps if self.eps > 0 else np.ones_like(eps)
            eps_step = (self.eps_step * scale).astype(ART_NUMPY_DTYPE)
        x_adv, self.last_iterations_ = run_batches(
            self,
            x,
            labels,
            mask,
            eps,
            eps_step,
            max_iter=self.max_iter,
            restarts=self.num_random_init,
            beta=self.beta,
            verbose=self.verbose,
            stop_confidence=self.stop_confidence,
        )
        return x_adv


def run_batches(
    attack: FocusedEvasionAttack,
    x: np.ndarray,
    labels: np.ndarray,
    mask: np.ndarray | None,
    eps: np.ndarray,
    eps_step: np.ndarray,
    max_iter: int,
    restarts: int,
    beta: float,
    verbose: bool,
    stop_confidence: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Run :func:`gradient_steps` batch by batch; later random restarts replace only successful samples.
    Returns ``(x_adv, iterations)``: the steps each sample's kept run took."""
    grads = attack._gradients()
    device = grads.device
    norm = parse_norm(attack.norm)
    x_adv = x.astype(ART_NUMPY_DTYPE)
    iterations = np.zeros(len(x), dtype=np.int64)
    nb_batches = int(np.ceil(len(x) / attack.batch_size))
    with grads.context():
        for batch_id in trange(nb_batches, desc="FocusedPGD - Batches", leave=False, disable=not verbose):
            sl = slice(batch_id * attack.batch_size, (batch_id + 1) * attack.batch_size)
            xb = torch.from_numpy(x_adv[sl].copy()).to(device)
            yb = torch.from_numpy(labels[sl]).to(device)
            mb = None if mask is None else torch.from_numpy(mask[sl]).to(device)
            eb = torch.from_numpy(np.asarray(eps[sl], ART_NUMPY_DTYPE)).reshape(-1, 1, 1, 1).to(device)
            sb = torch.from_numpy(np.asarray(eps_step[sl], ART_NUMPY_DTYPE)).reshape(-1, 1, 1, 1).to(device)
            best, best_iterations = None, None
            for _ in range(max(1, restarts)):
                adv, steps = gradient_steps(
                    grads,
                    xb,
                    yb,
                    mb,
                    eb,
                    sb,
                    max_iter,
                    norm,
                    attack.targeted,
                    attack.estimator.clip_values,
                    attack.focus,
                    beta,
                    random_init=restarts > 0,
                    verbose=verbose,
                    stop_confidence=stop_confidence,
                )
                if best is None:
                    best, best_iterations = adv, steps
                else:
                    pred = grads.logits(adv).argmax(dim=1)
                    wanted = yb.argmax(dim=1)
                    hit = pred == wanted if attack.targeted else pred != wanted
                    best[hit], best_iterations[hit] = adv[hit], steps[hit]
            x_adv[sl] = best.detach().cpu().numpy()
            iterations[sl] = best_iterations.cpu().numpy()
    return x_adv, iterations
