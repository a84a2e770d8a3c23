"""Perturbation norms and how much a focused attack reduces them compared with the unfocused attack."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

#: An element counts as changed when |x_adv - x| > CHANGE_ULPS * eps32 * max(1, |x|): 9.5e-7 for images in
#: [0,1], several float32 round-offs of the value (a round trip such as C&W's tanh change of variables
#: leaves a few units of eps32 = 1.2e-7 on pixels it did not move) and far below one 8-bit grey level
#: (3.9e-3).
CHANGE_ULPS = 8
NORMS = ("l0", "l0_pixels", "l1", "l2", "linf")


def _as_numpy(a: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(a).__name__}")
    return a


def perturbation_norms(
    x: np.ndarray | torch.Tensor, x_adv: np.ndarray | torch.Tensor
) -> dict[str, np.ndarray]:
    """Per-sample norms of ``delta = x_adv - x`` for images (N,C,H,W), computed in float64.

    Returns a dict of (N,) arrays:
        ``l0``: number of changed elements (C*H*W values with |delta| above float32 round-off,
        :data:`CHANGE_ULPS`), int64;
        ``l0_pixels``: number of changed pixels (H*W positions where any channel changed; this is what a
        mask's area bounds), int64;
        ``l1``: sum |delta|; ``l2``: sqrt(sum delta^2); ``linf``: max |delta| (all float64).
    """
    x, x_adv = _as_numpy(x, "x"), _as_numpy(x_adv, "x_adv")
    if x.shape != x_adv.shape:
        raise ValueError(f"x and x_adv must have the same shape, got {x.shape} and {x_adv.shape}")
    if x.ndim != 4 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch of images (N,C,H,W), got shape {x.shape}")
    delta = np.abs(x_adv.astype(np.float64) - x.astype(np.float64))
    if not np.isfinite(delta).all():
        raise ValueError("x and x_adv must be finite")
    tolerance = CHANGE_ULPS * np.finfo(np.float32).eps * np.maximum(1.0, np.abs(x.astype(np.float64)))
    changed = delta > tolerance
    flat = delta.reshape(len(delta), -1)
    return {
        "l0": changed.reshape(len(delta), -1).sum(axis=1).astype(np.int64),
        "l0_pixels": changed.any(axis=1).reshape(len(delta), -1).sum(axis=1).astype(np.int64),
        "l1": flat.sum(axis=1),
        "l2": np.sqrt((flat**2).sum(axis=1)),
        "linf": flat.max(axis=1),
    }


def _report_arrays(report: Mapping[str, object], name: str) -> dict[str, np.ndarray]:
    if not isinstance(report, Mapping):
        raise TypeError(f"{name} must be a dict of per-sample arrays, got {type(report).__name__}")
    if "success" not in report:
        raise ValueError(f"{name} must have a 'success' entry (per-sample bools)")
    arrays = {
        key: np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value)
        for key, value in report.items()
        if key == "success" or key in NORMS
    }
    n = len(arrays["success"])
    for key, value in arrays.items():
        if value.ndim != 1 or len(value) != n:
            raise ValueError(
                f"{name}[{key!r}] must be a 1-D array of {n} per-sample values, got {value.shape}"
            )
    if arrays["success"].dtype != bool:
        raise TypeError(f"{name}['success'] must be booleans, got dtype {arrays['success'].dtype}")
    return arrays


def norm_reduction(
    report_focused: Mapping[str, object], report_full: Mapping[str, object]
) -> dict[str, object]:
    """How much smaller the focused attack's perturbations are than the full (unfocused) attack's.

    Both reports hold per-sample arrays for the same N images in the same order: ``success`` (bool) and
    any of the norms of :func:`perturbation_norms` (other entries are ignored). Only images that **both**
    attacks fool are used. For each image and norm the reduction is ``100 * (1 - focused / full)``
    percent (positive = the focused perturbation is smaller); images whose full-attack norm is 0 (already
    misclassified) are left out of that norm. The summary is the median and the mean **of these
    per-image reductions** (not the reduction of the medians).

    Returns:
        ``{"n_images": N, "n_both": images both attacks fool, "success_rate_focused": float,
        "success_rate_full": float, <norm>: {"median_reduction": %, "mean_reduction": %, "n": images
        used}}`` for each norm present in both reports; NaN reductions when no image is usable.
    """
    focused = _report_arrays(report_focused, "report_focused")
    full = _report_arrays(report_full, "report_full")
    n = len(full["success"])
    if len(focused["success"]) != n:
        raise ValueError(
            f"report_focused and report_full must describe the same images, got {len(focused['success'])} "
            f"and {n} samples"
        )
    both = focused["success"] & full["success"]
    result: dict[str, object] = {
        "n_images": n,
        "n_both": int(both.sum()),
        "success_rate_focused": float(focused["success"].mean()) if n else float("nan"),
        "success_rate_full": float(full["success"].mean()) if n else float("nan"),
    }
    for norm in NORMS:
        if norm not in focused or norm not in full:
            continue
        f, g = focused[norm].astype(np.float64), full[norm].astype(np.float64)
        used = both & (g > 0)
        reductions = 100.0 * (1.0 - f[used] / g[used])
        result[norm] = {
            "median_reduction": float(np.median(reductions)) if used.any() else float("nan"),
            "mean_reduction": float(np.mean(reductions)) if used.any() else float("nan"),
            "n": int(used.sum()),
        }
    return result
