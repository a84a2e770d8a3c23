"""Shared fixtures and helpers: a small seeded CNN (with in-place ReLUs), random images, all on CPU,
hand-made grid records (:func:`grid_record`), ART wrappers of the CNN (:func:`art_classifier`,
:func:`calibrate_head`) and a fast GPNN-CAM (:func:`fast_cam`). Test files import the helpers with
``from conftest import ...``; they import no helpers from each other."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
from torch import nn

if TYPE_CHECKING:
    from art.estimators.classification import PyTorchClassifier

    from saliency import GPNN, GPNNCAM

# Without a CUDA device, Triton kernels (saliency.triton_nn) run in Triton's interpreter on CPU tensors. It
# must be chosen before Triton is first imported (importing torch does not import it).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The benchmarks' reference implementations double as test oracles (``benchmarks.reference_cameras``).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class SmallCNN(nn.Module):
    """3x32x32 -> 10 logits. ``features.2`` is at the input resolution, ``features.5`` at 1/2."""

    def __init__(self, n_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


@pytest.fixture
def small_cnn() -> SmallCNN:
    torch.manual_seed(0)
    return SmallCNN().eval()


@pytest.fixture
def images() -> torch.Tensor:
    """(5,3,32,32) float32 in [0,1]."""
    return torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def grid_record(image, attack, focuser, area, l2, success=True, correct=True, adv_pred=None, **extra) -> dict:
    """A record as :func:`evaluation.records.make_records` writes it, with L2 ``l2`` (L1 2 x l2, L-inf
    l2 / 4); a failed or unattempted attack has null norms. ``extra`` replaces fields (e.g. ``eps``)."""
    success = success and correct
    norms = {"l0": 30.0 * area, "l0_pixels": 10.0 * area, "l1": 2 * l2, "l2": l2, "linf": l2 / 4}
    return {
        "image": image,
        "name": f"img{image}",
        "attack": attack,
        "focuser": focuser,
        "area": area,
        "label": 1,
        "clean_pred": 1 if correct else 2,
        "adv_pred": (adv_pred if adv_pred is not None else 3) if success else 1,
        "correct": correct,
        "success": success,
        "adv_confidence": 0.9,
        "mask_area": area,
        "eps": None,
        **{k: v if success else None for k, v in norms.items()},
        **extra,
    }


def calibrate_head(model: nn.Module, seed: int = 5) -> nn.Module:
    """Standardise an untrained SmallCNN's pooled features in its fc layer (estimated on random images), so
    that predictions differ between images and small perturbations can flip them."""
    with torch.no_grad():
        probe = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
        feats = model.pool(model.features(probe)).flatten(1)
        spread = feats.std(0)
        model.fc.weight.mul_(torch.where(spread > 1e-6, 1 / spread.clamp_min(1e-6), 0.0))
        model.fc.bias.copy_(-(model.fc.weight @ feats.mean(0)))
    return model


def art_classifier(model: nn.Module, size: int = 32, **kwargs) -> PyTorchClassifier:
    """ART's wrapper of a 10-class ``model`` on (3, size, size) images in [0, 1], on CPU."""
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(
        model, nn.CrossEntropyLoss(), (3, size, size), 10, clip_values=(0.0, 1.0), device_type="cpu", **kwargs
    )


#: The SmallCNN layers GPNN-CAM reads in the tests (1/2 resolution first).
LAYERS = ["features.5", "features.2"]


def fast_gpnn() -> GPNN:
    """The GPNN-CAM preset (zeros + noise 3.0) with few iterations and 5x5 patches, for 32 px tests."""
    from saliency import GPNN

    return GPNN(patch_size=5, noise_sigma=3.0, init="zeros", iters=2)


def fast_cam(model: nn.Module, layers=LAYERS, **kwargs) -> GPNNCAM:
    """GPNN-CAM on ``layers`` with 4 variations of :func:`fast_gpnn` (``kwargs`` replace settings)."""
    from saliency import GPNNCAM

    kwargs = {"n_variations": 4, "batch_variations": 2, "gpnn": fast_gpnn(), **kwargs}
    return GPNNCAM(model, layers, **kwargs)
