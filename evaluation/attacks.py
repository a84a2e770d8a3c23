"""The attack registry of the grid: each attack's name, default parameters, how it is built and run.

PGD and FGSM are L-inf attacks whose budget is searched per image (:func:`focused_attacks.minimal_eps`);
C&W L2 minimises L2 itself and runs once. Importing this module does not import torch or ART.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from evaluation.errors import InputError

#: Attack names of the grid.
ATTACKS = ("pgd", "fgsm", "cw")
#: The attacks whose L-inf budget is searched (``--eps-min``).
EPS_SEARCH_ATTACKS = ("pgd", "fgsm")
#: Attack hyper-parameters used unless a config overrides them (see ``report.md`` for the reasoning).
#: PGD and FGSM are L-inf attacks whose eps is searched per image (the smallest eps that succeeds, by
#: log-space bisection over ``[eps_min, eps_max]`` in ``search_steps`` steps: found within a factor
#: 1024 ** (2 ** -steps) of the threshold, 24 % for PGD, 2.7 % for FGSM); C&W L2 minimises L2 itself.
DEFAULT_ATTACK_PARAMS: dict[str, dict[str, Any]] = {
    "pgd": {"eps_min": 1 / 1024, "eps_max": 1.0, "search_steps": 5, "max_iter": 5, "step_ratio": 0.25},
    "fgsm": {"eps_min": 1 / 1024, "eps_max": 1.0, "search_steps": 8},
    "cw": {"max_iter": 10, "binary_search_steps": 3, "learning_rate": 0.1, "initial_const": 1.0},
}


def check_attacks(attacks: tuple[str, ...]) -> None:
    """Raise :class:`~evaluation.errors.InputError` unless ``attacks`` are distinct :data:`ATTACKS`."""
    if not attacks:
        raise InputError("attacks: give at least one attack")
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        raise InputError(f"attacks: unknown attack {unknown[0]!r}; choose from {', '.join(ATTACKS)}")
    if len(set(attacks)) != len(attacks):
        raise InputError("attacks must not repeat a name")


def build_attack(name: str, classifier: Any, area: float, params: dict[str, Any], batch_size: int) -> Any:
    """The attack ``name`` built with ``params`` (``area`` matters only with maps).

    Args:
        name: one of :data:`ATTACKS`.
        classifier: the ART classifier.
        area: the fraction of pixels the focus mask keeps.
        params: the attack's parameters (:data:`DEFAULT_ATTACK_PARAMS` keys).
        batch_size: images per batch.

    Returns:
        The :mod:`focused_attacks` attack.
    """
    import focused_attacks as fa

    if name == "pgd":
        eps = float(params["eps_max"])
        return fa.FocusedPGD(
            classifier,
            area=area,
            eps=eps,
            eps_step=eps * float(params["step_ratio"]),
            max_iter=int(params["max_iter"]),
            norm=np.inf,
            batch_size=batch_size,
            verbose=False,
        )
    if name == "fgsm":
        return fa.FocusedFGSM(
            classifier, area=area, eps=float(params["eps_max"]), norm=np.inf, batch_size=batch_size
        )
    if name == "cw":
        return fa.FocusedCarliniL2(
            classifier,
            area=area,
            confidence=0.0,
            learning_rate=float(params["learning_rate"]),
            binary_search_steps=int(params["binary_search_steps"]),
            max_iter=int(params["max_iter"]),
            initial_const=float(params["initial_const"]),
            batch_size=batch_size,
            verbose=False,
        )
    raise InputError(f"attack: unknown attack {name!r}; choose from {', '.join(ATTACKS)}")


def run_attack(
    name: str,
    classifier: Any,
    x: np.ndarray,
    y: np.ndarray,
    maps: np.ndarray | None,
    area: float,
    params: dict[str, Any],
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Attack ``x`` (labels ``y``) focused by the top-``area`` mask of ``maps`` (None: whole image).

    FGSM and PGD: the smallest L-inf budget that fools the model, by a per-image bisection of eps in
    **log** space over ``[eps_min, eps_max]`` in ``search_steps`` steps
    (:func:`focused_attacks.minimal_eps` with ``scale="log"``): each step halves the *ratio*
    ``high / low``, so the found eps is within a factor ``(eps_max / eps_min) ** (2 ** -steps)`` above the
    smallest succeeding one on the grid, whatever its size. A linear bisection's absolute resolution
    ``eps_max / 2 ** steps`` would be coarse for the unfocused attack (small eps) and fine for the
    focused ones (large eps), biasing the reduction. C&W L2: one run (it minimises L2 itself).

    Returns:
        ``(x_adv, mask, eps)``: the (N,1,H,W) mask the attack used (None: whole image) and the found eps
        per image (NaN where none succeeded, x_adv = x there; None for C&W).
    """
    from focused_attacks import minimal_eps

    attack = build_attack(name, classifier, area, params, batch_size)
    if name == "cw":
        x_adv, eps = attack.generate(x, y, maps=maps), None
        mask = attack.last_mask_
    else:
        low, high, steps = float(params["eps_min"]), float(params["eps_max"]), int(params["search_steps"])
        found = minimal_eps(attack, x, y, low=low, high=high, steps=steps, maps=maps, scale="log")
        x_adv, eps = found.x_adv, found.eps
        # Unfocused: None (the whole image), as the search's mask is all ones there.
        mask = None if maps is None else found.mask
    mask = None if mask is None else np.asarray(mask, dtype=np.float32).reshape(len(x), 1, *x.shape[-2:])
    return np.asarray(x_adv, dtype=np.float32), mask, eps
