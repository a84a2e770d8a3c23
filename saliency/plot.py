"""Saliency overlays: a colour-mapped map blended over the image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image


def _to_numpy(a: np.ndarray | torch.Tensor) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def _image_hwc(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """(C,H,W) or (H,W,C) or (H,W), uint8 or float in [0,1] -> float (H,W,3) in [0,1]."""
    img = _to_numpy(image)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3:
        raise ValueError(f"image must be (C,H,W), (H,W,C) or (H,W), got shape {img.shape}")
    if img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = img.transpose(1, 2, 0)
    img = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    return np.clip(img, 0.0, 1.0)


def overlay(
    image: np.ndarray | torch.Tensor,
    saliency_map: np.ndarray | torch.Tensor,
    alpha: float = 0.5,
    cmap: str = "jet",
) -> np.ndarray:
    """Blend ``cmap(saliency_map)`` over ``image``; returns RGB uint8 (H,W,3).

    ``saliency_map`` is (H,W) in [0,1] with the image's H,W.
    """
    img = _image_hwc(image)
    sal = _to_numpy(saliency_map).astype(np.float32)
    if sal.shape != img.shape[:2]:
        raise ValueError(f"saliency_map must have the image's shape {img.shape[:2]}, got {sal.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    heat = colormaps[cmap](np.clip(sal, 0.0, 1.0))[..., :3]
    return np.round(255 * ((1 - alpha) * img + alpha * heat)).astype(np.uint8)


def save_overlay(
    path: str | Path,
    image: np.ndarray | torch.Tensor,
    saliency_map: np.ndarray | torch.Tensor,
    alpha: float = 0.5,
    cmap: str = "jet",
) -> Path:
    """Write :func:`overlay` as a PNG to ``path`` (parent folders are created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(overlay(image, saliency_map, alpha, cmap)).save(path)
    return path
