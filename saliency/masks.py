"""Saliency maps (N,H,W) in [0,1] -> attack masks (N,1,H,W).

Every function takes a torch tensor or a numpy array and returns the same kind, float32; empty maps
(0,H,W) give an empty mask (0,1,H,W).
"""

from __future__ import annotations

import numpy as np
import torch

from saliency.base import is_real

Maps = torch.Tensor | np.ndarray


def _number(name: str, value: object, expected: str) -> float:
    """``value`` as a float; a bool, a string or anything else that is not a real number -> ValueError."""
    if not is_real(value):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return float(value)


def _as_maps(maps: Maps) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(maps)) if isinstance(maps, np.ndarray) else maps
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"maps must be a torch.Tensor or numpy array (N,H,W), got {type(maps).__name__}")
    if t.ndim != 3:
        raise ValueError(f"maps must have shape (N,H,W), got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"maps must have a floating dtype, got {t.dtype}")
    if not torch.isfinite(t).all():
        raise ValueError("maps contains NaN or infinite values")
    return t


def _like(result: torch.Tensor, maps: Maps) -> Maps:
    result = result.float()[:, None]
    return result.cpu().numpy() if isinstance(maps, np.ndarray) else result


def top_k(maps: Maps, fraction: float) -> Maps:
    """Hard mask with exactly ``round(fraction * H * W)`` (>= 1) ones per image on the most salient pixels.

    Ties are broken deterministically: among equal values the pixel earlier in row-major order wins.
    """
    t = _as_maps(maps)
    value = _number("fraction", fraction, "a number in (0, 1]")
    if not 0.0 < value <= 1.0:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    n, h, w = t.shape
    k = round(value * h * w)
    if k == 0:
        raise ValueError(
            f"fraction (area) {fraction} of a {h}x{w} map rounds to 0 pixels; use a fraction above "
            f"0.5 / ({h}*{w}) = {0.5 / (h * w):.3g}"
        )
    order = torch.argsort(t.reshape(n, h * w), dim=1, descending=True, stable=True)
    mask = torch.zeros(n, h * w, device=t.device)
    mask.scatter_(1, order[:, :k], 1.0)
    return _like(mask.reshape(n, h, w), maps)


def threshold(maps: Maps, t: float) -> Maps:
    """Hard mask of the pixels whose saliency is >= ``t``."""
    m = _as_maps(maps)
    if not np.isfinite(_number("t", t, "a finite threshold")):
        raise ValueError(f"t must be a finite threshold, got {t}")
    return _like((m >= t).float(), maps)


def soft(maps: Maps, gamma: float = 1.0) -> Maps:
    """Soft mask ``clip(maps, 0, 1) ** gamma`` in [0,1]; gamma > 1 sharpens, gamma < 1 flattens."""
    m = _as_maps(maps)
    if not _number("gamma", gamma, "a number > 0") > 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    return _like(m.clamp(0.0, 1.0).pow(gamma), maps)
