"""Saliency-focused Carlini & Wagner L2 attack (Carlini and Wagner 2017) as an ART evasion attack.

Follows ART's ``CarliniL2Method`` variant (gradient steps with a halving/doubling line search on the step
size, binary search on the constant c) with the change of variables
``x_adv = x + m * (g(w) - x)``, ``g(w) = (tanh(w) + 1) / 2 * (max - min) + min``, for a mask m in [0,1].

| Paper link: https://arxiv.org/abs/1608.04644
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from art.attacks.attack import EvasionAttack
from art.config import ART_NUMPY_DTYPE
from art.estimators.classification.classifier import ClassGradientsMixin, ClassifierMixin
from art.estimators.estimator import BaseEstimator
from tqdm.auto import trange

from focused_attacks.base import FocusedEvasionAttack
from focused_attacks.gradients import ARTGradients, TorchGradients, clip_bounds
from focused_attacks.inputs import check_count, check_number

#: The binary search on c stops for a sample once c exceeds this (Carlini and Wagner's value).
C_UPPER_BOUND = 10e10
#: arctanh is evaluated at (2u - 1) * TANH_SMOOTHER to stay finite at the clip bounds.
TANH_SMOOTHER = 0.999999


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B,1,1,1) for broadcasting against images."""
    return t.reshape(-1, 1, 1, 1)


class _Problem:
    """One batch of the C&W objective c * max(margin + confidence, 0) + ||x_adv - x||_2^2 in tanh space;
    ``clip`` (min, max) are float32 tensors broadcastable to an image (scalars or per channel)."""

    def __init__(
        self,
        grads: TorchGradients | ARTGradients,
        x: torch.Tensor,
        labels: torch.Tensor,
        mask: torch.Tensor | None,
        clip: tuple[torch.Tensor, torch.Tensor],
        confidence: float,
        targeted: bool,
    ):
        self.grads, self.x, self.labels, self.mask = grads, x, labels, mask
        self.low, self.high = clip
        self.confidence, self.targeted = confidence, targeted

    def to_tanh(self, x: torch.Tensor) -> torch.Tensor:
        unit = (x.clamp(self.low, self.high) - self.low) / (self.high - self.low)
        return torch.atanh((unit * 2 - 1) * TANH_SMOOTHER)

    def to_image(self, w: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """x_adv for the samples ``rows`` from their tanh variables ``w``."""
        g = (torch.tanh(w) + 1.0) / 2.0 * (self.high - self.low) + self.low
        if self.mask is None:
            return g
        m, x = self.mask[rows], self.x[rows].to(g.dtype)
        return torch.where(m == 1, g, x + m * (g - x))

    def _other_class(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        floor = (z.min(dim=1).values - 1)[:, None]
        return (z * (1 - labels) + floor * labels).argmax(dim=1)

    def evaluate(
        self, x_adv: torch.Tensor, rows: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits, squared L2 distance, objective) of x_adv for the samples ``rows``."""
        x, labels = self.x[rows], self.labels[rows]
        l2 = (x - x_adv).square().reshape(len(x), -1).sum(dim=1).double()
        z = self.grads.logits(x_adv.to(torch.float32))
        z_label = (z * labels).sum(dim=1)
        floor = (z.min(dim=1).values - 1)[:, None]
        z_other = (z * (1 - labels) + floor * labels).max(dim=1).values
        margin = z_other - z_label if self.targeted else z_label - z_other
        hinge = torch.clamp(margin.double() + self.confidence, min=0.0)
        return z, l2, c * hinge + l2

    def descent(
        self, z: torch.Tensor, x_adv: torch.Tensor, w: torch.Tensor, rows: torch.Tensor, c: torch.Tensor
    ) -> torch.Tensor:
        """Minus the gradient in w of the objective, with the margin's gradient always included (as ART)."""
        labels = self.labels[rows]
        true, other = labels.argmax(dim=1), self._other_class(z, labels)
        add, sub = (other, true) if self.targeted else (true, other)
        grad = self.grads.margin_gradient(x_adv, add, sub)
        grad = (grad.double() * _rows(c)).float()
        grad = grad + 2 * (x_adv - self.x[rows])
        grad = grad * (self.high - self.low)
        grad = grad * (1 - torch.tanh(w).square()) / (2 * TANH_SMOOTHER)
        if self.mask is not None:
            grad = grad * self.mask[rows]
        return -grad


def _trial(
    p: _Problem,
    do: torch.Tensor,
    w: torch.Tensor,
    step: torch.Tensor,
    lr: torch.Tensor,
    c: torch.Tensor,
    l2: torch.Tensor,
    loss: torch.Tensor,
    best_lr: torch.Tensor,
    best_loss: torch.Tensor,
) -> None:
    """Line-search trial w + lr * step for the samples ``do``; updates l2, loss, best_lr, best_loss in place.

    Like ART's CarliniL2Method, l2/loss keep the trial values also for samples that end up not moving.
    """
    idx = do.nonzero().squeeze(1)
    trial = w[idx].double() + _rows(lr[idx]) * step[idx].double()
    _, l2[idx], loss[idx] = p.evaluate(p.to_image(trial, idx), idx, c[idx])
    better = loss < best_loss
    best_lr[better] = lr[better]
    best_loss[better] = loss[better]


class FocusedCarliniL2(FocusedEvasionAttack):
    """C&W L2 whose perturbation lives on the salient pixels: ``x_adv = x + m * (g(w) - x)`` with m the
    top-``area`` 0/1 mask (``focus="topk"``) or the soft map (``"soft"``). With ``saliency=None`` and no
    mask it equals ART's ``CarliniL2Method``.
    """

    attack_params = EvasionAttack.attack_params + [
        "saliency",
        "area",
        "focus",
        "confidence",
        "targeted",
        "learning_rate",
        "binary_search_steps",
        "max_iter",
        "initial_const",
        "max_halving",
        "max_doubling",
        "batch_size",
        "verbose",
    ]
    _estimator_requirements = (BaseEstimator, ClassGradientsMixin, ClassifierMixin)

    def __init__(
        self,
        estimator: object,
        saliency: Callable | object | None = None,
        area: float = 0.1,
        focus: str = "topk",
        confidence: float = 0.0,
        learning_rate: float = 0.01,
        binary_search_steps: int = 10,
        max_iter: int = 10,
        initial_const: float = 0.01,
        batch_size: int = 32,
        verbose: bool = True,
        targeted: bool = False,
        max_halving: int = 5,
        max_doubling: int = 5,
    ):
        """
        :param estimator: ART classifier with class gradients (a PyTorchClassifier runs in torch).
        :param saliency: ``maps = saliency(x, targets)`` (N,H,W) in [0,1], a pytorch-grad-cam CAM or a
            captum attribution object (wrapped by :func:`saliency.external.as_saliency`), or None.
        :param area: fraction of pixels in (0,1] kept by ``focus="topk"``.
        :param focus: ``"topk"`` or ``"soft"``.
        :param confidence: margin (logits) the adversarial class must win by.
        :param learning_rate: initial step size of the line search (tanh space).
        :param binary_search_steps: updates of the constant c.
        :param max_iter: gradient steps per constant.
        :param initial_const: first value of c.
        :param batch_size: images per batch.
        :param verbose: show progress bars.
        :param targeted: reach class ``y`` (True) or leave it (False).
        :param max_halving: halvings of the step per line search (>= 1).
        :param max_doubling: doublings of the step per line search (>= 1).
        """
        super().__init__(estimator, saliency, area, focus, targeted, batch_size)
        self.confidence = confidence
        self.learning_rate = learning_rate
        self.binary_search_steps = binary_search_steps
        self.max_iter = max_iter
        self.initial_const = initial_const
        self.max_halving = max_halving
        self.max_doubling = max_doubling
        self.verbose = verbose
        FocusedCarliniL2._check_params(self)

    def _check_params(self) -> None:
        self._check_focus_params()
        check_number("confidence", self.confidence, allow_zero=True)
        check_number("learning_rate", self.learning_rate, allow_zero=False)
        check_number("initial_const", self.initial_const, allow_zero=False)
        check_count("binary_search_steps", self.binary_search_steps)
        check_count("max_iter", self.max_iter)
        for name in ("max_halving", "max_doubling"):
            check_count(name, getattr(self, name))
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if not isinstance(self.verbose, bool):
            raise ValueError("The verbose has to be a Boolean.")

    def _attack(
        self, x: np.ndarray, labels: np.ndarray, mask: np.ndarray | None, eps: np.ndarray | None
    ) -> np.ndarray:
        if eps is not None:
            raise ValueError("eps: FocusedCarliniL2 has no perturbation budget")
        if len(x) == 0:  # nothing to attack (and no range to take as clip values)
            return x.copy()
        grads = self._gradients()
        device = grads.device
        clip_values = self.estimator.clip_values
        clip = clip_bounds((np.amin(x), np.amax(x)) if clip_values is None else clip_values, device)
        x_adv = x.astype(ART_NUMPY_DTYPE)
        nb_batches = int(np.ceil(len(x) / self.batch_size))
        with grads.context():
            for batch_id in trange(nb_batches, desc="FocusedC&W L_2", disable=not self.verbose):
                sl = slice(batch_id * self.batch_size, (batch_id + 1) * self.batch_size)
                problem = _Problem(
                    grads,
                    torch.from_numpy(x_adv[sl].copy()).to(device),
                    torch.from_numpy(labels[sl]).to(device),
                    None if mask is None else torch.from_numpy(mask[sl]).to(device),
                    clip,
                    float(self.confidence),
                    self.targeted,
                )
                x_adv[sl] = self._attack_batch(problem).cpu().numpy()
        return x_adv

    def _attack_batch(self, p: _Problem) -> torch.Tensor:
        """Binary search on c around gradient descent with a line search, per sample (ART's schedule)."""
        n, device = len(p.x), p.x.device
        f64 = {"dtype": torch.float64, "device": device}
        every = torch.arange(n, device=device)
        w_clean = p.to_tanh(p.x)
        c = torch.full((n,), float(self.initial_const), **f64)
        c_low = torch.zeros(n, **f64)
        c_double = torch.ones(n, dtype=torch.bool, device=device)
        best_l2 = torch.full((n,), torch.inf, **f64)
        best_adv = p.x.clone()

        def keep_best(success: torch.Tensor, l2: torch.Tensor, x_adv: torch.Tensor) -> None:
            improved = success & (l2 < best_l2)
            best_l2[improved] = l2[improved]
            best_adv[improved] = x_adv[improved]

        for _ in trange(
            self.binary_search_steps, desc="C&W - c search", leave=False, disable=not self.verbose
        ):
            if not (c < C_UPPER_BOUND).any():
                break
            lr = torch.full((n,), float(self.learning_rate), **f64)
            x_adv, w = p.x.clone(), w_clean.clone()
            z, l2, loss = p.evaluate(x_adv, every, c)
            success = loss - l2 <= 0
            overall = success.clone()
            for _ in range(self.max_iter):
                keep_best(success, l2, x_adv)
                active = (c < C_UPPER_BOUND) & (lr > 0)
                if not active.any():
                    break
                rows = active.nonzero().squeeze(1)
                step = torch.zeros_like(p.x)
                step[rows] = p.descent(z[rows], x_adv[rows], w[rows], rows, c[rows])

                best_lr = self._line_search(p, active, w, step, lr, c, l2, loss)

                move = active & (best_lr > 0)
                if move.any():
                    idx = move.nonzero().squeeze(1)
                    w[idx] = (w[idx].double() + _rows(best_lr[idx]) * step[idx].double()).float()
                    x_adv[idx] = p.to_image(w[idx], idx)
                    z[idx], l2[idx], loss[idx] = p.evaluate(x_adv[idx], idx, c[idx])
                    success = loss - l2 <= 0
                    overall = overall | success
            keep_best(success, l2, x_adv)

            # ART's update of c (including its aliasing: the lower bound takes the *updated* c).
            c_double[overall] = False
            c[overall] = (c_low + c)[overall] / 2
            grow = ~overall & c_double
            c[grow] *= 2
            refine = ~overall & ~c_double
            c[refine] += (c - c_low)[refine] / 2
            c_low[~overall] = c[~overall]
        return best_adv

    def _line_search(
        self,
        p: _Problem,
        active: torch.Tensor,
        w: torch.Tensor,
        step: torch.Tensor,
        lr: torch.Tensor,
        c: torch.Tensor,
        l2: torch.Tensor,
        loss: torch.Tensor,
    ) -> torch.Tensor:
        """ART's line search on the step size of the ``active`` samples: halve ``lr`` while the loss does
        not fall (at most ``max_halving`` times), then double it while it keeps falling (after exactly one
        halving, at most ``max_doubling`` times). Updates ``lr``, ``l2`` and ``loss`` in place.

        Returns:
            The best step size per sample (B,) float64, 0 where no trial lowered the loss.
        """
        n, device = len(p.x), p.x.device
        prev_loss, best_loss = loss.clone(), loss.clone()
        best_lr = torch.zeros(n, dtype=torch.float64, device=device)
        halving = torch.zeros(n, dtype=torch.long, device=device)
        for _ in range(self.max_halving):
            do = active & (loss >= prev_loss)
            if not do.any():
                break
            _trial(p, do, w, step, lr, c, l2, loss, best_lr, best_loss)
            lr[do] /= 2
            halving[do] += 1
        lr[active] *= 2
        for _ in range(self.max_doubling):
            do = active & (halving == 1) & (loss <= best_loss)
            if not do.any():
                break
            lr[do] *= 2
            _trial(p, do, w, step, lr, c, l2, loss, best_lr, best_loss)
        lr[halving == 1] /= 2
        return best_lr
