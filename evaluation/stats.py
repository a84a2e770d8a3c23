"""Paired per-image comparisons of two attacks and percentile-bootstrap confidence intervals.

Both reports (:mod:`evaluation.report`, :mod:`evaluation.paper_report`) and their paired plots take their
pairs from :func:`paired_norms`, so a plotted point is exactly a pair the table counts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

#: Resamples drawn at once by :func:`bootstrap_ci` are limited to this many values (memory stays bounded).
CHUNK_VALUES = 2**22

Group = Mapping[int, Mapping[str, Any]]


def paired_norms(focused: Group, reference: Group, norm: str = "l2") -> tuple[np.ndarray, ...]:
    """The images on which both attacks succeeded (with a positive reference norm) and their two norms.

    Args:
        focused: records of the focused attack by image index (``success`` and ``norm`` fields).
        reference: records of the reference attack (the unfocused or control attack) by image index.
        norm: the record field compared (``"l2"``, ``"linf"``, ...).

    Returns:
        ``(images, reference_norms, focused_norms)``: an int64 array of image indices in increasing order
        and two float64 arrays of the same length.
    """
    images = [
        i
        for i in sorted(set(focused) & set(reference))
        if focused[i]["success"] and reference[i]["success"] and float(reference[i][norm]) > 0
    ]
    return (
        np.array(images, dtype=np.int64),
        np.array([float(reference[i][norm]) for i in images], dtype=np.float64),
        np.array([float(focused[i][norm]) for i in images], dtype=np.float64),
    )


def paired_reductions(focused: Group, reference: Group, norm: str = "l2") -> np.ndarray:
    """Per-image reductions ``1 - norm_focused / norm_reference`` (fractions) over :func:`paired_norms`.

    Args:
        focused: records of the focused attack by image index.
        reference: records of the reference attack by image index.
        norm: the record field compared.

    Returns:
        A float64 array, one reduction per pair (positive: the focused perturbation is smaller).
    """
    _, ref, foc = paired_norms(focused, reference, norm)
    return 1.0 - foc / ref


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    statistic: Callable[..., np.ndarray],
    n_resamples: int = 10_000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float] | None:
    """Percentile-bootstrap confidence interval of ``statistic(values)``, resampling the values.

    Resample ``b`` takes ``len(values)`` indices with replacement; all resamples come from one
    ``numpy.random.default_rng(seed)`` stream in order (drawn a chunk of rows at a time, which gives the
    same indices as drawing them one resample at a time), and ``statistic`` is evaluated on every resample
    at once along ``axis=1``. The interval is the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of
    the resampled statistics (numpy's default linear interpolation). With a fixed seed the interval is
    reproducible.

    Args:
        values: one finite value per unit resampled (here: per image, e.g. its paired reduction).
        statistic: a numpy reduction taking ``axis`` (``np.median``, ``np.mean``).
        n_resamples: number of bootstrap resamples.
        seed: seed of the random generator.
        level: confidence level in (0, 1).

    Returns:
        ``(low, high)``, or None with fewer than 2 values (no spread to resample).

    Raises:
        ValueError: on non-finite values, a level outside (0, 1) or ``n_resamples < 1``.
    """
    data = np.asarray(values, dtype=np.float64).ravel()
    if not 0 < level < 1 or n_resamples < 1:
        raise ValueError(f"need 0 < level < 1 and n_resamples >= 1, got {level} and {n_resamples}")
    if not np.isfinite(data).all():
        raise ValueError("bootstrap_ci: values must be finite")
    n = len(data)
    if n < 2:
        return None
    rng = np.random.default_rng(seed)
    rows = max(1, CHUNK_VALUES // n)
    stats = np.concatenate(
        [
            statistic(data[rng.integers(0, n, size=(min(rows, n_resamples - start), n))], axis=1)
            for start in range(0, n_resamples, rows)
        ]
    )
    low, high = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)
