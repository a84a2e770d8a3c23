"""Saliency-focused Fast Gradient (Sign) Method (Goodfellow et al. 2015) as an ART evasion attack.

| Paper link: https://arxiv.org/abs/1412.6572
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from art.attacks.attack import EvasionAttack
from art.config import ART_NUMPY_DTYPE
from art.estimators.classification.classifier import ClassifierMixin
from art.estimators.estimator import BaseEstimator, LossGradientsMixin

from focused_attacks.base import FocusedEvasionAttack, run_batches
from focused_attacks.inputs import check_number, parse_norm
from focused_attacks.steps import StepSettings


class FocusedFGSM(FocusedEvasionAttack):
    """One gradient step of size ``eps`` restricted (``focus="topk"``) or weighted (``"soft"``) by a
    saliency map. With ``saliency=None`` and no mask it equals ART's ``FastGradientMethod``.
    """

    attack_params = EvasionAttack.attack_params + [
        "saliency",
        "area",
        "focus",
        "norm",
        "eps",
        "targeted",
        "batch_size",
    ]
    _estimator_requirements = (BaseEstimator, LossGradientsMixin, ClassifierMixin)

    def __init__(
        self,
        estimator: object,
        saliency: Callable | object | None = None,
        area: float = 0.1,
        focus: str = "topk",
        eps: float = 0.3,
        norm: int | float | str = np.inf,
        targeted: bool = False,
        batch_size: int = 32,
    ):
        """
        :param estimator: ART classifier with loss gradients (a PyTorchClassifier runs in torch).
        :param saliency: ``maps = saliency(x, targets)`` (N,H,W) in [0,1], a pytorch-grad-cam CAM or a
            captum attribution object (wrapped by :func:`saliency.external.as_saliency`), or None.
        :param area: fraction of pixels in (0,1] kept by ``focus="topk"``.
        :param focus: ``"topk"`` or ``"soft"``.
        :param eps: step size = radius of the ``norm`` ball (input units).
        :param norm: ``np.inf``, ``"inf"`` or a real p >= 1.
        :param targeted: move towards ``y`` (True) or away from it (False).
        :param batch_size: images per batch.
        """
        super().__init__(estimator, saliency, area, focus, targeted, batch_size)
        self.norm = norm
        self.eps = eps
        FocusedFGSM._check_params(self)

    def _check_params(self) -> None:
        self._check_focus_params()
        parse_norm(self.norm)
        check_number("eps", self.eps, allow_zero=True)

    def _attack(
        self, x: np.ndarray, labels: np.ndarray, mask: np.ndarray | None, eps: np.ndarray | None
    ) -> np.ndarray:
        if eps is None:
            eps = np.full(len(x), self.eps, dtype=ART_NUMPY_DTYPE)
        settings = StepSettings(
            max_iter=1,
            norm=parse_norm(self.norm),
            targeted=self.targeted,
            clip_values=self.estimator.clip_values,
            focus=self.focus,
        )
        x_adv, _ = run_batches(self, x, labels, mask, eps, eps, settings)
        return x_adv
