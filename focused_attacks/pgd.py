"""Saliency-focused Projected Gradient Descent (Madry et al. 2018) as an ART evasion attack.

| Paper link: https://arxiv.org/abs/1706.06083 (PGD); CAMERAS attack: https://arxiv.org/abs/2106.10649
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from art.attacks.attack import EvasionAttack
from art.config import ART_NUMPY_DTYPE
from art.estimators.classification.classifier import ClassifierMixin
from art.estimators.estimator import BaseEstimator, LossGradientsMixin

from focused_attacks.base import FocusedEvasionAttack, run_batches
from focused_attacks.inputs import check_count, check_number, parse_norm
from focused_attacks.steps import StepSettings
from saliency.base import is_real


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

    def _eps_step_at(self, eps: np.ndarray) -> np.ndarray:
        """The step size at budgets ``eps`` (N,): ``eps_step`` keeps its ratio to ``eps`` (unchanged when
        ``eps`` is 0), so a budget search scales the whole run."""
        scale = eps / self.eps if self.eps > 0 else np.ones_like(eps)
        return (self.eps_step * scale).astype(ART_NUMPY_DTYPE)

    def _attack(
        self, x: np.ndarray, labels: np.ndarray, mask: np.ndarray | None, eps: np.ndarray | None
    ) -> np.ndarray:
        if eps is None:
            eps = np.full(len(x), self.eps, dtype=ART_NUMPY_DTYPE)
            eps_step = np.full(len(x), self.eps_step, dtype=ART_NUMPY_DTYPE)
        else:
            eps_step = self._eps_step_at(eps)
        settings = StepSettings(
            max_iter=self.max_iter,
            norm=parse_norm(self.norm),
            targeted=self.targeted,
            clip_values=self.estimator.clip_values,
            focus=self.focus,
            beta=self.beta,
            restarts=self.num_random_init,
            verbose=self.verbose,
            stop_confidence=self.stop_confidence,
        )
        x_adv, self.last_iterations_ = run_batches(self, x, labels, mask, eps, eps_step, settings)
        return x_adv
