"""The configurations of the attack experiments: everything that determines their records.

:class:`ExperimentConfig` (the attack grid, :func:`evaluation.experiment.run_experiment`) and
:class:`PaperConfig` (the CAMERAS paper protocol, :func:`evaluation.paper_protocol.run_paper_protocol`).
Their field defaults are the commands' defaults (:func:`defaults`); importing this module does not import
torch.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

import numpy as np

from evaluation.attacks import ATTACKS, DEFAULT_ATTACK_PARAMS, check_attacks
from evaluation.errors import InputError
from evaluation.focusers import (
    GPNN_CAM_SETTINGS,
    GPNN_CAM_VARIATIONS,
    GRID_FOCUSERS,
    PAPER_FOCUSERS,
    UNFOCUSED,
    check_names,
)

#: The CAMERAS paper protocol's name (``evaluate --protocol``).
PROTOCOL = "cameras-paper"
#: The paper protocol's focusers whose maps and perturbations the per-image figure shows, and the
#: run folder's sub-folder of their arrays.
FIGURE_FOCUSERS = (UNFOCUSED, "gradcam", "cameras", "gpnn-cam")
ARRAYS_DIR = "arrays"


def defaults(cls: type) -> dict[str, Any]:
    """The default of every field of the dataclass ``cls`` (its factory's value where it has one)."""
    return {
        f.name: f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        for f in fields(cls)
        if f.default is not MISSING or f.default_factory is not MISSING
    }


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that determines an experiment's records (the device does not)."""

    model: str = "digits-cnn"
    weights: str | None = None
    data: str = "digits"
    labels: str | None = None
    n: int = 200
    size: int | None = None
    attacks: tuple[str, ...] = ATTACKS
    focusers: tuple[str, ...] = GRID_FOCUSERS
    areas: tuple[float, ...] = (0.05, 0.1, 0.2)
    layers: tuple[str, ...] | None = None
    batch_size: int = 50
    seed: int = 0
    gpnn_variations: int = GPNN_CAM_VARIATIONS
    gpnn_params: dict[str, Any] = field(default_factory=lambda: dict(GPNN_CAM_SETTINGS))
    attack_params: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "attacks", tuple(self.attacks))
        object.__setattr__(self, "focusers", tuple(self.focusers))
        object.__setattr__(self, "areas", tuple(float(a) for a in self.areas))
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(self.layers))
        params = {
            a: {**DEFAULT_ATTACK_PARAMS.get(a, {}), **self.attack_params.get(a, {})} for a in self.attacks
        }
        object.__setattr__(self, "attack_params", params)
        self.validate()

    def validate(self) -> None:
        """Raise :class:`~evaluation.errors.InputError` naming the first invalid field."""
        _check_counts(self, ("n", "batch_size"))
        check_attacks(self.attacks)
        _check_focusers(self.focusers, controls=False)
        if len(set(self.areas)) != len(self.areas):
            raise InputError(f"areas must not repeat a value, got {list(self.areas)}")
        bad = [a for a in self.areas if not (0.0 < a < 1.0)]
        if bad:
            raise InputError(f"areas must lie in (0, 1), got {bad[0]}")
        if self.focusers and not self.areas:
            raise InputError("areas: give at least one area when focusers are given")
        if self.gpnn_variations < 2:
            raise InputError(f"gpnn_variations must be >= 2, got {self.gpnn_variations}")
        for attack, params in self.attack_params.items():
            if "eps_min" in params and not 0 < params["eps_min"] < params["eps_max"]:
                raise InputError(
                    f"attack_params: {attack}'s eps_min must lie in (0, eps_max = {params['eps_max']}), "
                    f"got {params['eps_min']}"
                )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExperimentConfig:
        """The config of :meth:`to_dict`'s ``data``; unknown fields are refused."""
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise InputError(f"config: unknown fields {sorted(unknown)}")
        return cls(**data)

    def jobs(self) -> list[tuple[str, str, float]]:
        """The (attack, focuser, area) cells per image: each attack unfocused, then per focuser and area."""
        cells = []
        for attack in self.attacks:
            cells.append((attack, UNFOCUSED, 1.0))
            cells.extend((attack, f, a) for f in self.focusers for a in self.areas)
        return cells


@dataclass(frozen=True)
class PaperConfig:
    """Everything that determines a protocol run's records (the device does not).

    The attack: L-inf PGD (sign steps of ``eps_step``, as Madry et al.) bounded only by the pixel range
    (``eps`` = 1), ``max_iter`` steps. The plain attack stops at ``confidence``; a penalised one keeps
    it (:class:`focused_attacks.FocusedPGD` ``stop_confidence``) and returns its smallest-L2 iterate at
    or above it. ``norm="2"`` runs L2 steps instead. docs/cameras_protocol.md says why these values.
    """

    model: str = "efficientnet-lite0"
    weights: str | None = None
    data: str = "photos"
    labels: str | None = None
    n: int = 1000
    size: int | None = None
    focusers: tuple[str, ...] = PAPER_FOCUSERS
    layers: tuple[str, ...] | None = None
    batch_size: int = 8
    seed: int = 0
    beta: float = 50.0
    confidence: float = 0.9999
    norm: str = "inf"
    eps: float = 1.0
    eps_step: float = 0.5 / 255
    max_iter: int = 100
    gpnn_variations: int = GPNN_CAM_VARIATIONS
    gpnn_params: dict[str, Any] = field(default_factory=lambda: dict(GPNN_CAM_SETTINGS))
    n_figures: int = 12
    protocol: str = PROTOCOL

    def __post_init__(self) -> None:
        object.__setattr__(self, "focusers", tuple(self.focusers))
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(self.layers))
        self.validate()

    def validate(self) -> None:
        """Raise :class:`~evaluation.errors.InputError` naming the first invalid field."""
        from saliency.base import is_int, is_real

        _check_counts(self, ("n", "batch_size", "max_iter", "gpnn_variations"))
        if not is_int(self.n_figures) or self.n_figures < 0:
            raise InputError(f"n_figures must be an integer >= 0, got {self.n_figures!r}")
        if self.protocol != PROTOCOL:
            raise InputError(f"protocol must be {PROTOCOL!r}, got {self.protocol!r}")
        _check_focusers(self.focusers, controls=True)
        for name in ("beta", "eps", "eps_step"):
            value = getattr(self, name)
            if not is_real(value) or not np.isfinite(value) or value < 0 or (value == 0 and name != "beta"):
                raise InputError(f"{name} must be a finite number > 0 (beta >= 0), got {value!r}")
        if not is_real(self.confidence) or not 0 < self.confidence <= 1:
            raise InputError(f"confidence must be a probability in (0, 1], got {self.confidence!r}")
        if self.norm not in ("inf", "2"):
            raise InputError(f"norm must be 'inf' or '2', got {self.norm!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))


def _check_counts(config: Any, names: tuple[str, ...]) -> None:
    """Each of the fields ``names`` of ``config`` is an integer >= 1."""
    from saliency.base import is_int

    for name in names:
        value = getattr(config, name)
        if not is_int(value) or value < 1:
            raise InputError(f"{name} must be an integer >= 1, got {value!r}")


def _check_focusers(focusers: tuple[str, ...], controls: bool) -> None:
    """Distinct focuser names, without the unfocused attack (always run); may be empty."""
    if UNFOCUSED in focusers:
        raise InputError(f"focusers: {UNFOCUSED!r} is always run; do not list it")
    if focusers:
        check_names(focusers, "focusers", controls=controls)
