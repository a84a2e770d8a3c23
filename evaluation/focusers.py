"""The focusers: every saliency method and baseline the evaluation knows, by name, in one registry.

A focuser gives the maps whose top pixels an attack may change (and which the saliency metrics score).
:data:`FOCUSERS` maps each name to a :class:`Focuser`: the Grad-CAM family and CAMERAS
(``saliency.METHODS``), GPNN-CAM, the optional libraries' methods (``pip install 'focused-attacks[extra]'``),
the centre and random baselines and the CAMERAS paper protocol's controls (uniform, shuffled). Names are
checked here once (:func:`check_names`); the evaluation's GPNN-CAM settings are defined here once
(:data:`GPNN_CAM_VARIATIONS`, :data:`GPNN_CAM_GPNNS`).

Importing this module imports neither torch nor the saliency package (the CLI's ``--help`` reads it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from evaluation.errors import InputError

#: Focuser name of the unfocused (whole-image) attack; its records have area 1.0.
UNFOCUSED = "none"
#: The control: a uniformly random map per image, i.e. a random mask of the same area.
RANDOM = "random"
#: The centre baseline: a Gaussian bump at the image centre.
CENTRE = "centre"
#: Paper-protocol controls from the image's CAMERAS map: its mean everywhere, its values shuffled.
UNIFORM = "uniform"
SHUFFLED = "shuffled"
CONTROLS = (UNIFORM, SHUFFLED)
GPNN_CAM = "gpnn-cam"
#: The single-layer CAMs of ``saliency.METHODS``.
CAMS = ("cameras", "gradcam", "hirescam", "gradcam++", "layercam")

#: GPNN-CAM in the evaluation (every command, the configs and the metrics): variations per image.
GPNN_CAM_VARIATIONS = 32
#: The FAISS search shared by the evaluation's FAISS GPNNs.
_FAISS = {"search": "faiss", "pca_dims": 30, "index": "ivf", "candidates": 4, "early_stop": 0.05}
#: The GPNNs the evaluation runs GPNN-CAM with (``--gpnn``), as settings that replace some of GPNN-CAM's
#: preset (docs/gpnn.md): ``faiss-cells`` (the default), the method in full (10 levels for 224 px, 10
#: iterations at most) with the FAISS search (PCA-30, IVF with 1 probe), GPNN's completeness score over
#: every key of the probed cell, a flat index (the exhaustive search) for the key sets of fewer than 2,048
#: keys (the coarse levels: 40 px and below for 224 px images) and each variation leaving a level once at
#: most 5 % of its field changes: maps whose ranks match the exact search's up to seed noise on the four
#: photographs of docs/gpnn_results.md; ``faiss``, the same with 4 candidates of the probed cell re-ranked
#: by the completeness score instead and IVF at every level (the former default: 1.56x faster on the
#: 64 px digits, but not the exact search's map where the completeness term decides it); ``faiss-4probes``,
#: ``faiss`` probing 4 IVF cells (about 2x the time); ``exact``, the exact search, every iteration;
#: ``reduced``, a cut-down GPNN for quick checks (1 iteration per level, coarsest side 32, 5x5 patches).
GPNN_CAM_GPNNS: dict[str, dict[str, Any]] = {
    "faiss-cells": {**_FAISS, "candidates": "cells", "ivf_min_keys": 2048},
    "faiss": _FAISS,
    "faiss-4probes": {**_FAISS, "nprobe": 4},
    "exact": {},
    "reduced": {"iters": 1, "coarsest": 32, "patch_size": 5},
}
#: The default of ``--gpnn``, and its settings.
GPNN_CAM_GPNN = "faiss-cells"
GPNN_CAM_SETTINGS: dict[str, Any] = GPNN_CAM_GPNNS[GPNN_CAM_GPNN]
#: GPNN settings :func:`gpnn_generator` accepts.
GPNN_NAMES = (
    "patch_size",
    "scale_factor",
    "coarsest",
    "noise_sigma",
    "alpha",
    "iters",
    "init",
    "fold",
    "search",
    "pca_dims",
    "index",
    "nlist",
    "nprobe",
    "ivf_min_keys",
    "candidates",
    "pyramid",
    "upsample",
    "early_stop",
)

#: The attack grid's focusers (the demo's, and evaluate's default).
GRID_FOCUSERS = ("cameras", GPNN_CAM, "gradcam", RANDOM)
#: The CAMERAS paper protocol's focusers.
PAPER_FOCUSERS = (UNIFORM, SHUFFLED, "gradcam", "hirescam", "layercam", "cameras", GPNN_CAM)
#: The saliency-metric commands' default methods.
METRIC_METHODS = ("gradcam", "hirescam", "gradcam++", "layercam", "cameras", GPNN_CAM, CENTRE)


@dataclass(frozen=True)
class MapSettings:
    """How maps are made: target layers (single-layer methods use the first), seed, and GPNN-CAM's
    variations and GPNN settings (replacing GPNN-CAM's preset's; empty: the exact preset itself)."""

    layers: Sequence[str]
    seed: int = 0
    gpnn_variations: int = GPNN_CAM_VARIATIONS
    gpnn_params: dict[str, Any] = field(default_factory=lambda: dict(GPNN_CAM_SETTINGS))

    def maps(
        self, method: str, classifier: Any, x: np.ndarray, targets: np.ndarray, items: Sequence[int]
    ) -> np.ndarray:
        """Maps (N,H,W) of ``method`` for images ``x`` (their indices ``items``) and classes ``targets``."""
        params = (self.seed, self.gpnn_variations, self.gpnn_params)
        return compute_maps(
            method, classifier, x, targets, np.asarray(items).tolist(), list(self.layers), *params
        )

    def factory(self, method: str) -> Callable[[Any], Callable[..., Any]]:
        """model -> ``method`` on that model, as :func:`evaluation.saliency_metrics.sanity_check` takes it."""
        params = (self.seed, self.gpnn_variations, self.gpnn_params)
        return lambda model: saliency_method(method, model, list(self.layers), *params)


#: (model, settings) -> a saliency method ``maps = method(x, targets)``.
Factory = Callable[[Any, MapSettings], Callable[..., Any]]
#: (source maps or None, image ids, (H, W), seed) -> maps (N,H,W).
Derive = Callable[[Any, Sequence[int], tuple[int, int], int], np.ndarray]


@dataclass(frozen=True)
class Focuser:
    """A registry entry: ``build`` makes a saliency method on a model; a focuser without one ``derive``s
    its maps from the image ids (and from the maps of ``source``, computed first)."""

    build: Factory | None = None
    derive: Derive | None = None
    source: str | None = None
    extra: bool = False
    protocol_only: bool = False


def random_maps(image_ids: Sequence[int], shape: tuple[int, int], seed: int) -> np.ndarray:
    """Uniform random maps (N,H,W), one fixed per (seed, image id): top-k of it is a random mask."""
    return np.stack(
        [np.random.default_rng([seed, int(i)]).random(shape, dtype=np.float32) for i in image_ids]
    )


def uniform_maps(maps: np.ndarray) -> np.ndarray:
    """Constant maps (N,H,W): each equal to the mean of its map in ``maps``."""
    maps = np.asarray(maps, dtype=np.float32)
    return np.broadcast_to(maps.mean(axis=(1, 2), dtype=np.float64)[:, None, None], maps.shape).astype(
        np.float32
    )


def shuffled_maps(maps: np.ndarray, image_ids: Sequence[int], seed: int) -> np.ndarray:
    """Each map's values at random places: a permutation fixed per (seed, image id)."""
    maps = np.asarray(maps, dtype=np.float32)
    out = np.empty_like(maps)
    for j, image in enumerate(image_ids):
        order = np.random.default_rng([seed, int(image), 1]).permutation(maps[j].size)
        out[j] = maps[j].reshape(-1)[order].reshape(maps[j].shape)
    return out


def gpnn_generator(overrides: dict[str, Any] | None = None) -> Any:
    """GPNN-CAM's GPNN preset (``saliency.gpnn_cam.gpnn_cam_preset``) with some settings replaced, e.g.
    one of :data:`GPNN_CAM_GPNNS`; None/empty: the exact preset itself."""
    from saliency.gpnn_cam import gpnn_cam_preset

    unknown = set(overrides or {}) - set(GPNN_NAMES)
    if unknown:
        raise InputError(
            f"gpnn_params: unknown GPNN settings {sorted(unknown)}; valid: {', '.join(GPNN_NAMES)}"
        )
    return gpnn_cam_preset(**(overrides or {}))


def _cam(name: str) -> Factory:
    def build(model: Any, settings: MapSettings) -> Any:
        import saliency

        return saliency.METHODS[name](model, settings.layers[0])

    return build


def _gpnn_cam(model: Any, settings: MapSettings) -> Any:
    import saliency

    return saliency.GPNNCAM(
        model,
        list(settings.layers),
        n_variations=settings.gpnn_variations,
        batch_variations=min(10, settings.gpnn_variations),
        gpnn=gpnn_generator(settings.gpnn_params),
        seed=settings.seed,
        verbose=False,
    )


def _centre(model: Any, settings: MapSettings) -> Any:
    import torch

    from evaluation.saliency_metrics import centre_maps

    return lambda x, targets=None: torch.from_numpy(centre_maps(len(x), *x.shape[-2:]))


def _library(build: Callable[[Any, Any, Sequence[str]], Any]) -> Factory:
    def factory(model: Any, settings: MapSettings) -> Any:
        from saliency import external

        return build(external, model, settings.layers)

    return factory


#: Every focuser. The optional libraries' ones (``extra``), cheap but sensible settings on a CPU:
#:
#: * ``scorecam``: pytorch-grad-cam ScoreCAM on layers[0]; one forward pass per channel of the layer
#:   (96 on digits-cnn; 1280 on EfficientNet-Lite's ``bn2``: slow on a CPU), 32 masked images a pass.
#: * ``eigencam``: pytorch-grad-cam EigenCAM on layers[0]: one forward pass and an SVD, class-agnostic.
#: * ``fullgrad``: pytorch-grad-cam FullGrad: input and bias gradients of every Conv2d/BatchNorm2d with a
#:   bias (``layers`` are not used); one forward and backward pass.
#: * ``ablationcam``: pytorch-grad-cam AblationCAM on layers[0]; one forward pass per channel, 32 a batch.
#: * ``integrated-gradients``: captum IntegratedGradients from a black image (baseline 0), 32 Gauss-Legendre
#:   steps, 32 scaled images per forward/backward pass (bounded memory), channels reduced by abs-sum.
#: * ``vanilla-gradient``: captum Saliency (Simonyan et al.): |d score / d pixel|, maximum over channels.
#: * ``occlusion``: captum Occlusion with a black 16 x 16 window moved by 8 px at 224 px, both scaled to
#:   the image size (5 x 5, stride 2 at 64 px), 32 occluded images per forward pass, signed channel sum.
FOCUSERS: dict[str, Focuser] = {
    **{name: Focuser(build=_cam(name)) for name in CAMS},
    **{
        name: Focuser(build=_library(build), extra=True)
        for name, build in {
            "scorecam": lambda e, m, layers: e.build_pytorch_grad_cam("ScoreCAM", m, layers[:1], 32),
            "eigencam": lambda e, m, layers: e.build_pytorch_grad_cam("EigenCAM", m, layers[:1]),
            "fullgrad": lambda e, m, layers: e.build_pytorch_grad_cam("FullGrad", m, ()),
            "ablationcam": lambda e, m, layers: e.build_pytorch_grad_cam("AblationCAM", m, layers[:1], 32),
            "integrated-gradients": lambda e, m, layers: e.build_captum(
                "IntegratedGradients", m, n_steps=32, internal_batch_size=32
            ),
            "vanilla-gradient": lambda e, m, layers: e.build_captum("Saliency", m, reduce="max-abs"),
            "occlusion": lambda e, m, layers: e.occlusion(m, 16, 8, 224, perturbations_per_eval=32),
        }.items()
    },
    GPNN_CAM: Focuser(build=_gpnn_cam),
    RANDOM: Focuser(derive=lambda maps, ids, shape, seed: random_maps(ids, shape, seed)),
    CENTRE: Focuser(build=_centre),
    UNIFORM: Focuser(
        derive=lambda maps, ids, shape, seed: uniform_maps(maps), source="cameras", protocol_only=True
    ),
    SHUFFLED: Focuser(
        derive=lambda maps, ids, shape, seed: shuffled_maps(maps, ids, seed),
        source="cameras",
        protocol_only=True,
    ),
}
#: The optional libraries' focusers, for the help texts.
EXTRA_METHODS = tuple(name for name, entry in FOCUSERS.items() if entry.extra)


def saliency_names(controls: bool = False) -> tuple[str, ...]:
    """Every focuser name (the paper protocol's controls only when ``controls``)."""
    return tuple(name for name, entry in FOCUSERS.items() if controls or not entry.protocol_only)


def check_names(names: Sequence[str], option: str, controls: bool = False) -> None:
    """Raise :class:`~evaluation.errors.InputError` naming ``option`` unless ``names`` is a non-empty list of
    distinct focuser names (the paper protocol's controls allowed when ``controls``)."""
    valid = saliency_names(controls)
    if not names:
        raise InputError(f"{option}: give at least one method; choose from {', '.join(valid)}")
    if len(set(names)) != len(names):
        raise InputError(f"{option}: a method is listed twice ({', '.join(names)})")
    for name in names:
        if name not in valid:
            raise InputError(f"{option}: unknown method {name!r}; choose from {', '.join(valid)}")


def check_layers(classifier: Any, layers: Sequence[str]) -> None:
    """Raise :class:`~evaluation.errors.InputError` naming the first of ``layers`` that is not a module of
    the classifier's model."""
    from saliency.base import resolve_layer

    model = getattr(classifier, "model", classifier)
    for layer in layers:
        try:
            resolve_layer(model, layer)
        except ValueError as err:
            raise InputError(f"layers: {err}") from None


def saliency_method(
    name: str | object,
    model: Any,
    layers: Sequence[str],
    seed: int = 0,
    gpnn_variations: int = GPNN_CAM_VARIATIONS,
    gpnn_params: dict[str, Any] | None = None,
) -> Callable[..., Any]:
    """The saliency method ``name`` on ``model`` as a callable ``maps = method(x, targets)``.

    Args:
        name: a :data:`FOCUSERS` name with a ``build`` (random and the controls need image ids: see
            :func:`compute_maps`), or a pytorch-grad-cam CAM object, a captum attribution method or a
            callable ``maps = f(x, targets)``, wrapped (:func:`saliency.external.as_saliency`).
        model: the torch model (or an ART classifier holding it).
        layers: target layers; single-layer methods use ``layers[0]``, GPNN-CAM all of them.
        seed, gpnn_variations, gpnn_params: see :class:`MapSettings`.

    Returns:
        The method.
    """
    if not isinstance(name, str):
        from saliency import external

        return external.as_saliency(name, "saliency")
    check_names([name], "saliency", controls=True)
    entry = FOCUSERS[name]
    if entry.build is None:
        raise InputError(f"saliency: {name!r} has no method object (it needs image ids)")
    params = GPNN_CAM_SETTINGS if gpnn_params is None else gpnn_params  # {}: the exact preset
    return entry.build(model, MapSettings(list(layers), seed, gpnn_variations, dict(params)))


def compute_maps(
    method: str | object,
    classifier: Any,
    x: np.ndarray,
    targets: np.ndarray,
    image_ids: Sequence[int],
    layers: Sequence[str],
    seed: int = 0,
    gpnn_variations: int = GPNN_CAM_VARIATIONS,
    gpnn_params: dict[str, Any] | None = None,
) -> np.ndarray:
    """Saliency maps (N,H,W) float32 in [0,1] of ``method`` for ``targets`` on the ART ``classifier``.

    Focusers without a method (random, uniform, shuffled) derive their maps from ``image_ids`` (fixed per
    image) and their source's maps; every other name, and a method object, uses :func:`saliency_method`.
    """
    if isinstance(method, str) and FOCUSERS.get(method, Focuser(build=None)).build is None:
        check_names([method], "saliency", controls=True)
        entry = FOCUSERS[method]
        params = (seed, gpnn_variations, gpnn_params)
        source = None
        if entry.source is not None:
            source = compute_maps(entry.source, classifier, x, targets, image_ids, layers, *params)
        return entry.derive(source, image_ids, tuple(x.shape[-2:]), seed)
    import torch

    cam = saliency_method(method, classifier, layers, seed, gpnn_variations, gpnn_params)
    device = getattr(classifier, "device", torch.device("cpu"))
    xt = torch.from_numpy(np.ascontiguousarray(x)).to(device)
    maps = cam(xt, targets=torch.as_tensor(np.asarray(targets, dtype=np.int64)).to(device))
    return torch.as_tensor(maps).detach().cpu().numpy().astype(np.float32)
