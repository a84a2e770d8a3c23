"""LayerCAM (Jiang et al., IEEE TIP 2021): per-location positive-gradient weights."""

from __future__ import annotations

import torch

from saliency.base import GradientCAM


class LayerCAM(GradientCAM):
    """map = ReLU(sum_k ReLU(dy/dA_k) * A_k), up-sampled bilinearly, min-max normalised."""

    def combine(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        return torch.relu((torch.relu(gradients) * activations).sum(dim=1))
