"""Exact completeness-normalised patch nearest neighbours by tiled matmuls (CPU or CUDA), and the naive
full-matrix reference.

D(i,j) is the mean squared difference per element between query patch i and key patch j; the score is
S(i,j) = D(i,j) / (alpha + min_l D(l,j)), the minimum over the queries of the same variation, and
NN(i) = argmin_j S(i,j).
"""

from __future__ import annotations

import math
import os

import torch

#: Smallest and largest default tile sizes in distance entries (64 MiB and 1 GiB of float32).
MIN_DEFAULT_CHUNK = 2**24
MAX_DEFAULT_CHUNK_CPU = 2**28


def default_chunk_size(device: torch.device) -> int:
    """Tile size in distance entries: float32 entries in 1/4 of the free memory on CUDA; in 1/8 of the
    free RAM on CPU, at most 2**28 (1 GiB). Never below 2**24."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(MIN_DEFAULT_CHUNK, free // 16)
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # no sysconf (non-POSIX)
        return MIN_DEFAULT_CHUNK
    return int(min(MAX_DEFAULT_CHUNK_CPU, max(MIN_DEFAULT_CHUNK, free // 32)))


def nearest_neighbours_naive(queries: torch.Tensor, keys: torch.Tensor, alpha: float) -> torch.Tensor:
    """Reference NN with the full distance matrix: queries (B,Nq,d), keys (Nk,d) -> indices (B,Nq) long.

    NN(b,i) = argmin_j D(b,i,j) / (alpha + min_l D(b,l,j)) with D the mean squared difference.
    Memory B*Nq*Nk entries: for tests and the benchmark only.
    """
    d = queries.shape[-1]
    sq = queries.pow(2).sum(-1)[:, :, None] + keys.pow(2).sum(-1)[None, None, :] - 2 * queries @ keys.T
    dist = sq.clamp_min(0) / d
    col_min = dist.amin(dim=1, keepdim=True)
    return (dist / (alpha + col_min)).argmin(dim=2)


def _tile(batch: int, n_reduced: int, n_kept: int, budget: int) -> tuple[int, int]:
    """Tile sizes (reduced, kept): the reduced axis as long as possible, batch*reduced*kept <= budget."""
    reduced = min(n_reduced, max(1, budget // batch))
    kept = min(n_kept, max(1, budget // (batch * reduced)))
    return reduced, kept


def nearest_neighbours(
    queries: torch.Tensor, keys: torch.Tensor, alpha: float, chunk_size: int = MIN_DEFAULT_CHUNK
) -> torch.Tensor:
    """Exact completeness-normalised NN, memory-bounded: queries (B,Nq,d), keys (Nk,d) -> (B,Nq) long.

    Same result as :func:`nearest_neighbours_naive` (up to float rounding on near-ties), but no tile of
    distances holds more than ``max(chunk_size, B)`` entries. Each tile is one matmul of augmented
    vectors, so a tile is written once and read once by its reduction:
    ``[q, ||q||^2] . [-2k, 1] = ||q||^2 - 2 q.k`` (pass 1) and
    ``[q, ||q||^2, 1] . w_j [-2k, 1, ||k||^2] = w_j ||q - k||^2`` (pass 2, w_j = 1 / (alpha d + min_l)).
    When one variation's whole (Nq,Nk) matrix fits, groups of variations are done in one tile each, the
    pass-1 matrix being rescaled in place for pass 2 (one matmul instead of two). Otherwise pass 1 takes
    per-variation column minima over key chunks and pass 2 the argmin of the normalised score over query
    chunks (running reductions when a whole axis does not fit). Only the column minima are clamped at 0
    (rounding residues of exact matches stay slightly negative and still rank first).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of distance entries, got {chunk_size}")
    batch, n_q, d = queries.shape
    n_k = keys.shape[0]
    q_norm = queries.pow(2).sum(-1, keepdim=True)  # (B,Nq,1)
    k_norm = keys.pow(2).sum(-1)  # (Nk,)
    q_aug = torch.cat([queries, q_norm], dim=-1)  # (B,Nq,d+1)
    k_aug = torch.cat([-2 * keys.T, torch.ones_like(k_norm)[None]])  # (d+1,Nk)

    if n_q * n_k <= chunk_size:  # whole matrices fit: one matmul per group of variations
        group = chunk_size // (n_q * n_k)
        out = []
        for b0 in range(0, batch, group):
            partial = q_aug[b0 : b0 + group] @ k_aug  # ||q||^2 - 2 q.k
            col_min = partial.amin(dim=1, keepdim=True).add_(k_norm).clamp_(min=0)
            scale = 1.0 / col_min.add_(alpha * d)
            torch.addcmul(k_norm * scale, partial, scale, out=partial)
            out.append(partial.argmin(dim=2))
        return torch.cat(out)

    # Pass 1: column minima of the squared distance, per variation.
    col_min = torch.full((batch, n_k), math.inf, dtype=queries.dtype, device=queries.device)
    cq, ck = _tile(batch, n_q, n_k, chunk_size)
    for k0 in range(0, n_k, ck):
        for q0 in range(0, n_q, cq):
            tile_min = (q_aug[:, q0 : q0 + cq] @ k_aug[:, k0 : k0 + ck]).amin(dim=1)
            torch.minimum(col_min[:, k0 : k0 + ck], tile_min, out=col_min[:, k0 : k0 + ck])
    scale = 1.0 / col_min.add_(k_norm).clamp_(min=0).add_(alpha * d)  # (B,Nk)

    # Pass 2: argmin over keys of the normalised score, with per-variation scaled keys.
    q_aug = torch.cat([q_aug, torch.ones_like(q_norm)], dim=-1)  # (B,Nq,d+2)
    k_scaled = torch.cat([k_aug, k_norm[None]])[None] * scale[:, None, :]  # (B,d+2,Nk)
    best_val = torch.full((batch, n_q), math.inf, dtype=queries.dtype, device=queries.device)
    best_idx = torch.zeros((batch, n_q), dtype=torch.long, device=queries.device)
    ck, cq = _tile(batch, n_k, n_q, chunk_size)
    for q0 in range(0, n_q, cq):
        rows = slice(q0, q0 + cq)
        for k0 in range(0, n_k, ck):
            val, idx = torch.bmm(q_aug[:, rows], k_scaled[:, :, k0 : k0 + ck]).min(dim=2)
            better = val < best_val[:, rows]
            best_val[:, rows] = torch.where(better, val, best_val[:, rows])
            best_idx[:, rows] = torch.where(better, idx + k0, best_idx[:, rows])
    return best_idx
