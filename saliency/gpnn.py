"""GPNN (Granot et al., "Drop the GAN", CVPR 2022): image variations by coarse-to-fine patch nearest
neighbours with the completeness-normalised score.

Choices (reference/gpnn_cam.md, 1.2-1.5), all written from the algorithm:

* Pyramid: ``N = ceil(log(min(H, W) / coarsest) / log r)`` levels (10 for 224 px): the input and its
  antialiased bilinear down-sizings to ``round(H / r**n), round(W / r**n)`` for n < N-1, then the coarsest
  level, forced to a short side of exactly ``coarsest`` pixels (aspect ratio kept). A short side below
  ``coarsest * r`` gives one level, the input itself.
* Initialisation: the coarsest source (``init="source"``, the paper) or zeros (``init="zeros"``, the
  GPNN-CAM preset) plus Gaussian noise of std ``noise_sigma`` in [0,1] units, one value per pixel shared
  over the channels, drawn from a CPU ``torch.Generator`` seeded with ``seed`` (so outputs do not depend
  on the device's random stream), one variation after the other: variation i depends on (seed, i) only,
  not on ``n``.
* Distance: D(i,j) = mean squared difference per element between query patch i and key patch j, on
  [0,1] images. Score S(i,j) = D(i,j) / (alpha + min_l D(l,j)), the minimum over the queries of the
  *same* variation; NN(i) = argmin_j S(i,j) (first index on exact ties in the shift search; the matmul
  search's float32 rounding can order tied keys differently). alpha is in these units: Efficient-GPNN
  also uses a per-element mean, but on [-1,1] images (4x our D), so its 0.005 is our 0.00125; iyttor's
  un-squared Euclidean distance is not comparable.
* Exact NN, two passes (column minima per variation, then the argmin of the normalised score), never a
  queries x keys matrix at once. ``search="shifts"`` (the CPU default): per-pixel differences shared by
  all patch pairs containing them (``saliency.shifted_nn``, numba). ``search="matmul"`` (the CUDA
  default): tiles of at most ``chunk_size`` distances, each one matmul of augmented patch vectors
  (:func:`nearest_neighbours`); ``tf32=True`` trades exactness for speed there (TF32 tensor cores).
  ``search="triton"`` (CUDA): the matmul search's tiles reduced in registers by two fused Triton kernels
  (``saliency.triton_nn``), no tile written to memory.
* Keys: at every level, iteration 0 uses the coarser source bilinearly up-sampled to this level (the
  source itself at the coarsest level), later iterations the sharp source; values are always the sharp
  source patches. ``iters`` iterations at every level (iyttor's schedule).
* Patches p x p with stride 1, folded back by the uniform average of all overlapping patches
  (``fold="uniform"``, the paper) or by GPNN-CAM's distance-weighted average (``fold="distance"``: weight
  exp(-D_q / sigma) per chosen patch, sigma the std of that image's NN distances, or their minimum if the
  std is 0, or 1 if that is 0 too); bilinear up-sampling (align_corners=False) between levels. The output
  is a convex combination of source pixels, so it lies in the source's range (clamped to [0,1] against
  rounding).
* ``generate(..., return_field=True)`` also returns the final NN field (the source patch of every output
  patch) and its distances (between the last iteration's query patches and their keys, the D the search
  minimised): GPNN-CAM's older variant maps CAMs back through it.
* Ours: no FAISS/PCA (exact NN only), the same number of iterations at every level. ``chunk_size``
  bounds the distance tiles; the n variations' patch tensors (n x L x d floats, ~28 MB per variation at
  224 px) are held at once.
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from saliency import triton_nn
from saliency.base import is_int, is_real
from saliency.shifted_nn import nearest_neighbours_shifted

#: Smallest and largest default tile sizes in distance entries (64 MiB and 1 GiB of float32).
MIN_DEFAULT_CHUNK = 2**24
MAX_DEFAULT_CHUNK_CPU = 2**28
#: Smallest ``scale_factor``: 1.05 already gives 57 pyramid levels for 224 px.
MIN_SCALE_FACTOR = 1.05


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


class GPNNOutput(NamedTuple):
    """``GPNN.generate(..., return_field=True)``: the variations and the final NN field.

    ``images`` (n,C,H,W) in [0,1]; ``field`` (n, L) long, for every output patch (row-major positions,
    L = (H-p+1)(W-p+1)) the index of the source patch pasted there; ``distances`` (n, L) float32, the
    score's D (mean squared difference) between that patch's key and the query patch it was matched to.
    """

    images: torch.Tensor
    field: torch.Tensor
    distances: torch.Tensor


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


def _resize(images: torch.Tensor, size: tuple[int, int], antialias: bool = False) -> torch.Tensor:
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=antialias)


class GPNN:
    """Generative Patch Nearest Neighbours: ``n`` variations of one image, generated as one batch.

    :param patch_size: p, square patches p x p, stride 1.
    :param scale_factor: r > 1, ratio between consecutive pyramid levels.
    :param coarsest: short side of the coarsest level in pixels (>= patch_size).
    :param noise_sigma: std of the coarsest-level noise in [0,1] units (shared over channels).
    :param alpha: completeness parameter (distances are per-element MSE); large alpha -> plain NN.
    :param iters: PNN iterations per level.
    :param init: ``"source"`` (coarsest source + noise, the paper) or ``"zeros"`` (noise only, GPNN-CAM).
    :param fold: ``"uniform"`` (plain average of overlapping patches, the paper) or ``"distance"``
        (GPNN-CAM's distance-weighted average, :func:`distance_weights`).
    :param search: exact NN algorithm: ``"shifts"`` (CPU only, :func:`nearest_neighbours_shifted`),
        ``"matmul"`` (:func:`nearest_neighbours`, CPU or CUDA), ``"triton"`` (CUDA only,
        :func:`~saliency.triton_nn.nearest_neighbours_triton`) or ``"auto"`` (shifts on CPU, matmul on CUDA).
    :param chunk_size: most distance entries per tile of the matmul search (None: :func:`default_chunk_size`).
    :param tf32: on CUDA, compute the matmul or Triton search with TF32 tensor cores (faster, but the NN is
        then approximate: near-ties can resolve differently). Off by default: exact float32.
    :param device: where to compute (None: the image's device).
    :param verbose: tqdm bar over pyramid levels.

    ``variations = GPNN().generate(image, n, seed=0)``: image (C,H,W) or (1,C,H,W) in [0,1], tensor or
    numpy -> (n,C,H,W) float32 tensor in [0,1] of the same size, on ``device``.
    """

    def __init__(
        self,
        patch_size: int = 7,
        scale_factor: float = 4 / 3,
        coarsest: int = 14,
        noise_sigma: float = 0.75,
        alpha: float = 0.005,
        iters: int = 10,
        init: str = "source",
        fold: str = "uniform",
        search: str = "auto",
        chunk_size: int | None = None,
        tf32: bool = False,
        device: str | torch.device | None = None,
        verbose: bool = False,
    ):
        if not is_int(patch_size) or patch_size < 1:
            raise ValueError(f"patch_size must be a positive int, got {patch_size!r}")
        if not is_real(scale_factor) or not MIN_SCALE_FACTOR <= scale_factor < math.inf:
            raise ValueError(
                f"scale_factor must be a finite number >= {MIN_SCALE_FACTOR}, got {scale_factor!r}"
            )
        if not is_int(coarsest) or coarsest < patch_size:
            raise ValueError(f"coarsest must be an int >= patch_size ({patch_size}), got {coarsest!r}")
        if not is_real(noise_sigma) or not 0 <= noise_sigma < math.inf:
            raise ValueError(f"noise_sigma must be a finite number >= 0, got {noise_sigma!r}")
        if not is_real(alpha) or not 0 < alpha < math.inf:
            raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
        if not is_int(iters) or iters < 1:
            raise ValueError(f"iters must be a positive int, got {iters!r}")
        if init not in ("source", "zeros"):
            raise ValueError(f"init must be 'source' or 'zeros', got {init!r}")
        if fold not in ("uniform", "distance"):
            raise ValueError(f"fold must be 'uniform' or 'distance', got {fold!r}")
        if search not in ("auto", "shifts", "matmul", "triton"):
            raise ValueError(f"search must be 'auto', 'shifts', 'matmul' or 'triton', got {search!r}")
        if chunk_size is not None and (not is_int(chunk_size) or chunk_size < 1):
            raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
        self.patch_size = int(patch_size)
        self.scale_factor = float(scale_factor)
        self.coarsest = int(coarsest)
        self.noise_sigma = float(noise_sigma)
        self.alpha = float(alpha)
        self.iters = int(iters)
        self.init = init
        self.fold = fold
        self.search = search
        self.chunk_size = None if chunk_size is None else int(chunk_size)
        self.tf32 = bool(tf32)
        self.device = None if device is None else torch.device(device)
        self.verbose = verbose

    def pyramid_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """Level sizes from finest (the input) to coarsest (short side == ``coarsest``): N levels."""
        short = min(height, width)
        n_levels = max(1, math.ceil(math.log(short / self.coarsest) / math.log(self.scale_factor) - 1e-9))
        if n_levels == 1:
            return [(height, width)]
        sizes = [
            (round(height / self.scale_factor**n), round(width / self.scale_factor**n))
            for n in range(n_levels - 1)
        ]
        scale = self.coarsest / short
        sizes.append((max(self.coarsest, round(height * scale)), max(self.coarsest, round(width * scale))))
        return sizes

    def _check_image(self, image: torch.Tensor | np.ndarray) -> torch.Tensor:
        if isinstance(image, np.ndarray):
            image = torch.from_numpy(np.ascontiguousarray(image))
        if not isinstance(image, torch.Tensor):
            raise TypeError(
                f"image must be a torch.Tensor or numpy array (C,H,W), got {type(image).__name__}"
            )
        if image.ndim == 4:
            if image.shape[0] != 1:
                raise ValueError(f"image: a 4-D image must have shape (1,C,H,W), got {tuple(image.shape)}")
            image = image[0]
        if image.ndim != 3:
            raise ValueError(f"image must have shape (C,H,W) or (1,C,H,W), got shape {tuple(image.shape)}")
        if image.shape[0] > 4 and image.shape[-1] in (1, 3, 4):
            raise ValueError(f"image must be channels-first (C,H,W), got shape {tuple(image.shape)} (H,W,C?)")
        if not image.is_floating_point():
            raise TypeError(f"image must have a floating dtype with values in [0,1], got {image.dtype}")
        if not torch.isfinite(image).all() or image.min() < 0 or image.max() > 1:
            raise ValueError("image values must be finite and lie in [0,1]")
        height, width = image.shape[-2:]
        if min(height, width) < self.coarsest:
            raise ValueError(
                f"image is {height}x{width}: its short side must be >= coarsest ({self.coarsest}) "
                f"and >= patch_size ({self.patch_size})"
            )
        return image.detach()

    def generate(
        self, image: torch.Tensor | np.ndarray, n: int, seed: int = 0, return_field: bool = False
    ) -> torch.Tensor | GPNNOutput:
        """``n`` variations of ``image`` (C,H,W) in [0,1] -> (n,C,H,W) float32 in [0,1].

        With ``return_field=True``: a :class:`GPNNOutput` with the variations, the final NN field and its
        distances.
        """
        if not is_int(n) or n < 1:
            raise ValueError(f"n must be a positive int (number of variations), got {n!r}")
        if not is_int(seed):
            raise ValueError(f"seed must be an int, got {seed!r}")
        image = self._check_image(image)
        device = self.device or image.device
        if self.search == "shifts" and device.type != "cpu":
            raise ValueError(f"search='shifts' runs on the CPU; use search='matmul' or 'auto' on {device}")
        if self.search == "triton":
            triton_nn.check_device(device)
        source = image.to(device=device, dtype=torch.float32)[None]
        sizes = self.pyramid_sizes(*source.shape[-2:])
        pyramid = [_resize(source, size, antialias=True) for size in sizes]

        generator = torch.Generator().manual_seed(int(seed))
        noise = torch.cat([torch.randn((1, 1, *sizes[-1]), generator=generator) for _ in range(int(n))])
        noise = noise.to(device) * self.noise_sigma  # drawn one variation at a time: independent of n
        start = pyramid[-1] if self.init == "source" else torch.zeros_like(pyramid[-1])
        current = start + noise  # (n,C,h,w), noise shared over channels

        precision = torch.get_float32_matmul_precision()
        if self.tf32 and device.type == "cuda":
            torch.set_float32_matmul_precision("high")
        try:
            out = self._synthesise(pyramid, current)
        finally:
            torch.set_float32_matmul_precision(precision)
        out.images.clamp_(0, 1)
        return out if return_field else out.images

    def _uses_shifts(self, device: torch.device) -> bool:
        return self.search == "shifts" or (self.search == "auto" and device.type == "cpu")

    def _nearest(
        self,
        current: torch.Tensor,
        queries: torch.Tensor | None,
        keys: torch.Tensor,
        key_patches: torch.Tensor,
    ) -> torch.Tensor:
        """NN field (n, L) of the patches of ``current`` (n,C,h,w), which are ``queries`` (n, L, d; may be
        None for the shift search), among those of ``keys`` (1,C,h,w), whose patches are ``key_patches``
        (L, d)."""
        if self._uses_shifts(current.device):
            return nearest_neighbours_shifted(current, keys[0], self.patch_size, self.alpha)
        if self.search == "triton":
            precision = "tf32" if self.tf32 else "ieee"
            return triton_nn.nearest_neighbours_triton(queries, key_patches, self.alpha, precision)
        chunk = self.chunk_size or default_chunk_size(current.device)
        return nearest_neighbours(queries, key_patches, self.alpha, chunk)

    def _synthesise(self, pyramid: list[torch.Tensor], current: torch.Tensor) -> GPNNOutput:
        """Coarse-to-fine PNN from the coarsest initialisation ``current`` (n,C,h,w)."""
        p = self.patch_size
        sizes = [tuple(level.shape[-2:]) for level in pyramid]
        levels = range(len(sizes) - 1, -1, -1)
        for level in tqdm(levels, desc="GPNN levels", disable=not self.verbose):
            size = sizes[level]
            current = _resize(current, size)
            sharp = pyramid[level]
            keys = sharp if level == len(sizes) - 1 else _resize(pyramid[level + 1], size)
            values = extract_patches(sharp, p)[0]  # (L,d)
            key_patches = values if keys is sharp else extract_patches(keys, p)[0]
            counts = patch_counts(size, p, current.device)
            for iteration in range(self.iters):
                if iteration == 1:
                    keys, key_patches = sharp, values
                need_distances = self.fold == "distance" or (level == 0 and iteration == self.iters - 1)
                queries = None
                if need_distances or not self._uses_shifts(current.device):
                    queries = extract_patches(current, p)
                field = self._nearest(current, queries, keys, key_patches)
                distances = None
                if need_distances:
                    distances = (queries - key_patches[field]).pow_(2).mean(-1)
                if self.fold == "distance":
                    current = fold_patches_weighted(values[field], distance_weights(distances), size, p)
                else:
                    current = fold_patches(values[field], size, p, counts)
        return GPNNOutput(current, field, distances)
