"""Approximate patch nearest neighbours with FAISS: a PCA projection and a flat or IVF index built once
per set of key patches, then searched by every query of every variation.

What each setting computes:

* ``index="flat"`` without PCA: the exact plain nearest neighbour argmin_j D(i,j) (FAISS's float32 L2;
  ties may resolve differently from the exact searches' first-index rule).
* ``pca_dims=k``: distances are measured between the projections of the patches on the k leading
  principal components of the keys (fitted exactly, in float64, on the key patches, mean-centred): the
  nearest neighbour in that k-dimensional space.
* ``index="ivf"``: an inverted file of ``nlist`` k-means cells (FAISS's k-means, fixed seed, on the
  projected keys; ``nlist=None``: :data:`CELLS_PER_SQRT_KEYS` * floor(sqrt(N_k)) cells, about sqrt(N_k) / 4
  keys per cell; a flat index instead below ``ivf_min_keys`` keys); a query is compared with the keys of
  its ``nprobe`` nearest cells only, as FAISS's ``IndexIVFFlat`` does. FAISS finds the cells (one matrix
  product with the cell centres); the cells are then scanned here, all the queries of a cell against its
  keys in one matrix product (consecutive cells with few keys together, the entries of other cells
  masked), which at 224 px is about twice as fast as FAISS's scan, one query at a time. The recall
  (the share of queries that find a nearest key in PCA-30 space) and cost of several cell counts and
  probes, measured where GPNN uses the search, are in benchmarks/README.md.
* ``candidates=k > 1`` (:func:`rerank`): the k nearest keys found that way are re-ranked by the
  completeness-normalised score D(i,j) / (alpha + m_j), with D estimated by the search's squared distance
  divided by the patch dimension (exact without PCA; without the discarded components with PCA) and m_j,
  the minimum of D(l,j) over the queries l of the same variation, taken over the queries that have key j
  among their candidates (an upper bound of the exact minimum: a query that did not list j may be
  closer). With ``candidates=1`` alpha is not used: plain (approximate) NN, as in the GPNN-CAM authors'
  pipeline.
* ``candidates="cells"`` (:meth:`PatchIndex.search_normalised`): every key of a query's probed cells is
  a candidate, and m_j is the minimum over the queries of the variation that probe key j's cell, both
  taken from the same block of distances (a block holds every query of a variation that meets its keys;
  where one variation's queries of a cell exceed a block, the cell is scanned twice: the minima, then
  the scores). On a flat index that is GPNN's exact score in the index's space (without PCA: the exact
  search, up to float32 rounding); on an IVF index m_j is again an upper bound, missing only the queries
  that are nearest to j but probe other cells.

Either way the D returned for the chosen key is the search's estimate, which GPNN's distance-weighted
fold uses, as the authors' does.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from saliency.patches import extract_patches

#: Index types of :class:`PatchIndex`.
INDEX_TYPES = ("flat", "ivf")
#: Seed of FAISS's k-means (IVF training): the index, hence the search, is reproducible.
KMEANS_SEED = 1234
#: Default IVF cells per floor(sqrt(number of keys)).
CELLS_PER_SQRT_KEYS = 4
#: Query rows per flat FAISS search call (bounds the temporary memory).
SEARCH_ROWS = 2**16
#: ``candidates`` of GPNN's FAISS search that makes every key of the probed cells a candidate
#: (:meth:`PatchIndex.search_normalised`).
CELLS = "cells"
#: Most distance entries per block of a cell scan (bounds the temporary memory).
BLOCK_ENTRIES = 2**22
#: Consecutive IVF cells are scanned together until they hold this many keys (one matrix product per
#: group, the entries of other cells masked): fewer, larger products where cells hold few keys.
GROUP_KEYS = 64


def _faiss():
    try:
        import faiss
    except ImportError as err:  # pragma: no cover - faiss-cpu is a dependency
        raise ImportError("search='faiss' needs the faiss-cpu package: pip install faiss-cpu") from err
    return faiss


class PatchIndex:
    """A FAISS index over key patches (N_k, d), with an optional PCA projection fitted on them.

    Args:
        keys: (N_k, d) float key patches.
        pca_dims: number of principal components to search in (None or >= d: the patches themselves).
        index: ``"flat"`` (exhaustive) or ``"ivf"`` (inverted file, :data:`KMEANS_SEED`).
        nlist: IVF cells (at most N_k are used; None: ``CELLS_PER_SQRT_KEYS * floor(sqrt(N_k))``).
        nprobe: IVF cells visited per query.
        ivf_min_keys: ``index="ivf"`` over fewer keys than this builds a flat index instead.

    Attributes:
        projected_keys: (N_k, k) float32, the keys in the index's space (k = ``pca_dims`` or d).

    Example:
        >>> index = PatchIndex(key_patches, pca_dims=30, index="ivf")
        >>> distances, candidates = index.search(query_patches, k=4)  # (N_q, 4) each
        >>> distances, candidates = index.search_images(images, patch_size=7, k=4)  # all their patches
    """

    def __init__(
        self,
        keys: torch.Tensor,
        pca_dims: int | None = None,
        index: str = "flat",
        nlist: int | None = 64,
        nprobe: int = 1,
        ivf_min_keys: int = 0,
    ):
        faiss = _faiss()
        n_keys, dims = keys.shape
        if n_keys < ivf_min_keys:
            index = "flat"
        self.mean: torch.Tensor | None = None
        self.components: torch.Tensor | None = None
        if pca_dims is not None and pca_dims < dims:
            keys64 = keys.double()
            mean = keys64.mean(0)
            centred = keys64 - mean
            _, vectors = torch.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
            self.mean = mean.float()
            self.components = vectors[:, -pca_dims:].flip(1).float().contiguous()  # (d, k), leading first
            dims = pca_dims
        projected = self.project(keys)
        self.index = faiss.IndexFlatL2(dims)  # the keys (flat) or the cell centres (ivf)
        self.nprobe = 1
        self.projected_keys = torch.from_numpy(projected)
        if index == "ivf":
            wanted = CELLS_PER_SQRT_KEYS * math.isqrt(n_keys) if nlist is None else int(nlist)
            cells = max(1, min(wanted, n_keys))
            ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(dims), dims, cells)
            ivf.cp.seed = KMEANS_SEED
            ivf.cp.min_points_per_centroid = 1  # few keys at coarse levels: no warning, no error
            ivf.train(projected)
            self.index.add(ivf.quantizer.reconstruct_n(0, cells))
            self.nprobe = max(1, min(int(nprobe), cells))
            home = torch.from_numpy(self.index.search(projected, 1)[1][:, 0])  # each key's cell
            self._cell_keys = torch.argsort(home, stable=True)  # key indices, cell after cell
            self._key_cells = home[self._cell_keys]
            counts = torch.bincount(home, minlength=cells)
            self._cell_starts = [0, *torch.cumsum(counts, 0).tolist()]
            self._sorted_keys = self.projected_keys[self._cell_keys]
            self._sorted_norms = self._sorted_keys.pow(2).sum(1)
        else:  # one cell holding every key, for the normalised scan
            self.index.add(projected)
            self._cell_keys = torch.arange(n_keys)
            self._key_cells = torch.zeros(n_keys, dtype=torch.long)
            self._cell_starts = [0, n_keys]
            self._sorted_keys = self.projected_keys
            self._sorted_norms = self.projected_keys.pow(2).sum(1)
        self.is_ivf = index == "ivf"

    def project(self, patches: torch.Tensor) -> np.ndarray:
        """(M, d) patches -> (M, k) contiguous float32 numpy array in the index's space."""
        x = patches.detach().float()
        if self.components is not None:
            x = (x - self.mean.to(x.device)) @ self.components.to(x.device)
        return np.ascontiguousarray(x.cpu().numpy(), dtype=np.float32)

    def project_images(self, images: torch.Tensor, patch_size: int) -> np.ndarray:
        """Every stride-1 patch of ``images`` (B,C,H,W), projected: (B*L, k) float32, rows as
        :func:`saliency.patches.extract_patches` orders them (with PCA, one convolution by the
        components, without extracting the patches)."""
        if self.components is None:
            patches = extract_patches(images, patch_size)
            return self.project(patches.reshape(-1, patches.shape[-1]))
        x = images.detach().float()
        kernels = self.components.T.reshape(-1, x.shape[1], patch_size, patch_size).to(x.device)
        bias = -(self.mean @ self.components).to(x.device)
        projected = F.conv2d(x, kernels, bias).permute(0, 2, 3, 1)
        return np.ascontiguousarray(projected.reshape(-1, kernels.shape[0]).cpu().numpy())

    def search(self, queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """The k nearest keys of every query: (M, d) -> (squared distances in the index's space (M, k)
        float32, key indices (M, k) long), both on ``queries``'s device.

        An IVF search that finds fewer than k keys in the probed cells repeats its nearest one; a query
        whose cells hold no key at all gets its exact nearest neighbour in the projected space.
        """
        distances, labels = self.search_projected(self.project(queries), k)
        return distances.to(queries.device), labels.to(queries.device)

    def search_images(
        self, images: torch.Tensor, patch_size: int, k: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`search` for every stride-1 patch of ``images`` (B,C,H,W): (B*L, k) each."""
        distances, labels = self.search_projected(self.project_images(images, patch_size), k)
        return distances.to(images.device), labels.to(images.device)

    def search_projected(self, projected: np.ndarray, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`search` for queries already projected, (M, k_dims) float32 -> CPU tensors."""
        if self.is_ivf:
            distances, labels = self._scan_cells(projected, int(k))
        else:  # at least one call: FAISS answers (0, k) arrays for no queries
            found = [
                self.index.search(projected[s : s + SEARCH_ROWS], int(k))
                for s in range(0, max(len(projected), 1), SEARCH_ROWS)
            ]
            distances = torch.from_numpy(np.concatenate([d for d, _ in found]))
            labels = torch.from_numpy(np.concatenate([i for _, i in found]))
        missing = labels < 0
        labels = torch.where(missing, labels[:, :1], labels)
        return torch.where(missing, distances[:, :1], distances), labels

    def _probed(self, projected: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """The (query, probe) pairs, cell after cell (a flat index: one cell) and in query order within a
        cell: (pair indices (M*P,), their query rows (M*P, k_dims), pairs per cell)."""
        queries = torch.from_numpy(projected)
        if self.is_ivf:
            cells = torch.from_numpy(self.index.search(projected, self.nprobe)[1]).reshape(-1)
        else:
            cells = torch.zeros(len(queries), dtype=torch.long)
        order = torch.argsort(cells, stable=True)
        counts = torch.bincount(cells, minlength=len(self._cell_starts) - 1).tolist()
        return order, queries[order // self.nprobe], counts

    def _groups(self, counts: list[int]) -> Iterator[tuple[slice, slice]]:
        """Consecutive cells, as (their rows, their keys in cell order), each group holding at least
        :data:`GROUP_KEYS` keys or ending at the last cell; groups without rows are skipped."""
        first_cell, start = 0, 0
        for cell in range(len(counts)):
            first, last = self._cell_starts[first_cell], self._cell_starts[cell + 1]
            if last - first < GROUP_KEYS and cell + 1 < len(counts):
                continue
            rows = sum(counts[first_cell : cell + 1])
            if rows:
                yield slice(start, start + rows), slice(first, last)
            first_cell, start = cell + 1, start + rows

    def _distances(
        self, rows: torch.Tensor, row_cells: torch.Tensor, where: slice, keys: slice
    ) -> torch.Tensor:
        """||k||^2 - 2 q.k of the rows ``rows[where]`` (their cells ``row_cells[where]``) against the keys
        at positions ``keys`` in cell order: (rows, keys), inf where row and key lie in different cells."""
        block = torch.addmm(self._sorted_norms[keys], rows[where], self._sorted_keys[keys].T, alpha=-2)
        key_cells = self._key_cells[keys]
        if key_cells[0] != key_cells[-1]:
            block.masked_fill_(row_cells[where, None] != key_cells, math.inf)
        return block

    def _blocks(
        self, rows: torch.Tensor, counts: list[int]
    ) -> Iterator[tuple[slice, slice, torch.Tensor | None]]:
        """Blocks of the rows of a group of cells against the group's keys: (rows, key positions in cell
        order, :meth:`_distances` or None for a group without keys), at most about
        :data:`BLOCK_ENTRIES` entries each."""
        row_cells = _row_cells(counts)
        for group_rows, keys in self._groups(counts):
            if keys.stop == keys.start:  # cells k-means left without keys
                yield group_rows, keys, None
                continue
            for where in _split(group_rows, BLOCK_ENTRIES // (keys.stop - keys.start) + 1):
                yield where, keys, self._distances(rows, row_cells, where, keys)

    def _scan_cells(self, projected: np.ndarray, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """IVF search: each query against the keys of its ``nprobe`` nearest cells, the queries of a cell
        together (one matrix product per block of them). -> (M, k) squared distances, key indices (-1
        where the probed cells hold fewer than k keys)."""
        n_queries, probes = len(projected), self.nprobe
        order, rows, counts = self._probed(projected)
        found_d, found_p = [torch.zeros((0, k))], [torch.zeros((0, k), dtype=torch.long)]
        for where, keys, block in self._blocks(rows, counts):
            if block is None:  # nothing found
                found_d.append(torch.full((where.stop - where.start, k), math.inf))
                found_p.append(torch.full((where.stop - where.start, k), -1, dtype=torch.long))
                continue
            if k == 1:
                value, index = block.min(1, keepdim=True)
            else:
                value, index = block.topk(min(k, block.shape[1]), dim=1, largest=False)
            if value.shape[1] < k:  # fewer keys in the group than k
                value = F.pad(value, (0, k - value.shape[1]), value=math.inf)
                index = F.pad(index, (0, k - index.shape[1]))
            found_d.append(value)
            found_p.append(index + keys.start)
        distances, positions = torch.cat(found_d), torch.cat(found_p)  # positions in the keys sorted by cell
        found = distances.isfinite()  # inf: fewer than k keys in the probed cell
        distances = (distances + rows.pow(2).sum(1, keepdim=True)).clamp_min(0)  # not found: stays inf
        labels = torch.where(found, self._cell_keys[positions.clamp_min(0)], -1)
        distances[order], labels[order] = distances.clone(), labels.clone()
        distances, labels = distances.view(n_queries, probes * k), labels.view(n_queries, probes * k)
        if probes > 1:
            distances, best = distances.topk(k, dim=1, largest=False)
            labels = labels.gather(1, best)
        empty = labels[:, 0] < 0  # probed cells without keys: the nearest key of all
        if empty.any():
            distances[empty, 0], labels[empty, 0] = self.exhaustive_search(projected[empty.numpy()])
        return distances, labels

    def search_normalised(
        self, images: torch.Tensor, patch_size: int, alpha: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The completeness-normalised nearest key of every stride-1 patch of ``images`` (B,C,H,W), among
        the keys of its probed cells (all keys for a flat index).

        Key j scores D(i,j) / (alpha + m_j), D the squared distance in the index's space over the patch
        dimension C*p*p and m_j the least D(l,j) over the patches l of the same image whose probed cells
        hold j (for a flat index: over all of them, GPNN's exact score in the index's space; for an IVF
        index an upper bound of that minimum). A patch whose probed cells hold no key gets its plain
        nearest key.

        Returns:
            (D (B, L) float32, key indices (B, L) long) of the chosen keys, on ``images``'s device.
        """
        batch, dims = images.shape[0], images.shape[1] * patch_size**2
        projected = self.project_images(images, patch_size)
        n_queries, probes = len(projected), self.nprobe
        order, rows, counts = self._probed(projected)
        image = order // probes // (n_queries // batch)
        row_cells = _row_cells(counts)
        starts = _segment_starts(image, row_cells)
        norms = rows.pow(2).sum(1, keepdim=True)
        score = torch.full((len(rows),), math.inf)
        distances, positions = torch.full((len(rows),), math.inf), torch.full((len(rows),), -1)
        for group_rows, keys in self._groups(counts):
            if keys.stop == keys.start:  # cells k-means left without keys: the exhaustive search below
                continue
            step = BLOCK_ENTRIES // (keys.stop - keys.start) + 1
            blocks, column_min = _split(group_rows, step, starts), None
            if blocks is None:  # an image's rows in one cell exceed a block: the column minima first
                blocks = _split(group_rows, step)
                column_min = torch.full((batch, keys.stop - keys.start), math.inf)
                for where in blocks:
                    block = self._distances(rows, row_cells, where, keys).add_(norms[where])
                    minima = _column_min(block, image[where], batch, _single_image(image[where]))
                    torch.minimum(column_min, minima, out=column_min)
            for where in blocks:
                block = self._distances(rows, row_cells, where, keys).add_(norms[where])
                images = image[where]
                single = _single_image(images)
                minima = _column_min(block, images, batch, single) if column_min is None else column_min
                score[where], best = _scores(block, images, minima, alpha * dims, single).min(1)
                distances[where] = block.gather(1, best[:, None])[:, 0]
                positions[where] = torch.where(score[where].isinf(), -1, best + keys.start)
        for values in (score, distances, positions):
            values[order] = values.clone()  # back to (query, probe) order
        best = score.view(n_queries, probes).argmin(1, keepdim=True)
        distances = distances.view(n_queries, probes).gather(1, best)[:, 0].clamp_min(0)
        positions = positions.view(n_queries, probes).gather(1, best)[:, 0]
        labels = torch.where(positions >= 0, self._cell_keys[positions.clamp_min(0)], -1)
        empty = labels < 0
        if empty.any():
            distances[empty], labels[empty] = self.exhaustive_search(projected[empty.numpy()])
        shape = (batch, n_queries // batch)
        return (distances / dims).view(shape).to(images.device), labels.view(shape).to(images.device)

    def exhaustive_search(self, projected: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The nearest of all keys for queries already projected, (M, k_dims) float32, as a flat index
        finds it (what the IVF search approximates) -> (squared distances (M,), key indices (M,) long)."""
        nearest = torch.cdist(torch.from_numpy(projected), self.projected_keys).min(1)
        return nearest.values.pow(2), nearest.indices


def _row_cells(counts: list[int]) -> torch.Tensor:
    """The cell of each row of a scan, from the rows per cell."""
    return torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))


def _segment_starts(image: torch.Tensor, row_cells: torch.Tensor) -> list[int]:
    """The rows where a run of rows of one image in one cell begins (the first row included)."""
    new = torch.ones(len(image), dtype=torch.bool)
    new[1:] = (image[1:] != image[:-1]) | (row_cells[1:] != row_cells[:-1])
    return new.nonzero()[:, 0].tolist()


def _split(rows: slice, step: int, starts: list[int] | None = None) -> list[slice] | None:
    """``rows`` in consecutive ranges of at most ``step`` rows; with ``starts`` (sorted rows where a
    segment begins, ``rows.start`` among them) ranges that begin only where a segment does, or None where
    one segment is longer than ``step``."""
    cuts = [rows.start]
    while cuts[-1] + step < rows.stop:
        end = cuts[-1] + step
        if starts is not None:
            end = starts[bisect.bisect_right(starts, end) - 1]
            if end <= cuts[-1]:
                return None
        cuts.append(end)
    return [slice(a, b) for a, b in zip(cuts, [*cuts[1:], rows.stop])]


def _single_image(images: torch.Tensor) -> int | None:
    """The image of a block's rows, ``images`` (rows,), where they all belong to one; else None."""
    return int(images[0]) if bool((images == images[0]).all()) else None


def _column_min(block: torch.Tensor, images: torch.Tensor, batch: int, single: int | None) -> torch.Tensor:
    """Each column's least entry over the rows of each image: (batch, keys) from a block (rows, keys)
    whose rows belong to the images ``images`` (rows,), all of them to ``single`` where not None."""
    minima = torch.full((batch, block.shape[1]), math.inf)
    if single is not None:
        minima[single] = block.amin(0)
        return minima
    return minima.scatter_reduce_(0, images[:, None].expand_as(block), block, "amin")


def _scores(
    block: torch.Tensor,
    images: torch.Tensor,
    column_min: torch.Tensor,
    offset: float,
    single: int | None,
) -> torch.Tensor:
    """GPNN's normalised scores D / (offset + m) of a block of D (rows, keys) whose rows belong to the
    images ``images`` (all to ``single`` where not None), m the least D of the key over the rows of the
    same image, from ``column_min`` (batch, keys); a key no row of the image meets (its column all inf)
    gets m = 0, so that only inf entries meet a finite scale."""
    if single is not None:
        column_min = column_min[single]
    minima = torch.where(column_min.isinf(), 0, column_min).clamp_min_(0)
    scale = 1 / (minima + offset)
    return block * (scale if single is not None else scale.index_select(0, images))


def rerank(
    candidates: torch.Tensor, estimates: torch.Tensor, n_keys: int, alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick among candidate keys by the completeness-normalised score, per variation.

    Args:
        candidates: (B, L, k) long candidate key indices of the L queries of B variations.
        estimates: (B, L, k) their estimated D (the search's squared distances over the patch dimension).
        n_keys: number of keys.
        alpha: completeness parameter, in the units of D.

    Returns:
        (field (B, L) long, D (B, L) float32): the chosen key per query and its estimated D; with k = 1
        the candidates themselves (alpha unused).
    """
    batch, _, k = candidates.shape
    if k == 1:
        return candidates[..., 0], estimates[..., 0]
    col_min = torch.full((batch, n_keys), math.inf, device=candidates.device)
    col_min.scatter_reduce_(1, candidates.reshape(batch, -1), estimates.reshape(batch, -1), "amin")
    score = estimates / (alpha + torch.gather(col_min, 1, candidates.reshape(batch, -1)).view_as(estimates))
    best = score.argmin(dim=2, keepdim=True)
    return candidates.gather(2, best)[..., 0], estimates.gather(2, best)[..., 0]
