"""HiResCAM (Draelos & Carin, 2020): element-wise gradient x activation, no spatial pooling."""

from __future__ import annotations

import torch

from saliency.base import GradientCAM


class HiResCAM(GradientCAM):
    """map = ReLU(sum_k dy/dA_k * A_k) at the layer's resolution, up-sampled, min-max normalised.

    It is CAMERAS with a single resolution, before CAMERAS' up-sampling of A and G.
    """

    def combine(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        return torch.relu((gradients * activations).sum(dim=1))
