"""The GPU path: every method runs on the model's CUDA device and agrees with the CPU result.

Skipped where no CUDA device is present (CI here is CPU-only; run on a GPU machine).
"""

from __future__ import annotations

import copy

import pytest
import torch

from saliency import CAMERAS, METHODS

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("name", list(METHODS))
def test_saliency_on_cuda_matches_cpu(name, small_cnn, images):
    kwargs = {"resolutions": [32, 48, 64]} if METHODS[name] is CAMERAS else {}
    cpu_maps = METHODS[name](small_cnn, "features.5", **kwargs)(images, 3)
    gpu_model = copy.deepcopy(small_cnn).cuda()
    gpu_maps = METHODS[name](gpu_model, "features.5", **kwargs)(images.cuda(), 3)
    assert gpu_maps.device.type == "cuda"
    torch.testing.assert_close(gpu_maps.cpu(), cpu_maps, atol=1e-3, rtol=0)
