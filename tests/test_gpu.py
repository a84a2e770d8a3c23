"""The GPU path: every method runs on the model's CUDA device and agrees with the CPU result.

Skipped where no CUDA device is present (CI here is CPU-only; run on a GPU machine).
"""

from __future__ import annotations

import copy

import pytest
import torch

from saliency import CAMERAS, METHODS

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def exact_float32():
    """CPU and GPU results are compared, so turn off cuDNN's default TF32 convolutions for the test."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.parametrize("name", list(METHODS))
def test_saliency_on_cuda_matches_cpu(name, small_cnn, images):
    kwargs = {"resolutions": [32, 48, 64]} if METHODS[name] is CAMERAS else {}
    cpu_maps = METHODS[name](small_cnn, "features.5", **kwargs)(images, 3)
    gpu_model = copy.deepcopy(small_cnn).cuda()
    gpu_maps = METHODS[name](gpu_model, "features.5", **kwargs)(images.cuda(), 3)
    assert gpu_maps.device.type == "cuda"
    torch.testing.assert_close(gpu_maps.cpu(), cpu_maps, atol=1e-3, rtol=0)


def test_focused_attacks_on_cuda_match_cpu(small_cnn, images):
    """FocusedPGD / FocusedCarliniL2 on a GPU PyTorchClassifier equal the CPU run; the hard mask holds."""
    import numpy as np
    from art.estimators.classification import PyTorchClassifier

    from evaluation import zoo
    from focused_attacks import FocusedCarliniL2, FocusedPGD
    from saliency import GradCAM

    def classifier(device_type: str) -> PyTorchClassifier:
        model = zoo.load("digits-cnn")
        return PyTorchClassifier(
            model,
            torch.nn.CrossEntropyLoss(),
            (3, 64, 64),
            10,
            clip_values=(0.0, 1.0),
            device_type=device_type,
        )

    from evaluation.datasets import cluttered_digits

    x, y, _ = cluttered_digits(8, "test")
    results = {}
    for device_type in ("cpu", "gpu"):
        clf = classifier(device_type)
        assert clf.device.type == ("cuda" if device_type == "gpu" else "cpu")
        focuser = GradCAM(clf, "features.9")
        pgd = FocusedPGD(clf, saliency=focuser, area=0.1, eps=0.5, eps_step=0.05, max_iter=20, verbose=False)
        cw = FocusedCarliniL2(
            clf, saliency=focuser, area=0.2, max_iter=5, binary_search_steps=3, verbose=False
        )
        results[device_type] = [(a.generate(x, y), a.last_mask_) for a in (pgd, cw)]
    for (adv_cpu, mask_cpu), (adv_gpu, mask_gpu) in zip(results["cpu"], results["gpu"]):
        assert np.array_equal(mask_cpu, mask_gpu)
        assert np.abs(adv_cpu - adv_gpu).max() < 1e-3
        assert np.all((adv_gpu - x)[np.broadcast_to(mask_gpu, x.shape) == 0] == 0)
