"""What the saliency-metric commands (pointing-game, insertion-deletion, sanity) share: how they make
maps (:class:`MapSettings`) and what a GPNN-CAM map costs on this machine (:func:`gpnn_seconds_per_map`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class MapSettings:
    """How the saliency-metric commands make maps (:func:`evaluation.runner.compute_maps`): target
    layers, seed, GPNN-CAM's variations and GPNN settings (empty: its preset)."""

    layers: Sequence[str]
    seed: int = 0
    gpnn_variations: int = 4
    gpnn_params: dict[str, Any] = field(default_factory=dict)

    def maps(
        self, method: str, classifier: Any, x: np.ndarray, targets: np.ndarray, items: Sequence[int]
    ) -> np.ndarray:
        """Maps (N,H,W) of ``method`` for images ``x`` (their indices ``items``) and classes ``targets``."""
        from evaluation.runner import compute_maps

        params = (self.seed, self.gpnn_variations, self.gpnn_params)
        return compute_maps(
            method, classifier, x, targets, np.asarray(items).tolist(), list(self.layers), *params
        )

    def factory(self, method: str) -> Callable[[Any], Callable[..., Any]]:
        """model -> ``method`` on that model, as :func:`evaluation.saliency_metrics.sanity_check` takes it."""
        from evaluation.runner import saliency_method

        params = (self.seed, self.gpnn_variations, self.gpnn_params)
        return lambda model: saliency_method(method, model, list(self.layers), *params)


def gpnn_seconds_per_map(classifier: Any, image: np.ndarray, settings: MapSettings) -> float:
    """About how many seconds one GPNN-CAM map of ``image`` (C,H,W) takes, measured now on this machine.

    GPNN is warmed up on a small crop (one-time set-up costs), then ONE variation of ``image`` is
    generated with the settings' GPNN and classified; a map costs that time times the variations (its
    regressions are cheap next to them). GPNN-CAM generates the variations in batches of up to 10, which
    share some fixed costs: the estimate is close for the preset at 224 px (its time grows linearly with
    the variations) and up to ~2x high for the reduced GPNN on small images.
    """
    import torch

    from evaluation.runner import gpnn_generator

    gpnn = gpnn_generator(settings.gpnn_params)
    device = getattr(classifier, "device", torch.device("cpu"))
    x = torch.from_numpy(np.ascontiguousarray(image)).to(device)
    side = max(gpnn.coarsest, gpnn.patch_size)
    gpnn.generate(x[:, :side, :side], 1, seed=settings.seed)
    start = time.perf_counter()
    classifier.predict(gpnn.generate(x, 1, seed=settings.seed).cpu().numpy())
    return (time.perf_counter() - start) * settings.gpnn_variations
