"""RISE's insertion and deletion metric (Petsiuk et al. 2018), batched in torch: :func:`insertion_deletion`
and its blur, :func:`gaussian_blur`.

Maps are (N,H,W) arrays or tensors (numpy or torch), as in :mod:`evaluation.saliency_metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from evaluation.saliency_metrics import _maps_numpy, _module_device
from saliency.base import Targets, check_images, is_int, model_in_eval, resolve_targets, unwrap_model


def gaussian_blur(x: torch.Tensor, kernel_size: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """The insertion substrate: each channel convolved with a normalised ``kernel_size`` square Gaussian
    of standard deviation ``sigma``, zero padding (same size out). RISE's kernel, ``gaussian_filter``
    (sigma 5, reflecting boundary) of an 11x11 delta, is flatter: it differs from this kernel by up to
    28 % of this kernel's peak."""
    coords = torch.arange(kernel_size, dtype=torch.float64) - (kernel_size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    kernel = torch.outer(g, g)
    kernel = (kernel / kernel.sum()).to(x)
    c = x.shape[1]
    weight = kernel.expand(c, 1, kernel_size, kernel_size)
    return F.conv2d(x, weight, padding=kernel_size // 2, groups=c)


def insertion_deletion(
    model: object,
    x: np.ndarray | torch.Tensor,
    maps: np.ndarray | torch.Tensor,
    targets: Targets = None,
    steps: int | None = None,
    batch_size: int = 64,
    verbose: bool = False,
) -> dict[str, np.ndarray]:
    """RISE's insertion and deletion scores, batched in torch.

    Pixels are ranked by decreasing saliency (stable: on ties the first in row-major order goes first).
    With ``p = ceil(H*W / steps)`` pixels per step and, as in RISE, ``n = ceil(H*W / p)`` steps (can be
    fewer than ``steps``), step i = 0..n uses the top ``min(i*p, H*W)`` pixels: deletion sets them to 0
    in all channels (starting from the image); insertion copies them from the image into a blurred copy
    (:func:`gaussian_blur`). The score of each step is the softmax probability of the target class
    (default: the class predicted on the clean image); the AUC is the normalised trapezoid
    ``(sum s - s_0/2 - s_n/2) / n`` in [0,1].

    Unlike RISE, which zeroes and blurs the normalised tensor (there 0 is the mean colour), both act here
    on ``x``, before the model's preprocessing: deleted pixels are black, the blur's zero padding darkens
    a 5-pixel border in input space, and the blur kernel differs (see :func:`gaussian_blur`).

    Args:
        model: ``nn.Module`` or ART ``PyTorchClassifier`` (its preprocessing is applied).
        x: images (N,C,H,W) in the model's input space; maps: (N,H,W) saliency.
        steps: requested number of steps; default H (one image row of pixels per step, RISE's 224 at
            224x224).

    Returns:
        ``{"insertion": (N,), "deletion": (N,), "insertion_curve": (N,n+1), "deletion_curve": (N,n+1),
        "targets": (N,)}`` numpy arrays (float64 scores, int64 targets).
    """
    module, preprocess = unwrap_model(model)
    x = check_images(x).detach().float()
    maps_np = _maps_numpy(maps)
    n, c, h, w = x.shape
    if maps_np.shape != (n, h, w):
        raise ValueError(f"maps must have shape {(n, h, w)} to match x, got {maps_np.shape}")
    steps = h if steps is None else steps
    if not is_int(steps) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    device = _module_device(module)
    x = x.to(device)
    rank_t = _pixel_ranks(maps_np, device)
    per_step = math.ceil(h * w / steps)
    n_steps = math.ceil(h * w / per_step)
    kept = torch.clamp(torch.arange(n_steps + 1, device=device) * per_step, max=h * w)

    def probabilities(batch: torch.Tensor) -> torch.Tensor:
        return torch.softmax(module(preprocess(batch)), dim=1)

    with torch.no_grad(), model_in_eval(module):
        t = resolve_targets(targets, torch.cat([module(preprocess(b)) for b in x.split(batch_size)]))
        curves = _curves(probabilities, x, rank_t, kept, t, batch_size, verbose)
    return _aucs(curves, t)


def _pixel_ranks(maps: np.ndarray, device: torch.device) -> torch.Tensor:
    """(N,1,H,W) int64 rank of each pixel in its map (N,H,W), 0 for the most salient: by decreasing
    saliency, the first in row-major order first on ties."""
    n, h, w = maps.shape
    order = np.argsort(-maps.reshape(n, -1), axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(h * w)[None].repeat(n, 0), axis=1)
    return torch.from_numpy(rank).to(device).reshape(n, 1, h, w)


def _curves(
    probabilities: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    rank_t: torch.Tensor,
    kept: torch.Tensor,
    t: torch.Tensor,
    batch_size: int,
    verbose: bool,
) -> dict[str, torch.Tensor]:
    """The ``"insertion"`` and ``"deletion"`` curves, float32 (N,n+1) on the CPU: at step i the probability
    of class ``t`` with the pixels of ``rank_t`` below ``kept[i]`` copied from ``x`` into its blur, or
    zeroed in ``x``; ``batch_size`` (image, step) pairs a batch. Call it under ``torch.no_grad()``."""
    n, n_points = len(x), len(kept)
    curves = {"insertion": torch.empty(n, n_points), "deletion": torch.empty(n, n_points)}
    pairs = torch.cartesian_prod(torch.arange(n), torch.arange(n_points))
    blurred = gaussian_blur(x)
    for chunk in tqdm(pairs.split(batch_size), desc="insertion/deletion", disable=not verbose):
        img, step = chunk[:, 0].to(x.device), chunk[:, 1].to(x.device)
        top = (rank_t[img] < kept[step].reshape(-1, 1, 1, 1)).to(x.dtype)
        deleted = x[img] * (1 - top)
        inserted = blurred[img] * (1 - top) + x[img] * top
        for name, batch in (("deletion", deleted), ("insertion", inserted)):
            p = probabilities(batch).gather(1, t[img][:, None])[:, 0]
            curves[name][chunk[:, 0], chunk[:, 1]] = p.float().cpu()
    return curves


def _aucs(curves: dict[str, torch.Tensor], t: torch.Tensor) -> dict[str, np.ndarray]:
    """:func:`insertion_deletion`'s result: the targets ``t``, then per curve (N,n+1) its normalised
    trapezoid AUC and the curve itself, float64."""
    out: dict[str, np.ndarray] = {"targets": t.cpu().numpy()}
    for name, curve in curves.items():
        s = curve.double().numpy()
        n_steps = s.shape[1] - 1
        out[name] = (s.sum(axis=1) - s[:, 0] / 2 - s[:, -1] / 2) / n_steps
        out[f"{name}_curve"] = s
    return out
