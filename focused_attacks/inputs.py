"""Checks of what the attacks and searches are given: the labels ``y``, checked once (class indices or
one-hot rows, as ART's ``check_and_transform_label_format`` accepts them, and nothing else), the norm,
and the numeric parameters."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from art.config import ART_NUMPY_DTYPE

from saliency.base import is_int, is_real

#: What ``y`` may be: class indices (N,) or one-hot rows (N,K) as a numpy array, tensor or nested list.
Labels = np.ndarray | torch.Tensor | Sequence


def _as_array(y: object, expected: str) -> np.ndarray:
    """``y`` (numpy array, list, tuple or torch tensor) as a numeric numpy array."""
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    if not isinstance(y, (np.ndarray, list, tuple)):
        kind = type(y).__name__
        raise TypeError(f"y must be a numpy array, list or torch tensor of {expected}, got {kind}")
    try:
        labels = np.asarray(y)
    except ValueError as err:  # a ragged list
        raise ValueError(f"y must be {expected}: {err}") from None
    if labels.dtype.kind not in "biuf":
        raise TypeError(f"y must be {expected} of a numeric dtype, got dtype {labels.dtype}")
    return labels


def check_labels(y: object, n: int, nb_classes: int) -> np.ndarray:
    """Validate labels for a batch of ``n`` images and return them one-hot.

    Args:
        y (np.ndarray, list, tuple or torch.Tensor): class indices of shape (n,) or (n, 1) (integers, or
            floats with integer values) in [0, nb_classes), or one-hot rows (n, nb_classes) holding a
            single 1 each and 0 elsewhere (bool rows too).
        n (int): the number of images.
        nb_classes (int): the estimator's number of classes.

    Returns:
        np.ndarray: one-hot labels (n, nb_classes), float32.

    Raises:
        TypeError: ``y`` is not an array-like of numbers, or holds bool class indices.
        ValueError: wrong shape or length, NaN or infinite values, indices that are not integers or lie
            outside [0, nb_classes), rows that are not one-hot.
    """
    expected = f"class indices (N,) = ({n},) or one-hot labels (N, nb_classes) = ({n}, {nb_classes})"
    labels = _as_array(y, expected)
    if labels.ndim == 2 and labels.shape[1] == 1:  # ART's (N, 1) index form
        labels = labels[:, 0]
    if labels.ndim not in (1, 2) or len(labels) != n or labels.ndim == 2 and labels.shape[1] != nb_classes:
        raise ValueError(f"y must be {expected}, got shape {labels.shape}")
    if not np.isfinite(labels).all():
        raise ValueError("y contains NaN or infinite values")
    if labels.ndim == 2:
        bad = ~np.isin(labels, (0, 1)).all(axis=1) | (labels.sum(axis=1) != 1)
        if bad.any():
            raise ValueError(
                f"y: one-hot labels (N, {nb_classes}) must hold one 1 per row and 0 elsewhere, got rows "
                f"{np.flatnonzero(bad)[:5].tolist()} that do not"
            )
        return labels.astype(ART_NUMPY_DTYPE)
    if labels.dtype == bool:
        raise TypeError(f"y must be {expected}, got bool class indices")
    bad = (labels != np.round(labels)) | (labels < 0) | (labels >= nb_classes)
    if bad.any():
        raise ValueError(
            f"y must hold integer class indices in [0, {nb_classes}), got {labels[bad][:5].tolist()}"
        )
    return np.eye(nb_classes, dtype=ART_NUMPY_DTYPE)[labels.astype(np.int64)]


def parse_norm(norm: int | float | str) -> float:
    """``"inf"``/``np.inf``/p >= 1 -> float; anything else -> ValueError."""
    try:
        value = np.inf if norm == "inf" else float(norm)
    except (TypeError, ValueError):
        raise ValueError(f'norm must be "inf", np.inf or a real p >= 1, got {norm!r}') from None
    if not value >= 1:
        raise ValueError(f'norm must be "inf", np.inf or a real p >= 1, got {norm!r}')
    return value


def check_number(name: str, value: object, allow_zero: bool) -> None:
    """Raise ValueError naming ``name`` unless ``value`` is a finite number >= 0 (> 0 if not allow_zero)."""
    if not is_real(value) or not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")


def check_count(name: str, value: object) -> None:
    """Raise ValueError naming ``name`` unless ``value`` is an int >= 0."""
    if not is_int(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
