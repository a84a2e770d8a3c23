"""Grad-CAM (Selvaraju et al., ICCV 2017): channel weights are the spatially averaged gradients."""

from __future__ import annotations

import torch

from saliency.base import GradientCAM


class GradCAM(GradientCAM):
    """map = ReLU(sum_k mean_hw(dy/dA_k) * A_k), up-sampled bilinearly, min-max normalised."""

    def combine(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        weights = gradients.mean(dim=(2, 3), keepdim=True)
        return torch.relu((weights * activations).sum(dim=1))
