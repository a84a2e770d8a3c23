"""The fused Triton NN search: the exact normalised argmin, first key on ties, per-variation minima, zero
patches, GPNN(search="triton") against the matmul search, bad input, and the kernels' ahead-of-time build
for Ampere and Hopper GPUs. Without a CUDA device the kernels run in Triton's interpreter
(``TRITON_INTERPRET=1``, set by conftest) on CPU tensors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")

from saliency import GPNN  # noqa: E402
from saliency.matmul_nn import nearest_neighbours_naive  # noqa: E402
from saliency.patches import extract_patches  # noqa: E402
from saliency.triton_nn import CONFIGS, nearest_neighbours_triton  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
#: The largest tiles of any precision: sizes around them cover one block, several and partial ones.
BLOCK_Q, BLOCK_K, BLOCK_D = (
    max(c[name] for c in CONFIGS.values()) for name in ("BLOCK_Q", "BLOCK_K", "BLOCK_D")
)


def _scores64(queries: torch.Tensor, keys: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 normalised scores S (B,Nq,Nk) = D / (alpha + per-variation column minimum of D), and a bound
    E on how far a float32 evaluation of the kernels' formula ``(||q||^2 - 2 q.k + ||k||^2) / (alpha d +
    min)`` can be from S: its cancellation error is absolute, ~eps32 * (||q||^2 + ||k||^2), so near-exact
    matches (small D, small alpha) can swap at float32 precision. Infinite where the bound is void."""
    q, k = queries.double(), keys.double()
    dim = q.shape[-1]
    sq = torch.cdist(q, k).pow(2)  # (B,Nq,Nk) sums of squares
    col_min = sq.amin(dim=1, keepdim=True)
    score = sq / (alpha * dim + col_min)
    # dot of length d, two norms and two sums: generously 2 (d + 4) units of roundoff times the magnitudes
    unit = 2 * (dim + 4) * 2.0**-24
    dist_error = unit * (q.pow(2).sum(-1)[..., None] + k.pow(2).sum(-1) + 2 * (q @ k.T).abs())
    min_error = dist_error.amax(dim=1, keepdim=True)
    denominator = alpha * dim + col_min - min_error
    error = (dist_error + score * min_error) / denominator + 4 * 2.0**-24 * score
    return score, torch.where(denominator > 0, error, torch.inf)


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 3),
    n_q=st.integers(1, 2 * BLOCK_Q + 1),  # one block, several, and partial last blocks
    n_k=st.integers(1, 2 * BLOCK_K + 1),
    dim=st.integers(1, 2 * BLOCK_D + 3),
    alpha=st.sampled_from([1e-4, 0.005, 1.0, 1e3]),
    precision=st.sampled_from(["ieee", "tf32x3"]),
    seed=st.integers(0, 2**16),
)
def test_triton_nn_is_the_exact_normalised_argmin(batch, n_q, n_k, dim, alpha, precision, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    queries = torch.rand(batch, n_q, dim, generator=g).to(DEVICE)
    keys = torch.rand(n_k, dim, generator=g).to(DEVICE)
    idx = nearest_neighbours_triton(queries, keys, alpha, precision)
    score, error = _scores64(queries, keys, alpha)
    assert idx.shape == (batch, n_q) and idx.dtype == torch.long and idx.device == queries.device
    assert idx.min() >= 0 and idx.max() < n_k
    # the chosen key is the argmin of some float32-perturbed scores S + e, |e| <= E:
    # S[chosen] - E[chosen] <= min_j (S[j] + E[j])
    lowest = score.gather(2, idx[..., None])[..., 0] - error.gather(2, idx[..., None])[..., 0]
    assert (lowest <= (score + error).amin(2)).all()
    # where one key wins by more than the float32 error, it must be the one chosen
    best = score.argmin(2)
    best_upper = (score + error).gather(2, best[..., None])
    clear = (score - error).scatter(2, best[..., None], torch.inf).amin(2) > best_upper[..., 0]
    assert torch.equal(idx[clear], best[clear])


def test_triton_nn_equals_naive_float64_on_image_patches() -> None:
    g = torch.Generator().manual_seed(7)
    image = torch.rand(3, 20, 22, generator=g)
    variations = (image + 0.1 * torch.randn(2, 3, 20, 22, generator=g)).clamp(0, 1)
    queries, keys = extract_patches(variations, 5), extract_patches(image[None], 5)[0]
    naive = nearest_neighbours_naive(queries.double(), keys.double(), 0.005)
    assert torch.equal(nearest_neighbours_triton(queries.to(DEVICE), keys.to(DEVICE), 0.005).cpu(), naive)


def test_triton_nn_ties_take_the_first_key_and_minima_are_per_variation() -> None:
    # identical keys in every block: the first one wins, also across blocks
    flat = torch.full((2, 2 * BLOCK_Q + 5, 12), 0.5, device=DEVICE)
    assert torch.equal(
        nearest_neighbours_triton(flat, flat[0, : 2 * BLOCK_K + 3], 0.005),
        torch.zeros(2, 2 * BLOCK_Q + 5, dtype=torch.long, device=DEVICE),
    )
    g = torch.Generator().manual_seed(3)
    keys = torch.rand(90, 6, generator=g).to(DEVICE)
    queries = torch.rand(3, 80, 6, generator=g).to(DEVICE)
    queries[2] = keys[:80]  # an exact copy: a batch-wide minimum would be 0 for every key
    together = nearest_neighbours_triton(queries, keys, 0.005)
    alone = torch.cat([nearest_neighbours_triton(queries[b : b + 1], keys, 0.005) for b in range(3)])
    assert torch.equal(together, alone)
    assert torch.equal(together[2], torch.arange(80, device=DEVICE))


def test_triton_nn_zero_patches_have_no_nan_scores() -> None:
    # ||q||^2 = 0 against padded keys must not form 0 * inf: every query of zeros picks a real key
    keys = torch.rand(BLOCK_K + 1, 9, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    keys[5] = 0
    idx = nearest_neighbours_triton(torch.zeros(1, 70, 9, device=DEVICE), keys, 0.005)
    assert torch.equal(idx, torch.full_like(idx, 5))


def test_gpnn_triton_search_matches_matmul() -> None:
    g = torch.Generator().manual_seed(1)
    image = torch.rand(3, 22, 26, generator=g).to(DEVICE)
    fast = dict(patch_size=5, coarsest=14, iters=2)
    triton_out = GPNN(search="triton", **fast).generate(image, 2, seed=5, return_field=True)
    matmul_out = GPNN(search="matmul", **fast).generate(image, 2, seed=5, return_field=True)
    assert triton_out.images.shape == (2, 3, 22, 26)
    assert (triton_out.field == matmul_out.field).double().mean() > 0.99
    assert (triton_out.images - matmul_out.images).abs().mean() < 1e-3


def test_triton_nn_bad_input() -> None:
    queries, keys = torch.rand(1, 10, 4, device=DEVICE), torch.rand(12, 4, device=DEVICE)
    with pytest.raises(ValueError, match="input_precision"):
        nearest_neighbours_triton(queries, keys, 0.005, "fp16")
    with pytest.raises(ValueError, match=r"queries must be \(B,Nq,d\)"):
        nearest_neighbours_triton(queries[0], keys, 0.005)
    with pytest.raises(ValueError, match="same d"):
        nearest_neighbours_triton(queries, keys[:, :3], 0.005)
    with pytest.raises(ValueError, match="int32 offsets"):  # an expanded view: no memory behind it
        nearest_neighbours_triton(queries, torch.rand(1, 4, device=DEVICE).expand(2**29, 4), 0.005)
    with pytest.raises(ValueError, match="search must be"):
        GPNN(search="annoy")


def test_triton_search_needs_cuda_without_the_interpreter(monkeypatch) -> None:
    from saliency import triton_nn

    monkeypatch.setattr(triton_nn, "INTERPRETED", False)
    with pytest.raises(ValueError, match="search='triton' runs on CUDA"):
        nearest_neighbours_triton(torch.rand(1, 4, 3), torch.rand(5, 3), 0.005)
    with pytest.raises(ValueError, match="search='triton' runs on CUDA"):
        GPNN(search="triton", patch_size=3, coarsest=8).generate(torch.rand(3, 8, 8), 1)


def test_kernels_compile_for_ampere_and_hopper() -> None:
    # the interpreter runs Python, not the compiler: build the GPU binaries ahead of time, no GPU needed
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    script = Path(__file__).with_name("compile_triton_kernels.py")
    done = subprocess.run(
        [sys.executable, str(script), "80", "90"], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(rows) == 2 * 2 * len(CONFIGS)
    assert all(row["cubin_bytes"] > 0 for row in rows)


def test_triton_search_needs_triton_3(monkeypatch) -> None:
    import triton

    monkeypatch.setattr(triton, "__version__", "2.3.1")
    with pytest.raises(ImportError, match=r"triton >= 3.0 .* found 2.3.1"):
        nearest_neighbours_triton(torch.rand(1, 4, 3, device=DEVICE), torch.rand(5, 3, device=DEVICE), 0.005)
