"""Stride-1 square patches of images: extraction, and folding back by uniform or distance-weighted
averaging (the patch layer of :mod:`saliency.gpnn`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def extract_patches(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """All stride-1 patches: (B,C,H,W) -> (B, L, C*p*p), L = (H-p+1)(W-p+1), row-major positions.

    Same layout as ``F.unfold(images, p).transpose(1, 2)`` (channel, row, column within a patch), built
    from strided views (several times faster than im2col on CPU).
    """
    b, c, p = images.shape[0], images.shape[1], patch_size
    windows = images.unfold(2, p, 1).unfold(3, p, 1)  # (B,C,H',W',p,p)
    return windows.permute(0, 2, 3, 1, 4, 5).reshape(b, -1, c * p * p)


def patch_counts(size: tuple[int, int], patch_size: int, device: torch.device | None = None) -> torch.Tensor:
    """How many stride-1 patches cover each pixel: (1,1,H,W) float32."""
    ones = torch.ones((1, 1, *size), device=device)
    return F.fold(F.unfold(ones, patch_size), size, patch_size)


def matched_distances(queries: torch.Tensor, keys: torch.Tensor, field: torch.Tensor) -> torch.Tensor:
    """D, the mean squared difference per element, between each query patch and the key it was matched to:
    queries (B, L, d), keys (N_k, d), field (B, L) long -> (B, L) float32 (one variation at a time)."""
    out = torch.empty(field.shape, dtype=torch.float32, device=queries.device)
    for b in range(field.shape[0]):
        out[b] = (queries[b] - keys[field[b]]).pow_(2).mean(-1)
    return out


def fold_patches(
    patches: torch.Tensor, size: tuple[int, int], patch_size: int, counts: torch.Tensor | None = None
) -> torch.Tensor:
    """Uniform average of overlapping patches: (B, L, C*p*p) -> (B,C,H,W) (inverse of extract_patches).

    ``counts`` is :func:`patch_counts` for this size (computed when None).
    """
    if counts is None:
        counts = patch_counts(size, patch_size, patches.device)
    return F.fold(patches.transpose(1, 2), size, patch_size) / counts


def distance_weights(distances: torch.Tensor) -> torch.Tensor:
    """GPNN-CAM's patch weights exp(-d / sigma): distances (B, L) >= 0 -> (B, L) in (0, 1].

    sigma is the std of each row (or its minimum where the std is 0, or 1 where that is 0 too). The
    weights are scaled by exp(min d / sigma) per row, which leaves every weighted average unchanged and
    keeps the best patch at weight 1 (no underflow to 0/0); they are kept above float32's smallest
    normal number.
    """
    sigma = distances.std(dim=1, keepdim=True, correction=0)
    low = distances.amin(dim=1, keepdim=True)
    sigma = torch.where(sigma > 0, sigma, torch.where(low > 0, low, torch.ones_like(low)))
    return torch.exp(-(distances - low) / sigma).clamp_min(torch.finfo(distances.dtype).tiny)


def fold_patches_weighted(
    patches: torch.Tensor, weights: torch.Tensor, size: tuple[int, int], patch_size: int
) -> torch.Tensor:
    """Weighted average of overlapping patches: patches (B, L, C*p*p), weights (B, L) > 0 -> (B,C,H,W)."""
    total = F.fold((patches * weights[..., None]).transpose(1, 2), size, patch_size)
    return total / F.fold(weights[:, None, :].expand(-1, patch_size**2, -1), size, patch_size)
