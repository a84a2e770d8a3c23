"""Saliency-map metrics: pointing game (TorchRay's rule), energy pointing game (Score-CAM) and the cascading
model-parameter randomisation sanity check (Adebayo et al. 2018); insertion and deletion (RISE) are in
:mod:`evaluation.insertion_deletion_metric`.

Maps are (N,H,W) arrays or tensors (numpy or torch); boxes are ``y0, x0, y1, x1`` in map pixels with
``y1, x1`` exclusive, either an (N,4) array (one box per image) or a list of N arrays (k_i,4).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy.stats import rankdata
from torch import nn
from tqdm.auto import tqdm

from saliency.base import (
    Targets,
    check_images,
    model_in_eval,
    resolve_layer,
    resolve_targets,
    unwrap_model,
)

Boxes = np.ndarray | Sequence[np.ndarray | Sequence[Sequence[int]]]
#: A cascade of :func:`sanity_check`: (name, module) in randomisation order, ``("none", None)`` first.
Cascade = list[tuple[str, nn.Module | None]]


def _maps_numpy(maps: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(maps, torch.Tensor):
        maps = maps.detach().cpu().numpy()
    if not isinstance(maps, np.ndarray):
        raise TypeError(f"maps must be a numpy array or torch tensor (N,H,W), got {type(maps).__name__}")
    if maps.ndim != 3 or maps.shape[0] == 0:
        raise ValueError(f"maps must have shape (N,H,W) with N >= 1, got {maps.shape}")
    if not np.isfinite(maps).all():
        raise ValueError("maps contain NaN or infinite values")
    return maps


def _boxes_list(boxes: Boxes, n: int) -> list[np.ndarray]:
    """Per image an int64 (k,4) array of boxes; validates count, shape and non-empty extents."""
    if isinstance(boxes, torch.Tensor):
        boxes = boxes.detach().cpu().numpy()
    if isinstance(boxes, np.ndarray) and boxes.ndim == 2:
        per_image = [boxes[i : i + 1] for i in range(len(boxes))]
    else:
        per_image = [np.asarray(b).reshape(-1, 4) if np.asarray(b).size else np.zeros((0, 4)) for b in boxes]
    if len(per_image) != n:
        raise ValueError(f"boxes: expected boxes for {n} images, got {len(per_image)}")
    out = []
    for i, b in enumerate(per_image):
        b = np.asarray(b)
        if b.ndim != 2 or b.shape[1] != 4:
            raise ValueError(f"boxes[{i}] must have shape (k,4) as y0,x0,y1,x1, got {b.shape}")
        if b.size and ((b[:, 2] <= b[:, 0]).any() or (b[:, 3] <= b[:, 1]).any()):
            raise ValueError(f"boxes[{i}] has an empty box (need y1 > y0 and x1 > x0): {b.tolist()}")
        out.append(b.astype(np.int64))
    return out


def centre_maps(n: int, h: int, w: int) -> np.ndarray:
    """The "centre" baseline: maps (n,h,w) float32 in [0,1] that fall off linearly with the distance from
    pixel (h//2, w//2), their unique maximum: TorchRay's centre point, (x, y) = (w/2, h/2), for even
    sides, half a pixel up and left of it for odd ones."""
    if min(n, h, w) < 1:
        raise ValueError(f"n, h and w must be >= 1, got {(n, h, w)}")
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    dist = np.hypot(yy - h // 2, xx - w // 2)
    cone = 1.0 - dist / dist.max() if dist.max() > 0 else np.ones((h, w))
    return np.broadcast_to(cone.astype(np.float32), (n, h, w)).copy()


def _clip(boxes: np.ndarray, h: int, w: int) -> np.ndarray:
    """Boxes (k,4) clipped to an h x w map; those left empty (wholly outside) are dropped."""
    clipped = np.clip(boxes, 0, [h, w, h, w])
    return clipped[(clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])]


def pointing_accuracy(
    hits: np.ndarray, classes: Sequence[int] | np.ndarray | None = None
) -> dict[str, object]:
    """``{"accuracy": hits / N}`` of pointing-game hits (N,) and, with ``classes`` (N,), the accuracy of
    each class present, ``"class_accuracy"``, and their mean, ``"mean_class_accuracy"``.

    The mean is over the classes present; TorchRay's is over all the dataset's classes (a class without
    items counts 0), the same number when every class has items (as on the full VOC07 test).
    """
    hits = np.asarray(hits, dtype=bool).reshape(-1)
    result: dict[str, object] = {"accuracy": float(hits.mean())}
    if classes is not None:
        classes = np.asarray(classes).reshape(-1)
        if len(classes) != len(hits):
            raise ValueError(f"classes: expected {len(hits)} values (one per map), got {len(classes)}")
        per_class = {c.item(): float(hits[classes == c].mean()) for c in np.unique(classes)}
        result["class_accuracy"] = per_class
        result["mean_class_accuracy"] = float(np.mean(list(per_class.values())))
    return result


def pointing_game(
    maps: np.ndarray | torch.Tensor,
    boxes: Boxes,
    tolerance: float = 15,
    classes: Sequence[int] | np.ndarray | None = None,
) -> dict[str, object]:
    """TorchRay's pointing game: the point is each map's flat argmax (the first index on ties); it is a hit
    when some pixel (y, x) of some box of the image lies at Euclidean distance strictly below
    ``tolerance`` from it, i.e. (y - py)^2 + (x - px)^2 < tolerance^2.

    Args:
        maps: (N,H,W) saliency maps. boxes: (N,4) or a list of N (k_i,4) arrays, ``y0,x0,y1,x1``
            exclusive, in map pixels, clipped to the map (as TorchRay's box mask); an image with no box
            left is a miss.
        tolerance: hit radius in map pixels (TorchRay: 15 at the original image size).
        classes: optional (N,) class of each (image, class) item: see :func:`pointing_accuracy`.

    Returns:
        ``{"accuracy": hits / N, "hits": bool (N,), "points": int64 (N,2) (y, x)}`` and, with classes,
        ``"class_accuracy": {class: accuracy}``, ``"mean_class_accuracy"``.
    """
    maps = _maps_numpy(maps)
    n, h, w = maps.shape
    if not np.isscalar(tolerance) or not tolerance >= 0:
        raise ValueError(f"tolerance must be a non-negative number, got {tolerance!r}")
    per_image = [_clip(b, h, w) for b in _boxes_list(boxes, n)]
    flat_argmax = maps.reshape(n, -1).argmax(axis=1)
    points = np.stack([flat_argmax // w, flat_argmax % w], axis=1).astype(np.int64)
    hits = np.zeros(n, dtype=bool)
    for i, (b, (py, px)) in enumerate(zip(per_image, points)):
        # Distance from the point to the nearest pixel of each box (pixels y0..y1-1, x0..x1-1).
        dy = np.maximum(np.maximum(b[:, 0] - py, py - (b[:, 2] - 1)), 0)
        dx = np.maximum(np.maximum(b[:, 1] - px, px - (b[:, 3] - 1)), 0)
        hits[i] = bool((dy**2 + dx**2 < tolerance**2).any())
    return {**pointing_accuracy(hits, classes), "hits": hits, "points": points}


def energy_pointing_game(maps: np.ndarray | torch.Tensor, boxes: Boxes) -> dict[str, object]:
    """Score-CAM's energy pointing game: per image, the share of the (non-negative) map's total inside the
    union of its boxes (clipped to the map), sum_{(y,x) in boxes} L_yx / sum_{all} L_yx.

    An all-zero ("blank") map puts no energy in the boxes: its share is defined as 0 (Score-CAM's code
    divides by zero), so every image counts in the mean.

    Returns:
        ``{"mean": mean over all N images, "fractions": float64 (N,), "blank": bool (N,)}``.
    """
    maps = _maps_numpy(maps)
    if (maps < 0).any():
        raise ValueError("maps must be non-negative for the energy pointing game")
    n, h, w = maps.shape
    per_image = _boxes_list(boxes, n)
    fractions = np.zeros(n)
    totals = maps.reshape(n, -1).astype(np.float64).sum(axis=1)
    for i, b in enumerate(per_image):
        inside = np.zeros((h, w), dtype=bool)
        for y0, x0, y1, x1 in _clip(b, h, w):
            inside[y0:y1, x0:x1] = True
        if totals[i] > 0:
            fractions[i] = maps[i][inside].astype(np.float64).sum() / totals[i]
    return {"mean": float(fractions.mean()), "fractions": fractions, "blank": totals == 0}


def _module_device(module: nn.Module) -> torch.device:
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _parameterised_layers(module: nn.Module) -> list[str]:
    """Names of the modules that own parameters, last registered (closest to the output) first."""
    names = [name for name, m in module.named_modules() if name and any(True for _ in m.parameters(False))]
    return names[::-1]


def cascade_layers(model: object) -> list[str]:
    """The layers :func:`sanity_check` randomises by default, in cascade order: every module of ``model``
    (``nn.Module`` or ART ``PyTorchClassifier``) that owns parameters, last registered first."""
    return _parameterised_layers(unwrap_model(model)[0])


def _randomise(module: nn.Module) -> None:
    if hasattr(module, "reset_parameters"):
        module.reset_parameters()
    else:
        for p in module.parameters(recurse=False):
            nn.init.normal_(p, std=0.01)


def _spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row Spearman rank correlation (average ranks on ties) of (N,D) arrays; NaN for constant rows."""
    ra = rankdata(a, axis=1)
    rb = rankdata(b, axis=1)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    denom = np.sqrt((ra**2).sum(axis=1) * (rb**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (ra * rb).sum(axis=1) / np.where(denom > 0, denom, 1), np.nan)


def _sanity_row(layer: str, spearman: np.ndarray) -> dict[str, object]:
    defined = int(np.isfinite(spearman).sum())
    mean = float(np.nanmean(spearman)) if defined else float("nan")
    return {"layer": layer, "spearman": spearman, "n_defined": defined, "mean_spearman": mean}


def sanity_check(
    method_factory: Callable[[object], Callable[..., torch.Tensor]],
    model: object,
    x: np.ndarray | torch.Tensor,
    targets: Targets = None,
    layers: Sequence[str] | None = None,
    seed: int = 0,
    verbose: bool = False,
    completed: Sequence[dict[str, object]] = (),
    on_step: Callable[[dict[str, object]], None] | None = None,
) -> list[dict[str, object]]:
    """Cascading model-parameter randomisation (Adebayo et al. 2018) with Spearman rank correlation.

    A deep copy of ``model`` is randomised layer by layer from the top (output) down; after each layer
    the maps of ``method_factory(copy)`` are compared with the trained model's maps, per image, by the
    Spearman rank correlation of the flattened maps. The class explained stays fixed: ``targets`` or
    the trained model's predictions. A method that passes gives correlations that fall as more layers
    are randomised. ``model`` itself is never modified.

    Args:
        method_factory: model -> saliency method (``maps = method(x, targets)``, maps (N,H,W)), e.g.
            ``lambda m: GradCAM(m, "features.13")``. It receives an ``nn.Module`` or a
            ``PyTorchClassifier`` of the same kind as ``model``.
        layers: module paths to randomise, in cascade order; default every module owning parameters,
            last registered first (registration order is taken as the forward order). Layers are
            re-initialised with their own ``reset_parameters``, step k under a torch seed drawn from
            ``(seed, k)``: the weights of step k do not depend on what the method draws at other steps.
        completed: rows of the first steps from an earlier, interrupted run with the same arguments
            (``"layer"`` and ``"spearman"``, NaN or None where undefined): those steps only
            re-randomise their layer.
        on_step: called with each newly computed row as soon as it is done (e.g. to save it).

    Returns:
        One row per cascade step: ``{"layer": name, "spearman": float64 (N,), "n_defined": int,
        "mean_spearman": float}``. The correlation is undefined (NaN) where either map is constant (e.g.
        all zero); ``n_defined`` counts the images where it is defined and ``mean_spearman`` is their
        mean (NaN if none). The first row, layer ``"none"``, compares the untouched copy with the model
        (1.0 for a deterministic method); row k has the first k layers randomised.
    """
    x, t, base = _trained_maps(method_factory, model, x, targets)
    base = base.reshape(len(x), -1)
    copied, steps = _cascade(model, layers)
    if len(completed) > len(steps):
        raise ValueError(f"completed: {len(completed)} rows given for a cascade of {len(steps)} steps")
    for i, row in enumerate(completed):
        if row["layer"] != steps[i][0]:
            raise ValueError(f"completed: row {i} is for layer {row['layer']!r}, step {i} is {steps[i][0]!r}")
    rows = []
    with torch.random.fork_rng(devices=[]):
        for i, (name, layer) in enumerate(tqdm(steps, desc="sanity check", disable=not verbose)):
            _randomise_step(layer, seed, i)
            if i < len(completed):
                rows.append(_sanity_row(name, np.array(completed[i]["spearman"], dtype=np.float64)))
                continue
            maps = _maps_numpy(method_factory(copied)(x, t)).reshape(len(x), -1)
            rows.append(_sanity_row(name, _spearman(base, maps)))
            if on_step is not None:
                on_step(rows[-1])
    return rows


def _trained_maps(
    method_factory: Callable[[object], Callable[..., torch.Tensor]],
    model: object,
    x: np.ndarray | torch.Tensor,
    targets: Targets,
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """(x as a tensor, the targets resolved on the trained model, its maps (N,H,W))."""
    module, preprocess = unwrap_model(model)
    x = check_images(x).detach()
    reference = method_factory(model)
    with torch.no_grad(), model_in_eval(module):
        logits = module(preprocess(x.to(_module_device(module))))
    t = resolve_targets(targets, logits)
    return x, t, _maps_numpy(reference(x, t))


def _cascade(
    model: object, layers: Sequence[str] | None
) -> tuple[object, list[tuple[str, nn.Module | None]]]:
    """A deep copy of ``model`` and its cascade: ``("none", None)``, then (name, module) of the copy's
    ``layers`` (default :func:`cascade_layers`), in the order they are randomised."""
    copied = copy.deepcopy(model)
    copied_module, _ = unwrap_model(copied)
    layer_names = list(layers) if layers is not None else _parameterised_layers(copied_module)
    return copied, [("none", None), *(resolve_layer(copied_module, name) for name in layer_names)]


def _randomise_step(layer: nn.Module | None, seed: int, step: int) -> None:
    """Re-initialise ``layer`` (step ``step`` of the cascade) under a torch seed drawn from (seed, step)."""
    if layer is not None:
        torch.manual_seed(int(np.random.SeedSequence([seed, step]).generate_state(1)[0]))
        with torch.no_grad():
            _randomise(layer)


def cascade_maps(
    method_factory: Callable[[object], Callable[..., torch.Tensor]],
    model: object,
    x: np.ndarray | torch.Tensor,
    steps: Sequence[int],
    targets: Targets = None,
    layers: Sequence[str] | None = None,
    seed: int = 0,
) -> dict[str, object]:
    """The maps behind :func:`sanity_check`, for a figure: the trained model's and those after some steps
    of the same cascade (same layers, same randomised weights for the same ``seed``).

    The copy is randomised step by step up to the last of ``steps``; maps are computed only at
    ``steps``, so a few steps of a long cascade cost a few maps. ``model`` itself is never modified.

    Args:
        method_factory, model, x, targets, layers, seed: as :func:`sanity_check`.
        steps: cascade steps, increasing, at least one, each in ``1..len(layers)`` (step k: the first
            k layers randomised, as row k of :func:`sanity_check`).

    Returns:
        ``{"trained": (N,H,W), "maps": (S,N,H,W), "layers": [the layer randomised last at each step]}``
        float32 numpy maps.
    """
    steps = [int(s) for s in steps]
    x, t, trained = _trained_maps(method_factory, model, x, targets)
    copied, cascade = _cascade(model, layers)
    if not steps or sorted(set(steps)) != steps or not 1 <= steps[0] <= steps[-1] < len(cascade):
        raise ValueError(f"steps must be increasing steps within 1..{len(cascade) - 1}, got {steps}")
    maps = []
    with torch.random.fork_rng(devices=[]):
        for i, (_, layer) in enumerate(cascade[: steps[-1] + 1]):
            _randomise_step(layer, seed, i)
            if i in steps:
                maps.append(_maps_numpy(method_factory(copied)(x, t)).astype(np.float32))
    return {
        "trained": trained.astype(np.float32),
        "maps": np.stack(maps),
        "layers": [cascade[i][0] for i in steps],
    }
