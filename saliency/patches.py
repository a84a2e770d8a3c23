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


def matched_distances(queries: torch.Tensor, keys: torch.Tensor, field: torch.Tensor) -> torch.Tensor:
    """D, the mean squared difference per element, between each query patch and the key it was matched to:
    queries (B, L, d), keys (N_k, d), field (B, L) long -> (B, L) float32 (one variation at a time)."""
    out = torch.empty(field.shape, dtype=torch.float32, device=queries.device)
    for b in range(field.shape[0]):
        out[b] = (queries[b] - keys[field[b]]).pow_(2).mean(-1)
    return out


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


def fold_field(
    source: torch.Tensor, field: torch.Tensor, patch_size: int, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """The images made of the source patches a NN field chose, overlapping patches averaged.

    Args:
        source: (1,C,H,W) image whose stride-1 patches are pasted.
        field: (B, L) long, for every patch position of the output (row-major, L = (H-p+1)(W-p+1)) the
            index of the source patch pasted there (:func:`extract_patches`'s order).
        patch_size: p.
        weights: (B, L) > 0, each pasted patch's weight (None: the uniform average).

    Returns:
        (B,C,H,W): at each pixel the (weighted) average of the pasted patches covering it, i.e.
        ``F.fold`` of ``extract_patches(source, p)[0][field]`` (times the weights) over the fold of the
        weights; computed one offset within the patch at a time, without the (B, L, C*p*p) patches.
    """
    channels, height, width = source.shape[-3:]
    p, batch = patch_size, field.shape[0]
    rows, cols = height - p + 1, width - p + 1
    # the source's pixels, padded so that every offset within a patch is a plain slice of them
    pixels = F.pad(source.reshape(channels, height * width), (0, (p - 1) * (width + 1)))
    corner = ((field // cols) * width + field % cols).view(-1)  # each pasted patch's top-left pixel
    weight = torch.ones((batch, 1, rows, cols), dtype=source.dtype, device=source.device)
    if weights is not None:
        weight = weights.reshape(batch, 1, rows, cols).to(source.dtype)
    total = torch.zeros((batch, channels, height, width), dtype=source.dtype, device=source.device)
    for dy in range(p):
        for dx in range(p):
            shifted = pixels[:, dy * width + dx : dy * width + dx + height * width]
            pasted = shifted.index_select(1, corner).view(channels, batch, rows, cols).transpose(0, 1)
            if weights is None:
                total[:, :, dy : dy + rows, dx : dx + cols] += pasted
            else:
                total[:, :, dy : dy + rows, dx : dx + cols].addcmul_(pasted, weight)
    # the weights of the patches covering each pixel, summed
    return total / F.avg_pool2d(F.pad(weight, (p - 1,) * 4), p, stride=1, divisor_override=1)
