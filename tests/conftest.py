"""Shared fixtures: a small seeded CNN (with in-place ReLUs) and random images, all on CPU."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

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
