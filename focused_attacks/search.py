"""Per-image searches for the smallest focus area and the smallest budget eps that still fool the model.

Both drive an attack through the protected API of :class:`~focused_attacks.base.FocusedEvasionAttack`
(``_prepare``, ``_attacked_maps``, ``_resolve_mask``, ``_perturb_at``, ``_fooled``); how they search, and
their floors, is described in ``docs/algorithms.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from focused_attacks.base import FocusedEvasionAttack
from focused_attacks.fgsm import FocusedFGSM
from focused_attacks.inputs import Labels, check_count
from focused_attacks.masks import keep_outside, maps_to_mask
from focused_attacks.pgd import FocusedPGD


@dataclass
class SearchResult:
    """Outcome of a per-image search.

    Attributes:
        area (np.ndarray): (N,) the smallest area (minimal_area) or eps (minimal_eps) that succeeded, nan
            where none did.
        x_adv (np.ndarray): (N,C,H,W) the adversarial example found at that value (x itself where none
            succeeded).
        success (np.ndarray): (N,) bool, whether any tried value fooled the model.
        mask (np.ndarray): the mask each image was attacked with, float32 (N,1,H,W) or x's shape, never
            None: all ones for an unfocused attack; for minimal_area the top-k mask of the found area (of
            the largest area where none succeeded).
    """

    area: np.ndarray
    x_adv: np.ndarray
    success: np.ndarray
    mask: np.ndarray

    @property
    def eps(self) -> np.ndarray:
        """Alias of ``area`` for :func:`minimal_eps` results."""
        return self.area


def _check_attack(attack: object) -> None:
    if not isinstance(attack, FocusedEvasionAttack):
        raise TypeError(
            f"attack must be a FocusedFGSM, FocusedPGD or FocusedCarliniL2, got {type(attack).__name__}"
        )


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

    Args:
        attack: a focused attack with ``focus="topk"``.
        x: images (N,C,H,W); y: labels or targets as ``generate`` takes them.
        areas: the fractions of the image to try, each in (0, 1].
        maps: saliency maps (N,H,W), or None to compute them with ``attack.saliency``.

    Returns:
        A :class:`SearchResult` whose ``area`` is the smallest area that succeeded per image.
    """
    _check_attack(attack)
    x32, labels = attack._prepare(x, y)
    if attack.focus != "topk":
        raise ValueError(f"focus: minimal_area needs an attack with focus='topk', got {attack.focus!r}")
    areas = sorted(float(a) for a in areas)
    if not areas or not all(0.0 < a <= 1.0 for a in areas):
        raise ValueError(f"areas must be a non-empty list of fractions in (0, 1], got {areas}")
    if maps is None:
        maps = attack._attacked_maps(x32, labels)
    maps = np.asarray(maps, dtype=np.float32)
    if maps.shape != (x.shape[0], *x.shape[2:]):
        raise ValueError(f"maps must have shape (N,H,W) = {(x.shape[0], *x.shape[2:])}, got {maps.shape}")

    found = np.full(len(x), np.nan)
    x_adv = x32.copy()
    tried = np.zeros((len(x), 1, *x.shape[2:]), np.float32)  # the last mask each image was attacked with
    todo = np.arange(len(x))
    for area in tqdm(areas, desc="minimal area", leave=False, disable=not getattr(attack, "verbose", False)):
        if todo.size == 0:
            break
        mask = maps_to_mask(maps[todo], "topk", area)
        adv = attack._perturb_at(x32[todo], labels[todo], None, mask)
        hit = attack._fooled(adv, labels[todo])
        found[todo[hit]] = area
        x_adv[todo[hit]] = adv[hit]
        tried[todo] = mask
        todo = todo[~hit]
    success = ~np.isnan(found)
    used = tried * success[:, None, None, None]  # the mask behind each x_adv (0: x itself)
    return SearchResult(area=found, x_adv=keep_outside(x, x_adv, used), success=success, mask=tried)


#: Spaces :func:`minimal_eps` can bisect eps in: (to the space, back to eps).
_EPS_SCALES: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {
    "linear": (lambda v: v, lambda v: v),
    "log": (np.log, np.exp),
}


def _check_bounds(low: float, high: float, steps: int, scale: str) -> None:
    """Validate :func:`minimal_eps`'s bracket and number of steps (``high`` already defaulted)."""
    if not 0.0 <= low < high or not np.isfinite(high):
        raise ValueError(f"low and high must satisfy 0 <= low < high < inf, got low={low}, high={high}")
    if scale == "log" and low <= 0.0:
        raise ValueError(f"low must be > 0 with scale='log', got low={low}")
    check_count("steps", steps)


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
    fixed (resolved once, as in ``generate``; also in ``attack.last_mask_``); PGD's eps_step scales with
    eps.

    The bisection assumes that success is monotone in eps; otherwise the result is *an* eps that succeeds,
    not the smallest. Images that are fooled without an attack (e.g. already misclassified w.r.t. ``y``)
    are first tried at ``low``. With ``num_random_init > 0`` every run draws new noise from NumPy's global
    generator: seed it (``np.random.seed``) for reproducible results.

    Args:
        attack: a FocusedFGSM or FocusedPGD.
        x: (N,C,H,W) images; y: (N,) or one-hot (N,K) labels (untargeted; default the clean prediction)
            or targets (targeted). mask / maps (N,H,W): as in ``generate``.
        low: lower end, ``0 <= low < high`` (``0 < low`` with ``scale="log"``).
        high: upper end, tried first.
        steps: number of halvings (>= 0) after the run at ``high``.
        scale: ``"linear"``: each step halves ``high - low`` (absolute resolution
            ``(high - low) / 2 ** steps``); ``"log"``: each step halves ``log(high) - log(low)``, i.e. the
            ratio, so the found eps is within a factor ``(high / low) ** (2 ** -steps)`` of the threshold
            whatever its size.

    Returns:
        A :class:`SearchResult` whose ``eps`` (N,) is the smallest eps found to succeed (``low`` where it
        does, nan where ``high`` fails), ``x_adv`` (N,C,H,W) the adversarial example at that eps (x where
        none) and ``mask`` the focus mask (all ones when unfocused).
    """
    if not isinstance(attack, (FocusedFGSM, FocusedPGD)):
        raise TypeError(f"attack must be a FocusedFGSM or FocusedPGD, got {type(attack).__name__}")
    if scale not in _EPS_SCALES:
        raise ValueError(f"scale must be one of {', '.join(map(repr, _EPS_SCALES))}, got {scale!r}")
    x32, labels = attack._prepare(x, y)
    high = float(attack.eps if high is None else high)
    _check_bounds(low, high, steps, scale)
    resolved = attack._resolve_mask(x32, labels, mask, maps)
    to_scale, from_scale = _EPS_SCALES[scale]

    def run(bound: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Attack the images ``rows`` at eps = from_scale(bound) -> (x_adv, success)."""
        rows_mask = None if resolved is None else resolved[rows]
        adv = attack._perturb_at(x32[rows], labels[rows], from_scale(bound), rows_mask)
        return adv, attack._fooled(adv, labels[rows])

    # The bounds live in the search space (eps or log eps); eps = from_scale(bound).
    n = len(x)
    upper, lower = np.full(n, to_scale(high)), np.full(n, to_scale(float(low)))
    x_adv, ok = x32.copy(), np.zeros(n, dtype=bool)
    rows = _first_runs(run, np.flatnonzero(attack._fooled(x32, labels)), lower, upper, x_adv, ok)
    _bisect(run, lower, upper, rows, x_adv, steps, getattr(attack, "verbose", False))
    support = np.ones_like(attack.last_mask_) if attack.focus == "penalty" else attack.last_mask_
    x_adv = keep_outside(x, x_adv, support * ok[:, None, None, None])
    found = np.where(ok, from_scale(upper), np.nan)
    return SearchResult(area=found, x_adv=x_adv, success=ok, mask=attack.last_mask_)


def _first_runs(
    run: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    fooled: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    x_adv: np.ndarray,
    ok: np.ndarray,
) -> np.ndarray:
    """The runs before the bisection, in place: the images ``fooled`` without an attack at ``lower`` (where
    they succeed, upper = lower: nothing to bisect), the others at ``upper``.

    Args:
        run: ``run(bound, rows) -> (x_adv, success)`` for the images ``rows`` at the bounds ``bound``.
        fooled: indices of the images fooled without an attack.
        lower, upper: (N,) bounds per image; x_adv: (N,C,H,W) and ok: (N,) bool, set where a run succeeds.

    Returns:
        The indices of the images to bisect: those that succeed at ``upper`` only.
    """
    if fooled.size:
        adv, hit = run(lower[fooled], fooled)
        upper[fooled[hit]] = lower[fooled[hit]]
        x_adv[fooled[hit]], ok[fooled[hit]] = adv[hit], True
    rows = np.flatnonzero(~ok)
    if rows.size:
        adv, hit = run(upper[rows], rows)
        x_adv[rows[hit]], ok[rows[hit]] = adv[hit], True
        rows = rows[hit]
    return rows


def _bisect(
    run: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    lower: np.ndarray,
    upper: np.ndarray,
    rows: np.ndarray,
    x_adv: np.ndarray,
    steps: int,
    verbose: bool,
) -> None:
    """Halve the brackets [lower, upper] of the images ``rows`` ``steps`` times, in place.

    Args:
        run: ``run(bound, rows) -> (x_adv, success)`` for the images ``rows`` at the bounds ``bound``.
        lower, upper: (N,) bounds per image; upper always succeeds, lower is raised where the middle fails.
        rows: the images to bisect; x_adv: (N,C,H,W), updated where the middle succeeds.
        steps: number of halvings; verbose: show a progress bar.
    """
    for _ in tqdm(range(steps), desc="minimal eps", leave=False, disable=not verbose):
        if rows.size == 0:
            break
        middle = (lower[rows] + upper[rows]) / 2
        adv, hit = run(middle, rows)
        upper[rows[hit]] = middle[hit]
        x_adv[rows[hit]] = adv[hit]
        lower[rows[~hit]] = middle[~hit]
