"""GPNN (Granot et al., "Drop the GAN", CVPR 2022): image variations by coarse-to-fine patch nearest
neighbours, with the exact completeness-normalised search or a FAISS one (docs/gpnn.md).

* Pyramid (:mod:`saliency.gpnn_pyramid`): ``pyramid="bilinear"`` (antialiased bilinear levels, the paper)
  or ``"pyrdown"`` (the GPNN-CAM authors' Gaussian pyramid and square coarsest level); queries and keys
  are up-sampled between levels bilinearly (``upsample="bilinear"``) or by nearest neighbour (the
  authors).
* Initialisation: the coarsest source (``init="source"``, the paper) or zeros (``init="zeros"``, the
  GPNN-CAM preset) plus Gaussian noise of std ``noise_sigma`` in [0,1] units, one value per pixel shared
  over the channels, drawn from a CPU ``torch.Generator`` seeded with ``seed`` one variation after the
  other: variation i depends on (seed, i) only, not on ``n`` nor on the device's random stream.
* Distance: D(i,j) = mean squared difference per element between query patch i and key patch j, on
  [0,1] images. Score S(i,j) = D(i,j) / (alpha + min_l D(l,j)), the minimum over the queries of the
  *same* variation; NN(i) = argmin_j S(i,j). alpha is in these units (Efficient-GPNN's 0.005 on [-1,1]
  images is our 0.00125).
* Exact searches, two passes (column minima per variation, then the argmin of the normalised score):
  ``search="shifts"`` (the CPU default; per-pixel differences shared by all patch pairs containing them,
  :mod:`saliency.shifted_nn`), ``"matmul"`` (the CUDA default; tiles of at most ``chunk_size`` distances,
  :mod:`saliency.matmul_nn`; ``tf32=True`` trades exactness for speed), ``"triton"`` (CUDA; fused
  kernels, :mod:`saliency.triton_nn`).
* ``search="faiss"`` (:mod:`saliency.faiss_nn`): a FAISS index over the key patches (optionally their
  ``pca_dims`` leading principal components; ``index="flat"`` or ``"ivf"`` with ``nlist`` cells and
  ``nprobe`` probes), built once per level and key set and reused by every iteration and every variation
  (and by later calls on the same image). With ``candidates=1`` it is a plain (approximate) NN and alpha
  is not used; with ``candidates=k`` the normalised score, with D estimated from the search's distances,
  picks among the k keys found; with ``candidates="cells"`` among every key of the probed cells (GPNN's
  score in the index's space for a flat index; ``ivf_min_keys`` makes the coarse levels flat). It runs
  on the CPU (faiss-cpu) whatever the device.
* Keys: at every level, iteration 0 uses the coarser source up-sampled to this level (the source itself
  at the coarsest level), later iterations the sharp source; values are always the sharp source patches.
* ``iters`` iterations at every level; with ``early_stop=f`` a variation leaves a level's iterations once
  at most a fraction f of its NN field changed in an iteration (from the second iteration on).
* Patches p x p with stride 1 (:mod:`saliency.patches`), folded back by the uniform average of all
  overlapping patches (``fold="uniform"``, the paper) or by GPNN-CAM's distance-weighted average
  (``fold="distance"``: weight exp(-D_q / sigma), sigma the std of that image's NN distances D_q: exact
  for the exact searches, the search's estimate for ``"faiss"``, as in the authors' pipeline), one offset
  within the patch at a time (:func:`saliency.patches.fold_field`). The output is a convex combination of
  source pixels, clamped to [0,1] against rounding.
* ``generate(..., return_field=True)`` also returns the final NN field, its exact distances (on the full
  patches, whatever the search) and how many iterations each variation ran at each level.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from saliency import triton_nn
from saliency.base import is_int, is_real
from saliency.faiss_nn import CELLS, INDEX_TYPES, PatchIndex, rerank
from saliency.gpnn_pyramid import PYRAMIDS, UPSAMPLING, build_pyramid, pyramid_sizes, resize
from saliency.matmul_nn import default_chunk_size, nearest_neighbours
from saliency.patches import distance_weights, extract_patches, fold_field, matched_distances
from saliency.shifted_nn import nearest_neighbours_shifted

#: Smallest ``scale_factor``: 1.05 already gives 57 pyramid levels for 224 px.
MIN_SCALE_FACTOR = 1.05
#: Nearest-neighbour searches of :class:`GPNN`.
SEARCHES = ("auto", "shifts", "matmul", "triton", "faiss")
#: The GPNN-CAM authors' pipeline (:meth:`GPNN.authors`): their GPNN-CAM settings (noise 3.0 on zeros,
#: distance-weighted fold) and their search (PCA-30, IVF with 64 cells and 1 probe, alpha unused),
#: pyramid and nearest up-sampling.
AUTHORS_SETTINGS = {
    "noise_sigma": 3.0,
    "init": "zeros",
    "fold": "distance",
    "search": "faiss",
    "pca_dims": 30,
    "index": "ivf",
    "nlist": 64,
    "nprobe": 1,
    "candidates": 1,
    "pyramid": "pyrdown",
    "upsample": "nearest",
}


class GPNNOutput(NamedTuple):
    """``GPNN.generate(..., return_field=True)``: the variations and the final NN field.

    ``images`` (n,C,H,W) in [0,1]; ``field`` (n, L) long, for every output patch (row-major positions,
    L = (H-p+1)(W-p+1)) the index of the source patch pasted there; ``distances`` (n, L) float32, the
    exact D (mean squared difference) between that source patch and the query patch it was matched to;
    ``iterations`` (n, levels) long, the iterations each variation ran at each level, finest level first.
    """

    images: torch.Tensor
    field: torch.Tensor
    distances: torch.Tensor
    iterations: torch.Tensor


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def _check_positive_int(name: str, value: object, minimum: int = 1) -> None:
    if not is_int(value) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _check_search_settings(
    search: str,
    pca_dims: object,
    index: object,
    nlist: object,
    nprobe: object,
    ivf_min_keys: object,
    candidates: object,
    early_stop: object,
) -> None:
    """The FAISS search's settings and ``early_stop`` (errors name the argument)."""
    if early_stop is not None and (not is_real(early_stop) or not 0 <= early_stop < 1):
        raise ValueError(f"early_stop must be None or a fraction in [0, 1), got {early_stop!r}")
    if pca_dims is not None:
        _check_positive_int("pca_dims", pca_dims)
        if search != "faiss":
            raise ValueError(f"pca_dims applies to search='faiss' only, got search={search!r}")
    _check_choice("index", index, INDEX_TYPES)
    if nlist is not None:
        _check_positive_int("nlist", nlist)
    _check_positive_int("nprobe", nprobe)
    _check_positive_int("ivf_min_keys", ivf_min_keys, minimum=0)
    if candidates != CELLS and (not is_int(candidates) or candidates < 1):
        raise ValueError(f"candidates must be an int >= 1 or {CELLS!r}, got {candidates!r}")


class GPNN:
    """Generative Patch Nearest Neighbours: ``n`` variations of one image, generated as one batch.

    Args:
        patch_size: p, square patches p x p, stride 1.
        scale_factor: r > 1, ratio between consecutive pyramid levels.
        coarsest: short side of the coarsest level in pixels (>= patch_size).
        noise_sigma: std of the coarsest-level noise in [0,1] units (shared over channels).
        alpha: completeness parameter (distances are per-element MSE); large alpha -> plain NN.
        iters: PNN iterations per level (at most, with ``early_stop``).
        init: ``"source"`` (coarsest source + noise, the paper) or ``"zeros"`` (noise only, GPNN-CAM).
        fold: ``"uniform"`` (plain average of overlapping patches, the paper) or ``"distance"``
            (GPNN-CAM's distance-weighted average, :func:`saliency.patches.distance_weights`).
        search: ``"shifts"`` (exact, CPU), ``"matmul"`` (exact, CPU or CUDA), ``"triton"`` (exact, CUDA),
            ``"faiss"`` (approximate unless flat without PCA, :mod:`saliency.faiss_nn`) or ``"auto"``
            (shifts on CPU, matmul on CUDA).
        chunk_size: most distance entries per tile of the matmul search (None: ``default_chunk_size``).
        tf32: on CUDA, compute the matmul or Triton search with TF32 tensor cores (faster, approximate).
        pca_dims: faiss search: principal components the patches are projected on (None: no PCA).
        index: faiss search: ``"flat"`` (exhaustive) or ``"ivf"`` (inverted file).
        nlist: faiss IVF cells (at most the number of keys; None: 4 x the square root of that number).
        nprobe: faiss IVF cells visited per query.
        ivf_min_keys: faiss IVF: key sets of fewer keys (coarse levels) get a flat index instead, the
            exhaustive search (0: IVF at every level).
        candidates: faiss search: keys found per query; above 1 the completeness-normalised score
            picks among them, at 1 alpha is unused; ``"cells"``: among every key of the probed cells,
            with the column minima taken over the queries that probe them
            (:meth:`saliency.faiss_nn.PatchIndex.search_normalised`).
        pyramid: ``"bilinear"`` (the paper) or ``"pyrdown"`` (the authors', :mod:`saliency.gpnn_pyramid`).
        upsample: ``"bilinear"`` or ``"nearest"`` (the authors') between pyramid levels.
        early_stop: None (every level runs ``iters`` iterations) or a fraction f in [0,1): a variation
            stops a level after an iteration that changed at most f of its NN field.
        device: where to compute (None: the image's device).
        verbose: tqdm bar over pyramid levels.

    Example:
        >>> variations = GPNN().generate(image, 8, seed=0)  # image (C,H,W) in [0,1] -> (8,C,H,W)
        >>> variations = GPNN.authors().generate(image, 8)  # the GPNN-CAM authors' pipeline
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
        pca_dims: int | None = None,
        index: str = "flat",
        nlist: int | None = None,
        nprobe: int = 1,
        ivf_min_keys: int = 0,
        candidates: int | str = 1,
        pyramid: str = "bilinear",
        upsample: str = "bilinear",
        early_stop: float | None = None,
        device: str | torch.device | None = None,
        verbose: bool = False,
    ):
        _check_positive_int("patch_size", patch_size)
        if not is_real(scale_factor) or not MIN_SCALE_FACTOR <= scale_factor < math.inf:
            raise ValueError(
                f"scale_factor must be a finite number >= {MIN_SCALE_FACTOR}, got {scale_factor!r}"
            )
        _check_positive_int("coarsest", coarsest, patch_size)
        if not is_real(noise_sigma) or not 0 <= noise_sigma < math.inf:
            raise ValueError(f"noise_sigma must be a finite number >= 0, got {noise_sigma!r}")
        if not is_real(alpha) or not 0 < alpha < math.inf:
            raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
        _check_positive_int("iters", iters)
        _check_choice("init", init, ("source", "zeros"))
        _check_choice("fold", fold, ("uniform", "distance"))
        _check_choice("search", search, SEARCHES)
        if chunk_size is not None:
            _check_positive_int("chunk_size", chunk_size)
        _check_search_settings(search, pca_dims, index, nlist, nprobe, ivf_min_keys, candidates, early_stop)
        _check_choice("pyramid", pyramid, PYRAMIDS)
        _check_choice("upsample", upsample, UPSAMPLING)
        self.patch_size, self.scale_factor, self.coarsest = (
            int(patch_size),
            float(scale_factor),
            int(coarsest),
        )
        self.noise_sigma, self.alpha, self.iters = float(noise_sigma), float(alpha), int(iters)
        self.init, self.fold, self.search, self.pyramid, self.upsample = init, fold, search, pyramid, upsample
        self.chunk_size = None if chunk_size is None else int(chunk_size)
        self.pca_dims = None if pca_dims is None else int(pca_dims)
        self.index, self.nprobe, self.ivf_min_keys = index, int(nprobe), int(ivf_min_keys)
        self.candidates = candidates if candidates == CELLS else int(candidates)
        self.nlist = None if nlist is None else int(nlist)
        self.early_stop = None if early_stop is None else float(early_stop)
        self.device = None if device is None else torch.device(device)
        self.tf32, self.verbose = bool(tf32), verbose
        self._index_cache: tuple[torch.Tensor, tuple, dict] | None = None

    @classmethod
    def authors(cls, **overrides: object) -> GPNN:
        """GPNN as the GPNN-CAM authors run it (:data:`AUTHORS_SETTINGS`; other settings default), with
        ``overrides`` applied, e.g. ``GPNN.authors(early_stop=0.01)``."""
        return cls(**{**AUTHORS_SETTINGS, **overrides})

    def pyramid_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """Level sizes from finest (the input) to coarsest: N levels (:mod:`saliency.gpnn_pyramid`)."""
        return pyramid_sizes(height, width, self.coarsest, self.scale_factor, self.pyramid)

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

        With ``return_field=True``: a :class:`GPNNOutput` with the variations, the final NN field, its
        distances and the iterations run.
        """
        out = self._generate(image, [n], [seed])
        return out if return_field else out.images

    def generate_batches(
        self, image: torch.Tensor | np.ndarray, sizes: Sequence[int], seeds: Sequence[int]
    ) -> list[torch.Tensor]:
        """Several batches of variations of one image, generated in one pass over the pyramid (the
        per-iteration costs are shared): batch b is ``generate(image, sizes[b], seed=seeds[b])``, up to
        float rounding (every variation is synthesised on its own).

        Example:
            >>> first, second = GPNN().generate_batches(image, [10, 10], seeds=[3, 4])
        """
        if len(sizes) != len(seeds) or not sizes:
            raise ValueError(f"sizes and seeds must be non-empty and of one length, got {sizes!r}, {seeds!r}")
        return list(self._generate(image, sizes, seeds).images.split([int(size) for size in sizes]))

    def _generate(
        self, image: torch.Tensor | np.ndarray, sizes: Sequence[int], seeds: Sequence[int]
    ) -> GPNNOutput:
        """Batches of ``sizes[b]`` variations with noise from ``seeds[b]``, synthesised together."""
        for n, seed in zip(sizes, seeds):
            _check_positive_int("n", n)
            if not is_int(seed):
                raise ValueError(f"seed must be an int, got {seed!r}")
        image = self._check_image(image)
        device = self.device or image.device
        if self.search == "shifts" and device.type != "cpu":
            raise ValueError(f"search='shifts' runs on the CPU; use search='matmul' or 'auto' on {device}")
        if self.search == "triton":
            triton_nn.check_device(device)
        source = image.to(device=device, dtype=torch.float32)[None]
        levels = self.pyramid_sizes(*source.shape[-2:])
        pyramid = build_pyramid(source, levels, self.pyramid)

        noise = []  # drawn one variation at a time: variation i of a batch depends on (seed, i) only
        for n, seed in zip(sizes, seeds):
            generator = torch.Generator().manual_seed(int(seed))
            noise += [torch.randn((1, 1, *levels[-1]), generator=generator) for _ in range(int(n))]
        start = pyramid[-1] if self.init == "source" else torch.zeros_like(pyramid[-1])
        current = start + torch.cat(noise).to(device) * self.noise_sigma  # (n,C,h,w), shared over channels

        precision = torch.get_float32_matmul_precision()
        if self.tf32 and device.type == "cuda":
            torch.set_float32_matmul_precision("high")
        try:
            out = self._synthesise(pyramid, current, self._indexes(source))
        finally:
            torch.set_float32_matmul_precision(precision)
        out.images.clamp_(0, 1)
        return out

    def _indexes(self, source: torch.Tensor) -> dict:
        """The FAISS indexes built so far for ``source`` with the current settings (a new, empty dict when
        the image or a setting the indexes depend on changed)."""
        settings = (self.patch_size, self.scale_factor, self.coarsest, self.pyramid, self.upsample)
        settings += (self.pca_dims, self.index, self.nlist, self.nprobe, self.ivf_min_keys)
        cache = self._index_cache
        if (
            cache is None
            or cache[1] != settings
            or cache[0].shape != source.shape
            or cache[0].device != source.device
            or not torch.equal(cache[0], source)
        ):
            self._index_cache = cache = (source.clone(), settings, {})
        return cache[2]

    def _uses_shifts(self, device: torch.device) -> bool:
        return self.search == "shifts" or (self.search == "auto" and device.type == "cpu")

    def _nearest(
        self,
        current: torch.Tensor,
        keys: torch.Tensor,
        key_patches: torch.Tensor,
        index: PatchIndex | None,
        need_distances: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(field (B, L) long, distances (B, L)): the key patch (among ``key_patches`` (L, d), the patches
        of ``keys`` (1,C,h,w)) chosen for each patch of ``current`` (B,C,h,w), and its D: the FAISS
        search's estimate, or for the exact searches the exact D when ``need_distances`` (else None)."""
        batch, dims = current.shape[0], key_patches.shape[1]
        if index is not None and self.candidates == CELLS:
            distances, field = index.search_normalised(current, self.patch_size, self.alpha)
            return field, distances
        if index is not None:
            distances, found = index.search_images(current, self.patch_size, self.candidates)
            shape = (batch, -1, self.candidates)
            return rerank(found.view(shape), distances.view(shape) / dims, key_patches.shape[0], self.alpha)
        if self._uses_shifts(current.device):
            field = nearest_neighbours_shifted(current, keys[0], self.patch_size, self.alpha)
            if not need_distances:
                return field, None
            return field, matched_distances(extract_patches(current, self.patch_size), key_patches, field)
        queries = extract_patches(current, self.patch_size)
        if self.search == "triton":
            precision = "tf32" if self.tf32 else "ieee"
            field = triton_nn.nearest_neighbours_triton(queries, key_patches, self.alpha, precision)
        else:
            chunk = self.chunk_size or default_chunk_size(current.device)
            field = nearest_neighbours(queries, key_patches, self.alpha, chunk)
        return field, matched_distances(queries, key_patches, field) if need_distances else None

    def _key_index(
        self, indexes: dict, key: tuple[int, bool], key_patches: torch.Tensor
    ) -> PatchIndex | None:
        """The FAISS index of one level's key set, built on first use (None for the exact searches)."""
        if self.search != "faiss":
            return None
        if key not in indexes:
            settings = (self.pca_dims, self.index, self.nlist, self.nprobe, self.ivf_min_keys)
            indexes[key] = PatchIndex(key_patches, *settings)
        return indexes[key]

    def _synthesise(self, pyramid: list[torch.Tensor], current: torch.Tensor, indexes: dict) -> GPNNOutput:
        """Coarse-to-fine PNN from the coarsest initialisation ``current`` (n,C,h,w)."""
        p, n = self.patch_size, current.shape[0]
        sizes = [tuple(level.shape[-2:]) for level in pyramid]
        iterations = torch.zeros((n, len(sizes)), dtype=torch.long)
        weighted = self.fold == "distance"
        for level in tqdm(range(len(sizes) - 1, -1, -1), desc="GPNN levels", disable=not self.verbose):
            size = sizes[level]
            current = resize(current, size, self.upsample)
            sharp = pyramid[level]
            blurred = sharp if level == len(sizes) - 1 else resize(pyramid[level + 1], size, self.upsample)
            values = extract_patches(sharp, p)[0]  # (L,d)
            key_sets = [
                (blurred, values if blurred is sharp else extract_patches(blurred, p)[0]),
                (sharp, values),
            ]
            active = torch.arange(n, device=current.device)
            field = torch.zeros((n, values.shape[0]), dtype=torch.long, device=current.device)
            queried = current.clone()  # each variation's queries at its last iteration
            for iteration in range(self.iters):
                keys, key_patches = key_sets[min(iteration, 1)]
                index = self._key_index(
                    indexes, (level, iteration == 0 and blurred is not sharp), key_patches
                )
                new_field, distances = self._nearest(current[active], keys, key_patches, index, weighted)
                folded = fold_field(sharp, new_field, p, distance_weights(distances) if weighted else None)
                changed = (new_field != field[active]).float().mean(1)
                field[active], queried[active], current[active] = new_field, current[active], folded
                iterations[active.cpu(), level] += 1
                if self.early_stop is not None and iteration >= 1:
                    active = active[changed > self.early_stop]
                    if len(active) == 0:
                        break
        distances = matched_distances(extract_patches(queried, p), values, field)
        return GPNNOutput(current, field, distances, iterations)
