"""Per-image searches for the smallest focus area and the smallest budget eps that still fool the model."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from art.config import ART_NUMPY_DTYPE
from tqdm.auto import tqdm

from focused_attacks.base import FocusedEvasionAttack, keep_outside, maps_to_mask, success_mask
from focused_attacks.fgsm import FocusedFGSM
from focused_attacks.inputs import Labels
from focused_attacks.pgd import FocusedPGD


@dataclass
class SearchResult:
    """Outcome of a per-image search.

    :ivar area: (N,) the smallest area (minimal_area) or eps (minimal_eps) that succeeded, nan where none did.
    :ivar x_adv: (N,C,H,W) the adversarial example found at that value (x itself where none succeeded).
    :ivar success: (N,) bool, whether any tried value fooled the model.
    """

    area: np.ndarray
    x_adv: np.ndarray
    success: np.ndarray

    @property
    def eps(self) -> np.ndarray:
        """Alias of ``area`` for :func:`minimal_eps` results."""
        return self.area


def _prepare(attack: FocusedEvasionAttack, x: np.ndarray, y: Labels | None) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(attack, FocusedEvasionAttack):
        raise TypeError(
            f"attack must be a FocusedFGSM, FocusedPGD or FocusedCarliniL2, got {type(attack).__name__}"
        )
    attack._check_x(x)
    x32 = x.astype(ART_NUMPY_DTYPE)
    return x32, attack._labels(x32, y)


def minimal_area(
    attack: FocusedEvasionAttack,
    x: np.ndarray,
    y: Labels | None = None,
    areas: Sequence[float] = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
    maps: np.ndarray | None = None,
) -> SearchResult:
    """For each image the smallest top-k ``area`` in ``areas`` at which ``attack`` succeeds.

    The saliency maps (``maps`` (N,H,W), else ``attack.saliency``) are computed once; areas are tried in
    increasing order, each only on the images not fooled yet. Success: prediction == y (targeted) or
    != y (untargeted; y defaults to the clean prediction).
    """
    x32, labels = _prepare(attack, x, y)
    if attack.focus != "topk":
        raise ValueError(f"focus: minimal_area needs an attack with focus='topk', got {attack.focus!r}")
    areas = sorted(float(a) for a in areas)
    if not areas or not all(0.0 < a <= 1.0 for a in areas):
        raise ValueError(f"areas must be a non-empty list of fractions in (0, 1], got {areas}")
    if maps is None:
        maps = attack.saliency_maps(x32, attack._attacked_classes(x32, labels))
    maps = np.asarray(maps, dtype=np.float32)
    if maps.shape != (x.shape[0], *x.shape[2:]):
        raise ValueError(f"maps must have shape (N,H,W) = {(x.shape[0], *x.shape[2:])}, got {maps.shape}")

    found = np.full(len(x), np.nan)
    x_adv = x32.copy()
    used = np.zeros((len(x), 1, *x.shape[2:]), ART_NUMPY_DTYPE)  # the mask behind each x_adv (0: x)
    todo = np.arange(len(x))
    for area in tqdm(areas, desc="minimal area", leave=False, disable=not getattr(attack, "verbose", False)):
        if todo.size == 0:
            break
        mask = maps_to_mask(maps[todo], "topk", area)
        adv = attack._attack(x32[todo], labels[todo], mask, None)
        hit = success_mask(attack.estimator, adv, labels[todo], attack.targeted, attack.batch_size)
        found[todo[hit]] = area
        x_adv[todo[hit]] = adv[hit]
        used[todo[hit]] = mask[hit]
        todo = todo[~hit]
    return SearchResult(area=found, x_adv=keep_outside(x, x_adv, used), success=~np.isnan(found))


#: Spaces :func:`minimal_eps` can bisect eps in: (to the space, back to eps).
_EPS_SCALES: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {
    "linear": (lambda v: v, lambda v: v),
    "log": (np.log, np.exp),
}


def minimal_eps(
    attack: FocusedFGSM | FocusedPGD,
    x: np.ndarray,
    y: Labels | None = None,
    low: float = 0.0,
    high: float | None = None,
    steps: int = 8,
    mask: np.ndarray | None = None,
    maps: np.ndarray | None = None,
    scale: str = "linear",
) -> SearchResult:
    """Per-image bisection of eps in [low, high] (``high`` defaults to ``attack.eps``) with the focus mask
    fixed (resolved once, as in ``generate``, and kept in ``attack.last_mask_``); PGD's eps_step scales
    with eps.

    The bisection assumes that success is monotone in eps; otherwise the result is *an* eps that succeeds,
    not the smallest. Images that are fooled without an attack (e.g. already misclassified w.r.t. ``y``)
    are first tried at ``low``. With ``num_random_init > 0`` every run draws new noise from NumPy's global
    generator: seed it (``np.random.seed``) for reproducible results.

    :param x: (N,C,H,W) images; ``y``: (N,) or one-hot (N,K) labels (untargeted; default the clean
        prediction) or targets (targeted). ``mask`` / ``maps`` (N,H,W) as in ``generate``.
    :param low: lower end, ``0 <= low < high`` (``0 < low`` with ``scale="log"``).
    :param steps: number of halvings (>= 0) after the run at ``high``.
    :param scale: ``"linear"``: each step halves ``high - low`` (absolute resolution
        ``(high - low) / 2 ** steps``); ``"log"``: each step halves ``log(high) - log(low)``, i.e. the
        ratio, so the found eps is within a factor ``(high / low) ** (2 ** -steps)`` of the threshold
        whatever its size.
    :return: :class:`SearchResult` whose ``eps`` (N,) is the smallest eps found to succeed (``low`` where
        it does, nan where ``high`` fails) and ``x_adv`` (N,C,H,W) the adversarial example at that eps (x
        where none).
    """
    if not isinstance(attack, (FocusedFGSM, FocusedPGD)):
        raise TypeError(f"attack must be a FocusedFGSM or FocusedPGD, got {type(attack).__name__}")
    if scale not in _EPS_SCALES:
        raise ValueError(f"scale must be one of {', '.join(map(repr, _EPS_SCALES))}, got {scale!r}")
    x32, labels = _prepare(attack, x, y)
    high = float(attack.eps if high is None else high)
    if not 0.0 <= low < high or not np.isfinite(high):
        raise ValueError(f"low and high must satisfy 0 <= low < high < inf, got low={low}, high={high}")
    if scale == "log" and low <= 0.0:
        raise ValueError(f"low must be > 0 with scale='log', got low={low}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    to_scale, from_scale = _EPS_SCALES[scale]
    resolved = attack._resolve_mask(x32, labels, mask, maps)
    attack.last_mask_ = (
        resolved if resolved is not None else np.ones((x.shape[0], 1, *x.shape[2:]), ART_NUMPY_DTYPE)
    )

    def run(eps: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sub_mask = None if resolved is None else resolved[rows]
        adv = attack._attack(x32[rows], labels[rows], sub_mask, eps.astype(ART_NUMPY_DTYPE))
        return adv, success_mask(attack.estimator, adv, labels[rows], attack.targeted, attack.batch_size)

    # The bounds live in the search space (eps or log eps); eps = from_scale(bound).
    n = len(x)
    upper = np.full(n, to_scale(high))
    lower = np.full(n, to_scale(float(low)))
    x_adv = x32.copy()
    ok = np.zeros(n, dtype=bool)
    fooled = np.flatnonzero(success_mask(attack.estimator, x32, labels, attack.targeted, attack.batch_size))
    if fooled.size:
        adv, hit = run(from_scale(lower[fooled]), fooled)
        upper[fooled[hit]] = lower[fooled[hit]]
        x_adv[fooled[hit]] = adv[hit]
        ok[fooled[hit]] = True
    rows = np.flatnonzero(~ok)
    if rows.size:
        adv, hit = run(from_scale(upper[rows]), rows)
        x_adv[rows[hit]] = adv[hit]
        ok[rows[hit]] = True
        rows = rows[hit]
    for _ in tqdm(
        range(steps), desc="minimal eps", leave=False, disable=not getattr(attack, "verbose", False)
    ):
        if rows.size == 0:
            break
        middle = (lower[rows] + upper[rows]) / 2
        adv, hit = run(from_scale(middle), rows)
        upper[rows[hit]] = middle[hit]
        x_adv[rows[hit]] = adv[hit]
        lower[rows[~hit]] = middle[~hit]
    found = np.where(ok, from_scale(upper), np.nan)
    support = attack.last_mask_ if attack.focus != "penalty" else np.ones_like(attack.last_mask_)
    x_adv = keep_outside(x, x_adv, support * ok[:, None, None, None])
    return SearchResult(area=found, x_adv=x_adv, success=ok)
