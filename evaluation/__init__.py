"""Evaluation of focused attacks and saliency maps: the embedded benchmark (``datasets``, ``zoo``),
perturbation norms and their reductions, and saliency metrics."""

from __future__ import annotations

from evaluation import datasets, zoo
from evaluation.metrics import norm_reduction, perturbation_norms
from evaluation.saliency_metrics import (
    centre_maps,
    energy_pointing_game,
    insertion_deletion,
    pointing_game,
    sanity_check,
)

__all__ = [
    "centre_maps",
    "datasets",
    "energy_pointing_game",
    "insertion_deletion",
    "norm_reduction",
    "perturbation_norms",
    "pointing_game",
    "sanity_check",
    "zoo",
]
