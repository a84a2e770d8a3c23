"""GPNN's FAISS search: the flat index finds the true nearest neighbours, IVF's recall, PCA, completeness
re-ranking and the normalised scan of the probed cells, index reuse, determinism, early stopping and the
authors' preset."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import skimage.transform
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from saliency import GPNN, faiss_nn
from saliency.faiss_nn import PatchIndex, rerank
from saliency.gpnn import AUTHORS_SETTINGS
from saliency.gpnn_pyramid import build_pyramid, pyramid_sizes, pyrdown
from saliency.matmul_nn import nearest_neighbours_naive
from saliency.patches import extract_patches

FAST = dict(patch_size=5, coarsest=14, iters=2)
#: Share of queries whose IVF (64 cells, 1 probe) neighbour is the exact one, on photo patches: the floor
#: the tests hold it to (measured 0.91 on the 48 px cat below; 0.99 with 4 probes).
IVF_RECALL_FLOOR = 0.8


@pytest.fixture(scope="module")
def cat() -> torch.Tensor:
    """skimage's chelsea resized to (3,48,64) float32 in [0,1]."""
    image = skimage.transform.resize(skimage.data.chelsea(), (48, 64), anti_aliasing=True)
    return torch.from_numpy(image).permute(2, 0, 1).float().clamp(0, 1)


def _photo_patches(cat: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys: the cat's 7x7 patches; queries: those of a noisy, shifted copy."""
    noisy = cat.roll(3, dims=2) + 0.05 * torch.randn(cat.shape, generator=torch.Generator().manual_seed(seed))
    return extract_patches(noisy.clamp(0, 1)[None], 7)[0], extract_patches(cat[None], 7)[0]


@settings(max_examples=25, deadline=None)
@given(n_q=st.integers(1, 200), n_k=st.integers(1, 300), dim=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_flat_index_finds_the_true_nearest_neighbour(n_q: int, n_k: int, dim: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    queries, keys = torch.rand(n_q, dim, generator=g), torch.rand(n_k, dim, generator=g)
    found = PatchIndex(keys, index="flat").search(queries, 1)[1][:, 0]
    dist = torch.cdist(queries.double(), keys.double())
    chosen, best = dist.gather(1, found[:, None])[:, 0], dist.amin(1)
    torch.testing.assert_close(chosen, best, rtol=1e-5, atol=1e-6)  # a different index only on a tie


def test_flat_search_without_alpha_equals_plain_exact_nn_on_photo_patches(cat: torch.Tensor) -> None:
    queries, keys = _photo_patches(cat)
    found = PatchIndex(keys, index="flat").search(queries, 1)[1][:, 0]
    exact = nearest_neighbours_naive(queries[None].double(), keys.double(), alpha=1e9)[0]
    assert (found == exact).double().mean() > 0.999


def test_ivf_recall_floor_and_pca_space(cat: torch.Tensor) -> None:
    queries, keys = _photo_patches(cat)
    exact = torch.cdist(queries, keys).argmin(1)
    ivf = PatchIndex(keys, index="ivf", nlist=64, nprobe=1).search(queries, 1)[1][:, 0]
    assert (ivf == exact).double().mean() >= IVF_RECALL_FLOOR
    # probing every cell is the flat search
    every = PatchIndex(keys, index="ivf", nlist=16, nprobe=16).search(queries, 1)[1][:, 0]
    assert (every == exact).double().mean() > 0.999
    # PCA with all components keeps the distances: the same neighbours
    pca = PatchIndex(keys, pca_dims=keys.shape[1] - 1, index="flat")
    assert pca.components.shape == (keys.shape[1], keys.shape[1] - 1)
    assert (pca.search(queries, 1)[1][:, 0] == exact).double().mean() > 0.99
    # the leading component carries the most variance
    projected = torch.from_numpy(PatchIndex(keys, pca_dims=3).project(keys))  # (N_k, 3)
    variances = projected.var(0)
    assert variances[0] >= variances[1] >= variances[2]


def test_exhaustive_search_is_the_flat_search_in_the_projected_space(cat: torch.Tensor) -> None:
    queries, keys = _photo_patches(cat)
    index = PatchIndex(keys, pca_dims=12, index="ivf", nlist=16)
    projected = index.project(queries)
    distances, labels = index.exhaustive_search(projected)
    flat = PatchIndex(keys, pca_dims=12, index="flat")
    expected_d, expected_i = flat.search(queries, 1)
    assert (labels == expected_i[:, 0]).double().mean() > 0.999  # float32 near-ties aside
    torch.testing.assert_close(distances, expected_d[:, 0], rtol=1e-4, atol=1e-5)
    assert index.projected_keys.shape == (keys.shape[0], 12)


def test_ivf_with_fewer_keys_than_cells_and_k_above_a_cell() -> None:
    keys, queries = torch.rand(10, 6), torch.rand(30, 6)
    distances, found = PatchIndex(keys, index="ivf", nlist=64, nprobe=1).search(queries, 8)
    assert found.shape == distances.shape == (30, 8) and found.min() >= 0 and found.max() < 10
    torch.testing.assert_close(
        distances, (queries[:, None] - keys[found]).pow(2).sum(-1), rtol=1e-4, atol=1e-5
    )


def test_rerank_is_the_exact_normalised_argmin_when_every_key_is_a_candidate() -> None:
    g = torch.Generator().manual_seed(0)
    queries, keys = torch.rand(2, 40, 12, generator=g), torch.rand(25, 12, generator=g)
    every = torch.arange(25).expand(2, 40, 25)
    estimates = (queries[:, :, None] - keys[every]).pow(2).mean(-1)  # a flat index's distances / d
    field, dist = rerank(every, estimates, 25, alpha=0.005)
    assert torch.equal(field, nearest_neighbours_naive(queries.double(), keys.double(), 0.005))
    torch.testing.assert_close(dist, (queries - keys[field]).pow(2).mean(-1))
    # one candidate: that candidate and its estimate, alpha unused
    first, first_dist = rerank(every[..., :1], estimates[..., :1] * 0, 25, alpha=0.005)
    assert torch.equal(first, torch.zeros_like(first)) and torch.equal(
        first_dist, torch.zeros_like(first_dist)
    )


@pytest.mark.parametrize("nprobe, k", [(1, 1), (1, 4), (3, 4), (1, 64)])
def test_cell_scan_is_faiss_ivf_search(cat: torch.Tensor, nprobe: int, k: int) -> None:
    """The IVF search scans the probed cells of the trained centres as FAISS's IndexIVFFlat does (k = 64:
    more than many cells hold)."""
    import faiss

    queries, keys = _photo_patches(cat)
    index = PatchIndex(keys, pca_dims=20, index="ivf", nlist=32, nprobe=nprobe)
    reference = faiss.IndexIVFFlat(faiss.IndexFlatL2(20), 20, 32)
    reference.cp.seed, reference.cp.min_points_per_centroid = 1234, 1
    projected_keys = index.project(keys)
    reference.train(projected_keys)
    reference.add(projected_keys)
    reference.nprobe = nprobe
    expected_d, expected_i = reference.search(index.project(queries), k)
    distances, found = index.search(queries, k)
    listed = expected_i >= 0  # FAISS lists fewer than k keys where the probed cells hold fewer
    if k == 64:
        assert not listed.all()
    assert (found.numpy()[listed] == expected_i[listed]).mean() > 0.999  # float32 near-ties aside
    torch.testing.assert_close(distances[listed], torch.from_numpy(expected_d[listed]), rtol=1e-4, atol=1e-5)
    # past the keys found, the nearest one is repeated
    first = np.broadcast_to(found.numpy()[:, :1], found.shape)
    assert (found.numpy()[~listed] == first[~listed]).all()


def test_search_images_is_search_of_the_extracted_patches(cat: torch.Tensor) -> None:
    images = torch.stack([cat, cat.flip(2)])
    index = PatchIndex(extract_patches(cat[None], 7)[0], pca_dims=12, index="ivf", nlist=16)
    queries = extract_patches(images, 7).reshape(-1, 3 * 49)
    expected_d, expected_i = index.search(queries, 2)
    distances, found = index.search_images(images, 7, 2)
    assert (found == expected_i).double().mean() > 0.999
    torch.testing.assert_close(distances, expected_d, rtol=1e-4, atol=1e-5)


def _image_pair(cat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two query images (a noisy copy and a flip of the cat's corner) and the key patches of the cat's
    corner: (2,3,20,24), (L,3*5*5)."""
    corner = cat[:, :20, :24]
    noisy = (corner + 0.1 * torch.randn(corner.shape, generator=torch.Generator().manual_seed(3))).clamp(0, 1)
    return torch.stack([noisy, corner.flip(2)]), extract_patches(corner[None], 5)[0]


@pytest.mark.parametrize("pca_dims", [None, 12])
def test_search_normalised_on_a_flat_index_is_gpnns_exact_score(
    cat: torch.Tensor, pca_dims: int | None
) -> None:
    images, keys = _image_pair(cat)
    index = PatchIndex(keys, pca_dims=pca_dims, index="flat")
    distances, found = index.search_normalised(images, 5, alpha=0.005)
    # GPNN's score in float64 on the patches in the index's space, D over the patch dimension 75
    space = index.projected_keys.shape[1]
    projected = torch.from_numpy(index.project_images(images, 5)).double().view(2, -1, space)
    keys_in_space = index.projected_keys.double()
    squared = torch.cdist(projected, keys_in_space[None].expand(2, -1, -1)).pow(2)
    score = squared / (0.005 * 75 + squared.amin(1, keepdim=True))
    assert found.shape == distances.shape == (2, 16 * 20)
    best = score.amin(2)
    torch.testing.assert_close(score.gather(2, found[..., None])[..., 0], best, rtol=1e-4, atol=1e-7)
    assert (found == score.argmin(2)).double().mean() > 0.99  # a different key only on near-ties
    chosen = (projected - keys_in_space[found]).pow(2).sum(-1) / 75
    torch.testing.assert_close(distances.double(), chosen, rtol=1e-4, atol=1e-6)
    # each image's minima are its own: the first image alone finds the same keys
    alone = index.search_normalised(images[:1], 5, alpha=0.005)[1]
    assert (alone[0] == found[0]).double().mean() > 0.999


def test_search_normalised_probing_every_cell_is_the_flat_search(cat: torch.Tensor) -> None:
    images, keys = _image_pair(cat)
    flat = PatchIndex(keys, pca_dims=12).search_normalised(images, 5, alpha=0.005)[1]
    every = PatchIndex(keys, pca_dims=12, index="ivf", nlist=16, nprobe=16).search_normalised(
        images, 5, 0.005
    )[1]
    assert (every == flat).double().mean() > 0.999
    # one probe: the chosen key lies in the query's nearest cell
    ivf = PatchIndex(keys, pca_dims=12, index="ivf", nlist=16, nprobe=1)
    found = ivf.search_normalised(images, 5, alpha=0.005)[1].reshape(-1)
    query_cells = ivf.index.search(ivf.project_images(images, 5), 1)[1][:, 0]
    key_cells = ivf.index.search(ivf.projected_keys.numpy(), 1)[1][:, 0]
    assert (key_cells[found.numpy()] == query_cells).all()


@pytest.mark.parametrize("group_keys", [10**9, 40])
def test_grouped_cells_scan_as_cells_one_at_a_time(
    cat: torch.Tensor, group_keys: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cells scanned in groups (other cells' entries masked) find what a scan of one cell at a time
    finds, for the plain search and the normalised one, with one probe and with several."""
    images, keys = _image_pair(cat)
    queries = extract_patches(images, 5).reshape(-1, keys.shape[1])
    results = {}
    for size in (1, group_keys):
        monkeypatch.setattr(faiss_nn, "GROUP_KEYS", size)
        for nprobe in (1, 3):
            index = PatchIndex(keys, pca_dims=12, index="ivf", nlist=16, nprobe=nprobe)
            results[size, nprobe] = (*index.search(queries, 4), *index.search_normalised(images, 5, 0.005))
    for nprobe in (1, 3):
        alone, grouped = results[1, nprobe], results[group_keys, nprobe]
        for a, b in zip(alone[1::2], grouped[1::2]):  # key indices
            assert (a == b).double().mean() > 0.999
        for a, b in zip(alone[::2], grouped[::2]):  # distances
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("block_entries", [320 * 400, 320 * 40, 16 * 40])
def test_normalised_search_in_small_blocks_as_in_one(
    cat: torch.Tensor, block_entries: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blocks cut where an image's rows of a cell begin (one scan) or, where those rows alone exceed a
    block, anywhere (the column minima first) find what one block of every row finds."""
    images, keys = _image_pair(cat)  # 320 queries per image, 320 keys
    indexes = [
        PatchIndex(keys, pca_dims=12),
        PatchIndex(keys, pca_dims=12, index="ivf", nlist=4),
        PatchIndex(keys, pca_dims=12, index="ivf", nlist=4, nprobe=2),
    ]
    whole = [index.search_normalised(images, 5, 0.005) for index in indexes]
    monkeypatch.setattr(faiss_nn, "BLOCK_ENTRIES", block_entries)
    for index, (distances, found) in zip(indexes, whole):
        small_distances, small_found = index.search_normalised(images, 5, 0.005)
        assert (small_found == found).double().mean() > 0.999
        torch.testing.assert_close(small_distances, distances, rtol=1e-4, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 30), min_size=1, max_size=12),
    offset=st.integers(0, 5),
    step=st.integers(1, 40),
)
def test_split_cuts_only_where_segments_begin(lengths: list[int], offset: int, step: int) -> None:
    starts = np.cumsum([offset, *lengths[:-1]]).tolist()
    rows = slice(offset, offset + sum(lengths))
    plain, at_starts = faiss_nn._split(rows, step), faiss_nn._split(rows, step, starts)
    for ranges in (plain, at_starts):
        if ranges is not None:
            assert ranges[0].start == rows.start and ranges[-1].stop == rows.stop
            assert all(a.stop == b.start for a, b in zip(ranges, ranges[1:]))
            assert all(0 < r.stop - r.start <= step for r in ranges)
    assert (at_starts is None) == (max(lengths) > step)
    if at_starts is not None:
        assert all(r.start in starts for r in at_starts)


def test_ivf_min_keys_makes_small_key_sets_flat() -> None:
    keys = torch.rand(100, 6)
    assert not PatchIndex(keys, index="ivf", nlist=8, ivf_min_keys=101).is_ivf
    assert PatchIndex(keys, index="ivf", nlist=8, ivf_min_keys=100).is_ivf
    gpnn = GPNN(search="faiss", index="ivf", ivf_min_keys=1000, **FAST)
    gpnn.generate(torch.rand(3, 40, 40), 1)
    sizes = {index.projected_keys.shape[0]: index.is_ivf for index in gpnn._index_cache[2].values()}
    assert sizes and all(is_ivf == (n_keys >= 1000) for n_keys, is_ivf in sizes.items())
    assert any(sizes.values()) and not all(sizes.values())


def test_faiss_generation_contract_determinism_and_index_reuse(cat: torch.Tensor) -> None:
    gpnn = GPNN(search="faiss", pca_dims=20, index="ivf", candidates=4, **FAST)
    out = gpnn.generate(cat, 3, seed=2)
    assert out.shape == (3, 3, 48, 64) and out.min() >= 0 and out.max() <= 1
    cached = gpnn._index_cache[2]
    assert len(cached) == 2 * len(gpnn.pyramid_sizes(48, 64)) - 1  # blurred and sharp keys per level
    assert torch.equal(gpnn.generate(cat, 3, seed=2), out)  # reused indexes: the same result
    assert gpnn._index_cache[2] is cached
    fresh = GPNN(search="faiss", pca_dims=20, index="ivf", candidates=4, **FAST)
    assert torch.equal(fresh.generate(cat, 3, seed=2), out)  # rebuilt indexes: the same result
    torch.testing.assert_close(fresh.generate(cat, 1, seed=2)[0], out[0], rtol=0, atol=1e-6)
    gpnn.generate(cat.flip(2), 1)
    assert gpnn._index_cache[2] is not cached  # another image: new indexes


# every key, two ways; each against the exact search that rounds as it does (they differ on near-ties:
# shifts and matmul agree on 97 % of this field)
@pytest.mark.parametrize("candidates, search", [((24 - 4) * (32 - 4), "shifts"), ("cells", "matmul")])
def test_flat_faiss_with_all_candidates_matches_the_exact_search(
    cat: torch.Tensor, candidates: object, search: str
) -> None:
    small = cat[:, :24, :32]
    exact = GPNN(search=search, **FAST).generate(small, 2, seed=1, return_field=True)
    faiss = GPNN(search="faiss", candidates=candidates, **FAST).generate(small, 2, seed=1, return_field=True)
    assert (faiss.field == exact.field).double().mean() > 0.99
    assert (faiss.images - exact.images).abs().mean() < 1e-3


def test_early_stop_never_runs_more_iterations_than_asked(cat: torch.Tensor) -> None:
    full = GPNN(iters=4, patch_size=5).generate(cat, 2, seed=0, return_field=True)
    assert (full.iterations == 4).all()
    stopped = GPNN(iters=4, patch_size=5, early_stop=0.5).generate(cat, 2, seed=0, return_field=True)
    assert stopped.iterations.shape == (2, len(GPNN().pyramid_sizes(48, 64)))
    assert (stopped.iterations >= 1).all() and (stopped.iterations <= 4).all()
    assert (stopped.iterations < 4).any()  # half the field changing is a stop somewhere
    never = GPNN(iters=4, patch_size=5, early_stop=0.0).generate(cat, 2, seed=0, return_field=True)
    assert (never.iterations >= 2).all()  # the first comparison is after iteration 1
    # a variation's iterations do not depend on the others in the batch
    alone = GPNN(iters=4, patch_size=5, early_stop=0.5).generate(cat, 1, seed=0, return_field=True)
    assert torch.equal(alone.iterations[0], stopped.iterations[0])
    torch.testing.assert_close(alone.images[0], stopped.images[0], rtol=0, atol=1e-6)


def test_authors_preset() -> None:
    gpnn = GPNN.authors()
    settings_now = {name: getattr(gpnn, name) for name in AUTHORS_SETTINGS}
    assert settings_now == {
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
    assert (gpnn.patch_size, gpnn.scale_factor, gpnn.coarsest, gpnn.iters, gpnn.alpha) == (
        7,
        4 / 3,
        14,
        10,
        0.005,
    )
    assert GPNN.authors(nprobe=4).nprobe == 4


def test_authors_pyramid() -> None:
    # 224 px: floor(224 / r**n) for n < 9, then 14 x 14 from level 8 (22 px) by nearest neighbour
    sizes = pyramid_sizes(224, 300, 14, 4 / 3, "pyrdown")
    assert [h for h, _ in sizes] == [224, 168, 126, 94, 70, 53, 39, 29, 22, 14]
    assert sizes[-1] == (14, 14) and sizes[1] == (168, 225)
    image = torch.rand(1, 3, 224, 300, generator=torch.Generator().manual_seed(0))
    levels = build_pyramid(image, sizes, "pyrdown")
    assert [tuple(level.shape[-2:]) for level in levels] == sizes and levels[0] is image
    # a constant image stays constant (the blur is normalised, reflect padding)
    flat = build_pyramid(
        torch.full((1, 3, 64, 64), 0.3), pyramid_sizes(64, 64, 14, 4 / 3, "pyrdown"), "pyrdown"
    )
    assert all(torch.allclose(level, torch.full_like(level, 0.3)) for level in flat)
    # pyrdown's blur is the 5x5 binomial kernel: an impulse spreads to it
    impulse = torch.zeros(1, 1, 9, 9)
    impulse[..., 4, 4] = 1
    spread = pyrdown(impulse, (9, 9))[0, 0, 2:7, 2:7]
    binomial = torch.tensor([1.0, 4, 6, 4, 1]) / 16
    torch.testing.assert_close(spread, binomial[:, None] * binomial[None, :])


def test_authors_pipeline_generates(cat: torch.Tensor) -> None:
    out = GPNN.authors(iters=2).generate(cat, 2, seed=0)
    assert out.shape == (2, 3, 48, 64) and out.min() >= 0 and out.max() <= 1
    assert torch.equal(GPNN.authors(iters=2).generate(cat, 2, seed=0), out)


def test_bad_faiss_settings() -> None:
    for kwargs, name in [
        ({"search": "faiss", "pca_dims": 0}, "pca_dims"),
        ({"pca_dims": 30}, "pca_dims"),  # PCA needs the faiss search
        ({"search": "faiss", "index": "hnsw"}, "index"),
        ({"nlist": 0}, "nlist"),
        ({"nprobe": 1.5}, "nprobe"),
        ({"candidates": 0}, "candidates"),
        ({"candidates": "all"}, "candidates"),
        ({"ivf_min_keys": -1}, "ivf_min_keys"),
        ({"pyramid": "gaussian"}, "pyramid"),
        ({"upsample": "bicubic"}, "upsample"),
        ({"early_stop": 1.0}, "early_stop"),
        ({"early_stop": -0.1}, "early_stop"),
    ]:
        with pytest.raises(ValueError, match=name):
            GPNN(**kwargs)


@pytest.mark.parametrize("candidates", [None, 4, "cells"])  # None: the exact search
def test_generate_batches_is_generate_per_batch(cat: torch.Tensor, candidates: object) -> None:
    settings = (
        dict(search="faiss", pca_dims=20, index="ivf", candidates=candidates, early_stop=0.05)
        if candidates
        else {}
    )
    gpnn = GPNN(fold="distance", **FAST, **settings)
    together = gpnn.generate_batches(cat, [2, 3], seeds=[7, 8])
    apart = [GPNN(fold="distance", **FAST, **settings).generate(cat, n, seed=s) for n, s in ((2, 7), (3, 8))]
    assert [b.shape[0] for b in together] == [2, 3]
    for joint, alone in zip(together, apart):
        torch.testing.assert_close(joint, alone, rtol=0, atol=1e-5)  # float rounding of other batch sizes
    with pytest.raises(ValueError, match="sizes and seeds"):
        gpnn.generate_batches(cat, [2, 3], seeds=[7])
    with pytest.raises(ValueError, match="n must be"):
        gpnn.generate_batches(cat, [0], seeds=[7])


@pytest.mark.parametrize("index_type", ["flat", "ivf"])
def test_search_without_queries(cat: torch.Tensor, index_type: str) -> None:
    _, keys = _photo_patches(cat)
    distances, found = PatchIndex(keys, pca_dims=8, index=index_type, nlist=16).search(keys[:0], k=3)
    assert (distances.shape, found.shape, distances.dtype, found.dtype) == (
        (0, 3),
        (0, 3),
        torch.float32,
        torch.long,
    )
