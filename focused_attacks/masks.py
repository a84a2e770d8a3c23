"""Focus masks: a user's mask normalised to x, saliency maps turned into masks, and the rule that pixels
outside the mask come back as x exactly.

Conventions: masks are float32 numpy in [0,1] of shape (N,1,H,W) (shared over channels) or ``x.shape``;
saliency maps are (N,H,W) in [0,1]. How a map becomes a mask is described in ``docs/algorithms.md``.
"""

from __future__ import annotations

import numpy as np
import torch
from art.config import ART_NUMPY_DTYPE

from saliency import masks as saliency_masks

#: Focus modes every attack supports; FocusedPGD adds ``"penalty"``.
FOCUS_MODES = ("topk", "soft")


def normalize_mask(mask: np.ndarray | torch.Tensor, x_shape: tuple[int, ...]) -> np.ndarray:
    """Broadcast a mask to (N,1,H,W) (one channel) or to ``x_shape`` (per channel), float32.

    Accepted shapes are those broadcastable to x (N,C,H,W): (H,W), (1,H,W), (C,H,W), (N,1,H,W), (1,C,H,W),
    x.shape, ... A 3-D mask is (C,H,W); one whose first dimension is N > 1 is refused as ambiguous (per-image
    masks are (N,1,H,W)). Values must lie in [0,1]; bool masks become 0/1.
    """
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"mask must be a numpy array or torch tensor, got {type(mask).__name__}")
    if not (np.issubdtype(mask.dtype, np.floating) or mask.dtype == bool):
        raise TypeError(f"mask must have a floating or bool dtype, got {mask.dtype}")
    if len(x_shape) != 4:
        raise ValueError(f"x must have shape (N,C,H,W), got shape {tuple(x_shape)}")
    if mask.ndim > 4 or mask.ndim < 2:
        raise ValueError(f"mask of shape {mask.shape} is not broadcastable to x of shape {tuple(x_shape)}")
    m = mask.astype(ART_NUMPY_DTYPE)
    if not np.isfinite(m).all():
        raise ValueError("mask contains NaN or infinite values")
    if ((m < 0) | (m > 1)).any():
        raise ValueError(f"mask values must lie in [0, 1], got values in [{m.min()}, {m.max()}]")
    if m.ndim == 3 and m.shape[0] == x_shape[0] > 1:
        raise ValueError(
            f"mask of shape {mask.shape} is ambiguous for x of shape {tuple(x_shape)}: a 3-D mask is read as "
            "(C,H,W); pass (N,1,H,W) for one mask per image (e.g. mask[:, None]) or (1,C,H,W) for one per "
            "channel"
        )
    m = m.reshape((1,) * (4 - m.ndim) + m.shape)
    if any(d not in (1, xd) for d, xd in zip(m.shape, x_shape)):
        raise ValueError(f"mask of shape {mask.shape} is not broadcastable to x of shape {tuple(x_shape)}")
    n, c, h, w = x_shape
    target = (n, 1, h, w) if m.shape[1] == 1 else (n, c, h, w)
    return np.array(np.broadcast_to(m, target), dtype=ART_NUMPY_DTYPE, copy=True)


def maps_to_mask(maps: np.ndarray | torch.Tensor, focus: str, area: float) -> np.ndarray:
    """Saliency maps (N,H,W) -> mask (N,1,H,W): top-``area`` 0/1 mask (``"topk"``) or the map itself
    clipped to [0,1] (``"soft"`` and ``"penalty"``)."""
    if isinstance(maps, torch.Tensor):
        maps = maps.detach().cpu().numpy()
    maps = np.asarray(maps, dtype=np.float32)
    if focus == "topk":
        return saliency_masks.top_k(maps, area)
    return saliency_masks.soft(maps)


def keep_outside(x: np.ndarray, x_adv: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """``x_adv`` in x's dtype, equal to ``x`` exactly where ``mask`` (broadcastable to x; None: nowhere) is 0
    (the float32 computation would otherwise round those pixels of a float64 x)."""
    out = x_adv.astype(x.dtype, copy=False)
    return out if mask is None else np.where(mask == 0, x, out)


def check_focus(area: float, focus: str, modes: tuple[str, ...] = FOCUS_MODES) -> None:
    """Validate ``area`` in (0,1] and ``focus`` in ``modes``."""
    if isinstance(area, bool) or not isinstance(area, (int, float, np.floating)) or not 0.0 < area <= 1.0:
        raise ValueError(f"area must be a fraction of the image in (0, 1], got {area!r}")
    if focus not in modes:
        raise ValueError(f"focus must be one of {', '.join(map(repr, modes))}, got {focus!r}")
