"""Evaluation of focused attacks and saliency maps: the embedded benchmark (``datasets``, ``zoo``),
perturbation norms and their reductions, and saliency metrics.

The names below are imported on first use (PEP 562), so that ``import evaluation.cli`` and every
``--help`` stay free of torch.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public name -> the module that defines it (a module itself where the two are equal).
_EXPORTS = {
    "datasets": "evaluation.datasets",
    "zoo": "evaluation.zoo",
    "norm_reduction": "evaluation.metrics",
    "perturbation_norms": "evaluation.metrics",
    "centre_maps": "evaluation.saliency_metrics",
    "energy_pointing_game": "evaluation.saliency_metrics",
    "insertion_deletion": "evaluation.insertion_deletion_metric",
    "pointing_game": "evaluation.saliency_metrics",
    "sanity_check": "evaluation.saliency_metrics",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'evaluation' has no attribute {name!r}")
    module = importlib.import_module(_EXPORTS[name])
    value = module if module.__name__ == f"evaluation.{name}" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
