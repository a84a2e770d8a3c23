"""GPNN's exact completeness-normalised nearest neighbours as two fused Triton kernels (the GPU path
``GPNN(search="triton")``).

The matmul search (:func:`saliency.matmul_nn.nearest_neighbours`) writes every tile of distances to memory and
reads it back to reduce it. Here each program keeps its tile in registers, FlashAttention-style: the
distances ``||q||^2 - 2 q.k + ||k||^2`` of a block of queries and a block of keys are formed by ``tl.dot``
over chunks of the patch vector and reduced at once, so the only memory traffic is the patch vectors.

* Pass 1 (:func:`_column_min_kernel`): one program per (block of keys, variation) runs over all queries
  of that variation and keeps the column minimum ``m_j = max(min_i ||q_i - k_j||^2, 0)``.
* Pass 2 (:func:`_argmin_kernel`): one program per (block of queries, variation) runs over all keys and
  keeps the running argmin of ``w_j ||q_i - k_j||^2``, ``w_j = 1 / (alpha d + m_j)``: the score
  D / (alpha + min D) of the module docstring of :mod:`saliency.gpnn` times d. The first key wins ties
  (within a block by ``tl.min``'s left tie-break, across blocks by a strict comparison).

``input_precision`` is ``tl.dot``'s: ``"ieee"`` (exact float32, the default), ``"tf32"`` (tensor cores,
approximate: near-ties can resolve differently) or ``"tf32x3"`` (three TF32 products, close to float32).
With ``TRITON_INTERPRET=1`` set before Triton is imported (the test suite does so where no CUDA device is
visible), the same kernels run in Triton's interpreter (numpy) on CPU tensors: slow, for tests only.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only PyTorch builds come without Triton
    triton = None

#: Per input precision: tile sizes (queries, keys, patch-vector chunk; tl.dot needs each >= 16) and warps.
#: Picked among tiles that compile for sm_90 without register spills (ptxas); not yet tuned by timing on a
#: GPU.
CONFIGS = {
    "ieee": dict(BLOCK_Q=64, BLOCK_K=64, BLOCK_D=32, num_warps=8),
    "tf32": dict(BLOCK_Q=128, BLOCK_K=64, BLOCK_D=32, num_warps=8),
    "tf32x3": dict(BLOCK_Q=128, BLOCK_K=64, BLOCK_D=16, num_warps=8),
}
NUM_STAGES = 2


if triton is not None:

    @triton.jit
    def _distance_tile(
        q_ptr, k_ptr, rq, rk, n_q, n_k, dim,
        BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
    ):  # fmt: skip
        """q . k for the queries ``rq`` (rows of q_ptr) and keys ``rk``: (BLOCK_Q, BLOCK_K) float32."""
        acc = tl.zeros((BLOCK_Q, BLOCK_K), dtype=tl.float32)
        for d0 in range(0, dim, BLOCK_D):
            rd = d0 + tl.arange(0, BLOCK_D)
            q = tl.load(
                q_ptr + rq[:, None] * dim + rd[None, :], (rq[:, None] < n_q) & (rd[None, :] < dim), 0.0
            )
            k = tl.load(
                k_ptr + rk[None, :] * dim + rd[:, None], (rk[None, :] < n_k) & (rd[:, None] < dim), 0.0
            )
            acc = tl.dot(q, k, acc, input_precision=PRECISION)
        return acc

    @triton.jit
    def _column_min_kernel(
        q_ptr, q_norm_ptr, k_ptr, k_norm_ptr, col_min_ptr, n_q, n_k, dim,
        BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
    ):  # fmt: skip
        """col_min[b, j] = max(min_i ||q[b, i] - k[j]||^2, 0) for the keys of this program's block."""
        batch = tl.program_id(1).to(tl.int64)  # int64 offsets: B * Nq * d can pass 2**31
        rk = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
        q_ptr += batch * n_q * dim
        q_norm_ptr += batch * n_q
        best = tl.full((BLOCK_K,), float("inf"), tl.float32)
        for q0 in range(0, n_q, BLOCK_Q):
            rq = q0 + tl.arange(0, BLOCK_Q)
            dot = _distance_tile(q_ptr, k_ptr, rq, rk, n_q, n_k, dim, BLOCK_Q, BLOCK_K, BLOCK_D, PRECISION)
            q_norm = tl.load(q_norm_ptr + rq, rq < n_q, float("inf"))  # padded queries never win
            best = tl.minimum(best, tl.min(q_norm[:, None] - 2.0 * dot, axis=0))
        k_norm = tl.load(k_norm_ptr + rk, rk < n_k, 0.0)
        tl.store(col_min_ptr + batch * n_k + rk, tl.maximum(best + k_norm, 0.0), rk < n_k)

    @triton.jit
    def _argmin_kernel(
        q_ptr, q_norm_ptr, k_ptr, k_norm_ptr, weight_ptr, index_ptr, n_q, n_k, dim,
        BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
    ):  # fmt: skip
        """index[b, i] = argmin_j weight[b, j] ||q[b, i] - k[j]||^2 (first j on ties)."""
        batch = tl.program_id(1).to(tl.int64)
        rq = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
        q_ptr += batch * n_q * dim
        q_norm = tl.load(q_norm_ptr + batch * n_q + rq, rq < n_q, 0.0)
        best = tl.full((BLOCK_Q,), float("inf"), tl.float32)
        best_index = tl.zeros((BLOCK_Q,), tl.int64)
        for k0 in range(0, n_k, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            dot = _distance_tile(q_ptr, k_ptr, rq, rk, n_q, n_k, dim, BLOCK_Q, BLOCK_K, BLOCK_D, PRECISION)
            k_norm = tl.load(k_norm_ptr + rk, rk < n_k, 0.0)
            weight = tl.load(weight_ptr + batch * n_k + rk, rk < n_k, 0.0)
            score = (q_norm[:, None] - 2.0 * dot + k_norm[None, :]) * weight[None, :]
            score = tl.where(rk[None, :] < n_k, score, float("inf"))  # padded keys never win
            value, index = tl.min(score, axis=1, return_indices=True, return_indices_tie_break_left=True)
            better = value < best
            best = tl.where(better, value, best)
            best_index = tl.where(better, index.to(tl.int64) + k0, best_index)
        tl.store(index_ptr + batch * n_q + rq, best_index, rq < n_q)


#: Whether the kernels were built for Triton's interpreter (``TRITON_INTERPRET=1`` when Triton was imported).
INTERPRETED = triton is not None and not isinstance(_argmin_kernel, triton.runtime.JITFunction)


def check_device(device: torch.device) -> None:
    """Raise unless Triton >= 3.0 is installed and can run on ``device``: CUDA, or the CPU in the
    interpreter."""
    if triton is None or int(triton.__version__.split(".")[0]) < 3:
        found = "none" if triton is None else triton.__version__
        raise ImportError(
            f"search='triton' needs triton >= 3.0 (in CUDA builds of PyTorch >= 2.4), found {found}"
        )
    if device.type != "cuda" and not INTERPRETED:
        raise ValueError(
            f"search='triton' runs on CUDA, got device {device} (the CPU only in Triton's interpreter, "
            "TRITON_INTERPRET=1, for tests); use search='shifts' or 'auto' on the CPU"
        )


def nearest_neighbours_triton(
    queries: torch.Tensor, keys: torch.Tensor, alpha: float, input_precision: str = "ieee"
) -> torch.Tensor:
    """Exact completeness-normalised NN in two fused kernels: queries (B,Nq,d), keys (Nk,d) -> (B,Nq) long.

    The same answer as :func:`saliency.matmul_nn.nearest_neighbours_naive` up to float32 rounding on
    near-ties, with no distance matrix in memory (only (B,Nk) column minima). Computes in float32. CUDA
    tensors, or CPU tensors in Triton's interpreter (``TRITON_INTERPRET=1``; slow: tests only).
    """
    if input_precision not in CONFIGS:
        raise ValueError(f"input_precision must be one of {tuple(CONFIGS)}, got {input_precision!r}")
    if queries.ndim != 3 or keys.ndim != 2 or queries.shape[-1] != keys.shape[-1]:
        raise ValueError(
            f"queries must be (B,Nq,d) and keys (Nk,d) with the same d, got {tuple(queries.shape)} "
            f"and {tuple(keys.shape)}"
        )
    check_device(queries.device)
    if keys.device != queries.device:
        raise ValueError(f"queries and keys must be on one device, got {queries.device} and {keys.device}")
    if max(queries.shape[1], keys.shape[0]) * keys.shape[1] >= 2**31:
        raise ValueError(
            f"{max(queries.shape[1], keys.shape[0])} patches of {keys.shape[1]} values pass the Triton "
            "search's int32 offsets; use search='matmul' for images this large"
        )
    queries = queries.float().contiguous()
    keys = keys.float().contiguous()
    batch, n_q, dim = queries.shape
    n_k = keys.shape[0]
    q_norm = queries.pow(2).sum(-1)  # (B,Nq)
    k_norm = keys.pow(2).sum(-1)  # (Nk,)
    col_min = torch.empty((batch, n_k), dtype=torch.float32, device=queries.device)
    index = torch.empty((batch, n_q), dtype=torch.long, device=queries.device)

    config = dict(CONFIGS[input_precision], PRECISION=input_precision)
    if INTERPRETED:
        del config["num_warps"]
    else:
        config["num_stages"] = NUM_STAGES
    _column_min_kernel[(triton.cdiv(n_k, config["BLOCK_K"]), batch)](
        queries, q_norm, keys, k_norm, col_min, n_q, n_k, dim, **config
    )
    weight = 1.0 / col_min.add_(alpha * dim)
    _argmin_kernel[(triton.cdiv(n_q, config["BLOCK_Q"]), batch)](
        queries, q_norm, keys, k_norm, weight, index, n_q, n_k, dim, **config
    )
    return index
