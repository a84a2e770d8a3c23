"""Models of the embedded benchmark."""

from __future__ import annotations

import torch
from torch import nn


class DigitsCNN(nn.Module):
    """A small CNN for :func:`evaluation.datasets.cluttered_digits`: (N,3,64,64) in [0,1] -> 10 logits.

    Four conv-BN-ReLU stages (3x3 convolutions with 16, 24, 48, 96 channels, in-place ReLU): the first
    has stride 2, the others are separated by 2x2 max pooling; then global average pooling and a linear
    head. No input normalisation (inputs are [0,1] images); any input size works. CAM target layers at a
    64x64 input:

    ``features.5`` (24 channels, 32x32), ``features.9`` (48, 16x16), ``features.13`` (96, 8x8).
    """

    #: CAM target layers, top (coarsest) first.
    cam_layers = ("features.13", "features.9", "features.5")

    def __init__(self, n_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn_relu(3, 16, stride=2),
            *_conv_bn_relu(16, 24),
            nn.MaxPool2d(2),
            *_conv_bn_relu(24, 48),
            nn.MaxPool2d(2),
            *_conv_bn_relu(48, 96),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(96, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def _conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
