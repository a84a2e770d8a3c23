"""GPNN: output contract, determinism, the exact chunked NN against the full-matrix reference, per-variation
completeness minima, fold/unfold, reproduction of the input without noise, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import skimage.transform
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from saliency import GPNN
from saliency.matmul_nn import nearest_neighbours, nearest_neighbours_naive
from saliency.patches import (
    distance_weights,
    extract_patches,
    fold_field,
)
from saliency.shifted_nn import nearest_neighbours_shifted

FAST = dict(patch_size=5, coarsest=14, iters=2)


@pytest.fixture(scope="module")
def cat() -> torch.Tensor:
    """skimage's chelsea resized to (3,24,36) float32 in [0,1]."""
    image = skimage.transform.resize(skimage.data.chelsea(), (24, 36), anti_aliasing=True)
    return torch.from_numpy(image).permute(2, 0, 1).float().clamp(0, 1)


def test_output_contract(cat: torch.Tensor) -> None:
    out = GPNN(**FAST).generate(cat, 3, seed=0)
    assert out.shape == (3, 3, 24, 36)
    assert out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    # numpy and (1,C,H,W) inputs give the same result
    assert torch.equal(GPNN(**FAST).generate(cat.numpy(), 3, seed=0), out)
    assert torch.equal(GPNN(**FAST).generate(cat[None], 3, seed=0), out)


def test_every_output_pixel_is_an_average_of_source_pixels(cat: torch.Tensor) -> None:
    out = GPNN(**FAST).generate(cat, 2, seed=3)
    for c in range(3):
        assert out[:, c].min() >= cat[c].min() - 1e-6 and out[:, c].max() <= cat[c].max() + 1e-6


def test_deterministic_and_seed_sensitive(cat: torch.Tensor) -> None:
    gpnn = GPNN(**FAST)
    a = gpnn.generate(cat, 2, seed=7)
    assert torch.equal(a, gpnn.generate(cat, 2, seed=7))
    b = gpnn.generate(cat, 2, seed=8)
    assert (a - b).abs().mean() > 0.01
    assert (a[0] - a[1]).abs().mean() > 0.01  # the variations of one batch differ too


def test_reproduces_input_without_noise_and_large_alpha(cat: torch.Tensor) -> None:
    out = GPNN(noise_sigma=0.0, alpha=1e3, **FAST).generate(cat, 2)
    assert (out - cat).abs().max() < 1e-4
    varied = GPNN(**FAST).generate(cat, 2)
    assert (varied - cat).abs().mean() > 0.02  # with noise it is a variation, not a copy


def test_pyramid_sizes() -> None:
    # the reference's list for 224 px: 224, 168, 126, 94.5, 70.9, 53.2, 39.9, 29.9, 22.4, then 14
    shorts = [min(s) for s in GPNN().pyramid_sizes(224, 224)]
    assert shorts == [224, 168, 126, 95, 71, 53, 40, 30, 22, 14]
    sizes = GPNN().pyramid_sizes(224, 300)
    assert sizes[0] == (224, 300) and sizes[-1] == (14, 19) and len(sizes) == 10
    assert all(abs(h / w - 224 / 300) < 0.03 for h, w in sizes)
    assert GPNN().pyramid_sizes(14, 20) == [(14, 20)]


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 3),
    n_q=st.integers(1, 40),
    n_k=st.integers(1, 40),
    dim=st.integers(1, 12),
    chunk=st.integers(1, 6000),
    alpha=st.sampled_from([1e-4, 0.005, 1.0, 1e3]),
    seed=st.integers(0, 2**16),
)
def test_chunked_nn_equals_naive(batch, n_q, n_k, dim, chunk, alpha, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    queries = torch.rand(batch, n_q, dim, generator=g, dtype=torch.float64)
    keys = torch.rand(n_k, dim, generator=g, dtype=torch.float64)
    # float64 random data: ties are improbable, so the indices must agree exactly
    assert torch.equal(
        nearest_neighbours(queries, keys, alpha, chunk), nearest_neighbours_naive(queries, keys, alpha)
    )


def test_chunked_nn_float32_scores_match_naive() -> None:
    g = torch.Generator().manual_seed(0)
    queries, keys = torch.rand(2, 300, 75, generator=g), torch.rand(250, 75, generator=g)
    dist = torch.cdist(queries.double(), keys.double()).pow(2) / 75
    score = dist / (0.005 + dist.amin(1, keepdim=True))
    best = score.amin(2)
    for chunk in (5_000, 40_000, 10**8):
        idx = nearest_neighbours(queries, keys, 0.005, chunk)
        torch.testing.assert_close(score.gather(2, idx[..., None])[..., 0], best, rtol=1e-4, atol=1e-6)


def test_large_alpha_is_plain_nearest_neighbour() -> None:
    g = torch.Generator().manual_seed(1)
    queries, keys = (
        torch.rand(2, 50, 8, generator=g, dtype=torch.float64),
        torch.rand(60, 8, generator=g).double(),
    )
    plain = torch.cdist(queries, keys).argmin(2)
    assert torch.equal(nearest_neighbours(queries, keys, 1e9, 100), plain)


def test_column_minima_are_per_variation() -> None:
    g = torch.Generator().manual_seed(2)
    keys = torch.rand(40, 6, generator=g, dtype=torch.float64)
    queries = torch.rand(3, 30, 6, generator=g, dtype=torch.float64)
    # variation 2 copies every key exactly: a batch-wide minimum would be 0 for all keys
    queries[2, :] = keys[:30]
    together = nearest_neighbours(queries, keys, 0.005, 50)
    alone = torch.cat([nearest_neighbours(queries[b : b + 1], keys, 0.005, 50) for b in range(3)])
    assert torch.equal(together, alone)
    assert torch.equal(together[2], torch.arange(30))
    # the coupled (whole-batch minimum) rule gives a different answer here, so the test can tell them apart
    dist = torch.cdist(queries, keys).pow(2) / 6
    coupled = (dist / (0.005 + dist.amin(dim=(0, 1)))).argmin(2)
    assert not torch.equal(coupled[:2], together[:2])


def _scores64(queries: torch.Tensor, keys: torch.Tensor, p: int, alpha: float) -> torch.Tensor:
    """Float64 normalised scores (B, Lq, Lk) of images queries (B,C,H,W) against keys (C,H',W')."""
    q, k = extract_patches(queries.double(), p), extract_patches(keys[None].double(), p)[0]
    dist = torch.cdist(q, k).pow(2) / q.shape[-1]
    return dist / (alpha + dist.amin(dim=1, keepdim=True))


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 3),
    channels=st.integers(1, 4),
    p=st.sampled_from([1, 2, 5]),  # each patch size is one compiled kernel
    query_size=st.tuples(st.integers(0, 9), st.integers(0, 9)),
    key_size=st.tuples(st.integers(0, 9), st.integers(0, 9)),
    alpha=st.sampled_from([1e-4, 0.005, 1.0, 1e3]),
    seed=st.integers(0, 2**16),
)
def test_shifted_nn_is_the_exact_normalised_argmin(
    batch, channels, p, query_size, key_size, alpha, seed
) -> None:
    g = torch.Generator().manual_seed(seed)
    queries = torch.rand(batch, channels, p + query_size[0], p + query_size[1], generator=g)
    keys = torch.rand(channels, p + key_size[0], p + key_size[1], generator=g)
    idx = nearest_neighbours_shifted(queries, keys, p, alpha)
    score = _scores64(queries, keys, p, alpha)
    assert idx.shape == score.shape[:2] and idx.dtype == torch.long
    # the chosen key's float64 score is the minimum: where the index differs from the float64 argmin,
    # the two scores tie up to float32 rounding (a fraction of matching indices is no test on 9 queries)
    chosen, best = score.gather(2, idx[..., None])[..., 0], score.amin(2)
    torch.testing.assert_close(chosen, best, rtol=1e-5, atol=1e-9)


def test_shifted_nn_on_gpnn_patches_equals_naive_float64(cat: torch.Tensor) -> None:
    variations = GPNN(**FAST).generate(cat, 2, seed=1)
    idx = nearest_neighbours_shifted(variations, cat, 5, 0.005)
    naive = nearest_neighbours_naive(
        extract_patches(variations.double(), 5), extract_patches(cat[None].double(), 5)[0], 0.005
    )
    assert torch.equal(idx, naive)


def test_shifted_nn_ties_take_the_first_key_and_minima_are_per_variation() -> None:
    flat = torch.full((1, 3, 9, 9), 0.5)
    assert torch.equal(
        nearest_neighbours_shifted(flat, flat[0], 3, 0.005), torch.zeros(1, 49, dtype=torch.long)
    )
    g = torch.Generator().manual_seed(3)
    keys = torch.rand(3, 10, 12, generator=g)
    queries = torch.rand(3, 3, 10, 12, generator=g)
    queries[2] = keys  # an exact copy: a batch-wide minimum would be 0 for every key
    together = nearest_neighbours_shifted(queries, keys, 5, 0.005)
    alone = torch.cat([nearest_neighbours_shifted(queries[b : b + 1], keys, 5, 0.005) for b in range(3)])
    assert torch.equal(together, alone)
    assert torch.equal(together[2], torch.arange(48))


def test_search_algorithms_give_the_same_variations(cat: torch.Tensor) -> None:
    shifts = GPNN(search="shifts", **FAST).generate(cat, 2, seed=5)
    matmul = GPNN(search="matmul", **FAST).generate(cat, 2, seed=5)
    assert (shifts - matmul).abs().mean() < 1e-3


def _fold(patches: torch.Tensor, size: tuple[int, int], p: int, weights: torch.Tensor | None = None):
    """Reference: the (weighted) average of overlapping patches (B, L, C*p*p) by ``F.fold``."""
    weights = torch.ones(patches.shape[:2]) if weights is None else weights
    total = F.fold((patches * weights[..., None]).transpose(1, 2), size, p)
    return total / F.fold(weights[:, None, :].expand(-1, p * p, -1), size, p)


@settings(max_examples=30, deadline=None)
@given(
    height=st.integers(5, 16),
    width=st.integers(5, 16),
    p=st.integers(1, 5),
    batch=st.integers(1, 3),
    weighted=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_fold_field_is_the_fold_of_the_chosen_patches(
    height: int, width: int, p: int, batch: int, weighted: bool, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    source = torch.rand(1, 2, height, width, generator=g)
    values = extract_patches(source, p)[0]
    field = torch.randint(0, values.shape[0], (batch, values.shape[0]), generator=g)
    weights = torch.rand(field.shape, generator=g) + 0.01 if weighted else None
    expected = _fold(values[field], (height, width), p, weights)
    torch.testing.assert_close(fold_field(source, field, p, weights), expected)


def test_return_field_reproduces_the_output(cat: torch.Tensor) -> None:
    out = GPNN(**FAST).generate(cat, 2, seed=4, return_field=True)
    assert torch.equal(out.images, GPNN(**FAST).generate(cat, 2, seed=4))
    n_patches = (24 - 4) * (36 - 4)
    assert out.field.shape == (2, n_patches) and out.distances.shape == (2, n_patches)
    values = extract_patches(cat[None], 5)[0]
    torch.testing.assert_close(_fold(values[out.field], (24, 36), 5), out.images)
    assert out.distances.min() >= 0


def test_distance_weighted_fold(cat: torch.Tensor) -> None:
    g = torch.Generator().manual_seed(0)
    source = torch.rand(1, 3, 12, 10, generator=g)
    field = torch.randint(0, 8 * 6, (2, 8 * 6), generator=g)
    equal = torch.full(field.shape, 0.3)
    torch.testing.assert_close(fold_field(source, field, 5, equal), fold_field(source, field, 5))
    d = torch.tensor([[0.0, 1.0, 2.0, 3.0], [2.0, 2.0, 2.0, 2.0], [0.0, 0.0, 0.0, 0.0]])
    sigma = d[0].std(correction=0)
    torch.testing.assert_close(distance_weights(d)[0], torch.exp(-d[0] / sigma))
    torch.testing.assert_close(distance_weights(d)[1:], torch.ones(2, 4))  # std 0: sigma = min d, or 1
    far = torch.tensor([[0.0, 1e6]])
    assert distance_weights(far)[0, 1] > 0  # no underflow to 0 (a 0/0 in the fold)
    weighted = GPNN(fold="distance", **FAST).generate(cat, 2, seed=2, return_field=True)
    uniform = GPNN(**FAST).generate(cat, 2, seed=2)
    assert weighted.images.min() >= 0 and weighted.images.max() <= 1
    assert (weighted.images - uniform).abs().mean() > 1e-4
    refolded = fold_field(cat[None], weighted.field, 5, distance_weights(weighted.distances))
    torch.testing.assert_close(refolded.clamp(0, 1), weighted.images)


@pytest.mark.parametrize("size", [(7, 7), (9, 13), (20, 16)])
def test_fold_of_extract_is_identity(size: tuple[int, int]) -> None:
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0))
    patches = extract_patches(x, 5)
    assert torch.equal(patches, F.unfold(x, 5).transpose(1, 2))
    torch.testing.assert_close(_fold(patches, size, 5), x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_contract(cat: torch.Tensor) -> None:
    out = GPNN(**FAST).generate(cat.cuda(), 2, seed=0)
    assert out.is_cuda and out.shape == (2, 3, 24, 36) and out.min() >= 0 and out.max() <= 1
    same = GPNN(noise_sigma=0.0, alpha=1e3, **FAST).generate(cat.cuda(), 1)
    assert (same.cpu() - cat).abs().max() < 1e-4


def test_bad_input(cat: torch.Tensor) -> None:
    gpnn = GPNN(**FAST)
    with pytest.raises(ValueError, match="shape"):
        gpnn.generate(cat[0], 2)
    with pytest.raises(ValueError, match="shape"):
        gpnn.generate(torch.stack([cat, cat]), 2)
    with pytest.raises(ValueError, match=r"\[0,1\]"):
        gpnn.generate(cat * 2, 2)
    with pytest.raises(ValueError, match=r"\[0,1\]"):
        gpnn.generate(cat - 0.5, 2)
    with pytest.raises(ValueError, match="coarsest"):
        gpnn.generate(cat[:, :10, :10], 2)
    with pytest.raises(TypeError, match="floating"):
        gpnn.generate((cat * 255).to(torch.uint8), 2)
    with pytest.raises(TypeError, match="numpy array"):
        gpnn.generate(cat.tolist(), 2)
    for n in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="n must be"):
            gpnn.generate(cat, n)
    with pytest.raises(ValueError, match="coarsest"):
        GPNN(patch_size=7, coarsest=5)
    with pytest.raises(ValueError, match="scale_factor"):
        GPNN(scale_factor=1.0)
    with pytest.raises(ValueError, match="alpha"):
        GPNN(alpha=0)
    with pytest.raises(ValueError, match="init"):
        GPNN(init="noise")
    with pytest.raises(ValueError, match="chunk_size"):
        GPNN(chunk_size=0)
    with pytest.raises(ValueError, match="fold"):
        GPNN(fold="median")
    with pytest.raises(ValueError, match="search"):
        GPNN(search="annoy")
    with pytest.raises(ValueError, match="CPU"):
        GPNN(search="shifts", device="cuda", **FAST).generate(cat, 1)
    with pytest.raises(ValueError, match="keys"):
        nearest_neighbours_shifted(torch.rand(1, 3, 8, 8), torch.rand(2, 8, 8), 5, 0.1)
    with pytest.raises(ValueError, match="chunk_size"):
        nearest_neighbours(torch.rand(1, 3, 2), torch.rand(3, 2), 0.1, 0)


def test_a_variation_depends_on_seed_and_index_not_on_n(cat: torch.Tensor) -> None:
    """The coarsest noise is drawn one variation at a time (a batch draw of 14x21 = 294 values per
    variation would redraw its last values when n changes): variation i is the same in any batch."""
    gpnn = GPNN(**FAST)
    three = gpnn.generate(cat, 3, seed=4)
    torch.testing.assert_close(gpnn.generate(cat, 1, seed=4)[0], three[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(gpnn.generate(cat, 2, seed=4), three[:2], rtol=0, atol=1e-6)


def test_input_with_autograd_history(cat: torch.Tensor) -> None:
    image = cat.clone().requires_grad_(True)
    for search in ("shifts", "matmul"):
        out = GPNN(search=search, **FAST).generate(image * 1.0, 1)
        assert not out.requires_grad and out.grad_fn is None


def test_bad_settings_and_layouts(cat: torch.Tensor) -> None:
    for kwargs, name in [
        ({"alpha": float("inf")}, "alpha"),
        ({"noise_sigma": float("inf")}, "noise_sigma"),
        ({"noise_sigma": float("nan")}, "noise_sigma"),
        ({"scale_factor": 1.0001}, "scale_factor"),
        ({"patch_size": True}, "patch_size"),
        ({"chunk_size": True}, "chunk_size"),
        ({"alpha": "0.1"}, "alpha"),
    ]:
        with pytest.raises(ValueError, match=name):
            GPNN(**kwargs)
    gpnn = GPNN(patch_size=np.int64(5), coarsest=np.int64(14), iters=np.int64(2))  # numpy ints are ints
    assert gpnn.generate(cat, 1).shape == (1, 3, 24, 36)
    with pytest.raises(ValueError, match="seed"):
        gpnn.generate(cat, 1, seed=1.7)
    with pytest.raises(ValueError, match=r"channels-first"):
        gpnn.generate(cat.permute(1, 2, 0).numpy(), 1)
    flipped = cat.numpy()[:, ::-1]  # a numpy view with a negative stride
    assert gpnn.generate(flipped, 1).shape == (1, 3, 24, 36)


def test_global_rng_untouched() -> None:
    """generate() draws from its own generator: the global torch random state is left alone."""
    state = torch.get_rng_state()
    GPNN(**FAST).generate(torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0)), 1, seed=5)
    assert torch.equal(state, torch.get_rng_state())
