"""GPNN: output contract, determinism, the exact chunked NN against the full-matrix reference, per-variation
completeness minima, fold/unfold, reproduction of the input without noise, bad input."""

from __future__ import annotations

import pytest
import skimage.data
import skimage.transform
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from saliency import GPNN
from saliency.gpnn import (
    extract_patches,
    fold_patches,
    nearest_neighbours,
    nearest_neighbours_naive,
)

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
    sizes = GPNN().pyramid_sizes(224, 300)
    assert sizes[0] == (224, 300) and min(sizes[-1]) == 14
    shorts = [min(s) for s in sizes]
    assert all(1.0 < a / b <= 4 / 3 + 0.05 for a, b in zip(shorts, shorts[1:]))
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


@pytest.mark.parametrize("size", [(7, 7), (9, 13), (20, 16)])
def test_fold_of_extract_is_identity(size: tuple[int, int]) -> None:
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0))
    patches = extract_patches(x, 5)
    assert torch.equal(patches, F.unfold(x, 5).transpose(1, 2))
    torch.testing.assert_close(fold_patches(patches, size, 5), x)


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
    with pytest.raises(ValueError, match="chunk_size"):
        nearest_neighbours(torch.rand(1, 3, 2), torch.rand(3, 2), 0.1, 0)


def test_global_rng_untouched() -> None:
    """generate() draws from its own generator: the global torch random state is left alone."""
    state = torch.get_rng_state()
    GPNN(**FAST).generate(torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0)), 1, seed=5)
    assert torch.equal(state, torch.get_rng_state())
