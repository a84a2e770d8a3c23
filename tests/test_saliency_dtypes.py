"""Every saliency method takes images of any floating dtype (run in the model's dtype, float32 maps out) and
an empty batch (empty maps (0,H,W))."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import fast_cam

from saliency import CAMERAS, METHODS
from saliency.base import model_dtype

pytest.importorskip("pytorch_grad_cam")
pytest.importorskip("captum")

import captum.attr as ca  # noqa: E402
import pytorch_grad_cam as pgc  # noqa: E402

from saliency import external  # noqa: E402

LAYER = "features.5"


def _single_layer(cls):
    def make(model):
        return cls(model, LAYER, resolutions=[32, 48]) if cls is CAMERAS else cls(model, LAYER)

    return make


#: Every saliency method of the package, built on the small CNN.
MAKERS = {
    **{name: _single_layer(cls) for name, cls in METHODS.items()},
    "gpnn-cam": lambda model: fast_cam(model),
    "pytorch-grad-cam": lambda model: external.from_pytorch_grad_cam(pgc.GradCAM(model, [model.features[5]])),
    "captum": lambda model: external.from_captum(ca.IntegratedGradients(model), n_steps=8),
    "occlusion": lambda model: external.occlusion(model, window=16, stride=8, reference=32),
}

#: x in another floating dtype: numpy float64/float16 and torch float64/float16/bfloat16.
DTYPES = {
    "numpy-float64": lambda x: x.double().numpy(),
    "numpy-float16": lambda x: x.half().numpy(),
    "torch-float64": lambda x: x.double(),
    "torch-float16": lambda x: x.half(),
    "torch-bfloat16": lambda x: x.bfloat16(),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", MAKERS)
def test_any_float_dtype_runs_in_the_model_dtype(small_cnn, images, method, dtype):
    """The maps of x in another dtype are those of x cast to the model's float32, float32 themselves."""
    make = MAKERS[method]
    x = DTYPES[dtype](images[:2])
    maps = make(small_cnn)(x)
    as_float32 = torch.as_tensor(x).float()
    assert maps.dtype == torch.float32 and maps.shape == (2, 32, 32)
    torch.testing.assert_close(maps, make(small_cnn)(as_float32), rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ["gradcam", "cameras", "gpnn-cam", "captum"])
def test_float64_model_takes_float32_images(small_cnn, images, method):
    model = small_cnn.double()
    assert model_dtype(model) == torch.float64
    maps = MAKERS[method](model)(images[:2])
    assert maps.dtype == torch.float32 and maps.shape == (2, 32, 32)


@pytest.mark.parametrize("as_numpy", [False, True])
@pytest.mark.parametrize("method", MAKERS)
def test_empty_batch_gives_empty_maps(small_cnn, images, method, as_numpy):
    x = images[:0].numpy() if as_numpy else images[:0]
    maps = MAKERS[method](small_cnn)(x, targets=None)
    assert isinstance(maps, torch.Tensor) and maps.dtype == torch.float32 and maps.shape == (0, 32, 32)


def test_model_dtype_of_modules_and_callables(small_cnn):
    assert model_dtype(small_cnn) == torch.float32
    assert model_dtype(small_cnn.half()) == torch.float16
    assert model_dtype(torch.nn.ReLU()) == torch.get_default_dtype()
    assert model_dtype(np.sum) == torch.get_default_dtype()
