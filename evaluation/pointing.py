"""The pointing game run: items in groups, one record per (method, group), the report and its figures.

Digits are scored in batches of ``--batch-size``; a Pascal VOC image's (image, class) items form one
group, scored on the resized image and up-sampled to the original size (TorchRay's protocol). Each
(method, group) becomes one record in ``DIR/pointing_game.jsonl`` as soon as it is done, so a rerun
resumes and a rerun with more methods scores only the new ones.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from evaluation.errors import ConfigMismatchError, InputError
from evaluation.focusers import GPNN_CAM, MapSettings
from evaluation.metric_runs import MetricRun, open_run, report_gpnn_cost

STEM = "pointing_game"
#: Scores per (method, group) as they are computed, so that a rerun resumes.
RECORDS = f"{STEM}.jsonl"
COLUMNS = (
    ("method", "method", "s"),
    ("n", "n", "d"),
    ("accuracy", "pointing accuracy", "pct"),
    ("mean_class_accuracy", "mean class accuracy", "pct"),
    ("energy", "energy in box", "pct"),
    ("blank", "blank maps", "d"),
    ("seconds", "seconds", ".1f"),
)
#: TorchRay's pointing-game hit radius, in pixels of the original image.
TORCHRAY_TOLERANCE = 15
#: Items whose maps figures/pointing_examples.png shows, one row each.
EXAMPLES = 3


def record_key(record: dict[str, Any]) -> tuple[str, int]:
    """The identity of a record: ``(method, group)``."""
    return str(record["method"]), int(record["group"])


class Group(NamedTuple):
    """Pointing-game items scored together: model inputs x (k,3,h,w), their item indices and, for
    real images, the original (height, width) the maps are up-sampled to (None: maps stay at h x w)."""

    x: np.ndarray
    items: np.ndarray
    map_size: tuple[int, int] | None


class PointingData(NamedTuple):
    """The groups, the class (N,) and boxes (k_i,4) of each item, the hit radius and notes on the data."""

    groups: list[Group]
    classes: np.ndarray
    boxes: list[np.ndarray]
    tolerance: float
    notes: str


def _digits(n: int, size: int, seed: int, batch_size: int, tolerance: float | None) -> PointingData:
    from evaluation import datasets

    x, y, boxes = datasets.cluttered_digits(n, "test", size=size, seed=seed)
    groups = [
        Group(x[i : i + batch_size], np.arange(i, min(i + batch_size, len(x))), None)
        for i in range(0, len(x), batch_size)
    ]
    radius = tolerance if tolerance is not None else TORCHRAY_TOLERANCE * size / 224
    notes = (
        f"Data: cluttered digits (test, n={n}, {size} px). A hit: the map's maximum lies less than "
        f"{radius:.2f} px from the digit's box, at {size} px"
        + (
            f" (the default, {TORCHRAY_TOLERANCE} * {size} / 224, is our own scaling of TorchRay's "
            f"{TORCHRAY_TOLERANCE} px to these synthetic images, not TorchRay's protocol)."
            if tolerance is None
            else "."
        )
    )
    return PointingData(groups, y, [b[None] for b in boxes], radius, notes)


def pointing_data(
    data: str, n: int, size: int, seed: int, batch_size: int, tolerance: float | None = None
) -> PointingData:
    """The items of ``data``: ``"digits"`` (the first ``n`` test images in groups of ``batch_size``)
    or a Pascal VOC folder (the (image, class) items of its first images, one group per image);
    ``tolerance`` None: the default hit radius (see the notes)."""
    from evaluation import datasets

    if data == "digits":
        return _digits(n, size, seed, batch_size, tolerance)
    folder = Path(data)
    if not folder.is_dir():
        raise InputError(f"--data: {data!r} is neither 'digits' nor an existing VOC folder")
    voc = datasets.voc_dataset(folder, size=size, n=n)
    groups = []
    for i, image in enumerate(voc.images):
        items = np.flatnonzero(voc.image == i)
        shape = (int(voc.sizes[i, 0]), int(voc.sizes[i, 1]))
        groups.append(Group(np.broadcast_to(image, (len(items), *image.shape)), items, shape))
    radius = tolerance if tolerance is not None else TORCHRAY_TOLERANCE
    notes = (
        f"Data: Pascal VOC {folder} (images: {len(voc.images)}, image-class items: {len(voc.classes)}). "
        f"TorchRay's protocol: each image's shorter side resized to {size} px (no crop), the maps up-sampled "
        f"(bilinear) to the original image size, a hit when the maximum lies less than {radius:g} px "
        "from a box of the class there; the centre baseline points at (H//2, W//2) of the original image."
    )
    return PointingData(groups, voc.classes, voc.boxes, radius, notes)


def group_maps(
    method: str, classifier: Any, group: Group, targets: np.ndarray, settings: MapSettings
) -> np.ndarray:
    """Maps (k,H,W) of a group's items, up-sampled to ``group.map_size`` (bilinear, as TorchRay's
    ``resize``) when given; the centre baseline is made at that size directly."""
    import torch
    import torch.nn.functional as F

    from evaluation.focusers import CENTRE
    from evaluation.saliency_metrics import centre_maps

    if method == CENTRE and group.map_size is not None:
        return centre_maps(len(group.items), *group.map_size)
    maps = settings.maps(method, classifier, np.ascontiguousarray(group.x), targets[group.items], group.items)
    if group.map_size is None:
        return maps
    up = F.interpolate(
        torch.from_numpy(maps)[:, None], size=group.map_size, mode="bilinear", align_corners=False
    )
    return up[:, 0].numpy()


def score_group(
    method: str,
    classifier: Any,
    data: PointingData,
    g: int,
    targets: np.ndarray,
    settings: MapSettings,
) -> dict[str, Any]:
    """The record of group ``g``: its items' hits, energy in box and blankness, and the maps' seconds."""
    from evaluation.saliency_metrics import energy_pointing_game, pointing_game

    group = data.groups[g]
    start = time.perf_counter()
    maps = group_maps(method, classifier, group, targets, settings)
    seconds = time.perf_counter() - start
    boxes = [data.boxes[i] for i in group.items]
    game = energy_pointing_game(maps, boxes)
    return {
        "method": method,
        "group": g,
        "items": group.items.tolist(),
        "hits": pointing_game(maps, boxes, tolerance=data.tolerance)["hits"].tolist(),
        "energy": game["fractions"].tolist(),
        "blank": game["blank"].tolist(),
        "seconds": seconds,
    }


def method_row(method: str, records: list[dict[str, Any]], classes: np.ndarray) -> dict[str, Any]:
    """The table row of a method from its records (one per group)."""
    from evaluation.saliency_metrics import pointing_accuracy

    hits = np.zeros(len(classes), dtype=bool)
    energy = np.zeros(len(classes))
    blank = np.zeros(len(classes), dtype=bool)
    for record in records:
        hits[record["items"]], energy[record["items"]] = record["hits"], record["energy"]
        blank[record["items"]] = record["blank"]
    summary = pointing_accuracy(hits, classes)
    return {
        "method": method,
        "n": len(classes),
        "accuracy": summary["accuracy"],
        "mean_class_accuracy": summary["mean_class_accuracy"],
        "energy": float(energy.mean()),
        "blank": int(blank.sum()),
        "seconds": float(sum(r["seconds"] for r in records)),
    }


def figures(
    out: str | Path,
    rows: list[dict[str, Any]],
    classifier: Any,
    data: PointingData,
    targets: np.ndarray,
    settings: MapSettings,
) -> list[tuple[str, Path]]:
    """``figures/pointing_game.png`` (a bar per method of ``rows``) and ``figures/pointing_examples.png``:
    the maps of the first :data:`EXAMPLES` items, recomputed (the records keep scores, not maps) from
    each group's first items, so that GPNN-CAM draws the same variations as when they were scored.
    Returns ``(caption, path)`` of each."""
    from evaluation.datasets import VOC_CLASSES
    from evaluation.metric_plots import pointing_bars, pointing_examples

    folder = Path(out) / "figures"
    picked: list[Group] = []
    for group in data.groups:
        k = min(len(group.items), EXAMPLES - sum(len(p.items) for p in picked))
        if k < 1:
            break
        picked.append(Group(group.x[:k], group.items[:k], group.map_size))
    maps = {
        row["method"]: [
            a for p in picked for a in group_maps(row["method"], classifier, p, targets, settings)
        ]
        for row in rows
    }
    items = [i for p in picked for i in p.items]
    images = [image for p in picked for image in p.x]
    voc = [p.map_size is not None for p in picked for _ in p.items]
    labels = [
        f"item {i}, {VOC_CLASSES[data.classes[i]] if is_voc else f'class {data.classes[i]}'}"
        for i, is_voc in zip(items, voc)
    ]
    boxes = [data.boxes[i] for i in items]
    examples = pointing_examples(
        images, maps, boxes, data.tolerance, folder / "pointing_examples.png", labels
    )
    bars = pointing_bars(rows, folder / "pointing_game.png")
    return [
        ("pointing accuracy and energy in box per method", bars),
        (f"the first {len(items)} items: map, box, maximum, hit or miss", examples),
    ]


def _targets(classifier: Any, data_name: str, data: PointingData) -> np.ndarray:
    """The class each item's map explains: its own, or (a model without VOC's classes on VOC, e.g. an
    ImageNet model) the model's prediction on the item's image."""
    from evaluation import datasets

    if data_name == "digits" or classifier.nb_classes == len(datasets.VOC_CLASSES):
        return data.classes
    targets = np.empty(len(data.classes), dtype=np.int64)
    for group in data.groups:
        targets[group.items] = classifier.predict(np.ascontiguousarray(group.x[:1])).argmax(axis=1)
    return targets


def _notes(run: MetricRun, data: PointingData) -> str:
    return (
        f"Model {run.model} (weights: {run.weights_label()}). {data.notes} "
        "Maps explain the ground-truth class (on VOC, for a model without VOC's 20 classes: its own "
        "prediction). Pointing accuracy: hits / n items; mean class accuracy (TorchRay's headline "
        f"number): the mean of the per-class accuracies over the {len(np.unique(data.classes))} classes "
        "present (TorchRay averages over all classes, the same when every class has items). Energy in box: "
        "mean over the n items of the share of the map's mass inside the boxes; a blank (all-zero) map "
        "counts 0. Seconds: computing the maps (summed over resumed runs)."
    )


def _scores(
    run: MetricRun, methods: Sequence[str], classifier: Any, data: PointingData, targets: np.ndarray, log: Any
) -> list[dict[str, Any]]:
    """The table rows of ``methods``: the records in ``log`` reused, the missing ones scored and appended."""
    from tqdm.auto import tqdm

    done = {record_key(r): r for r in log.read()}
    settings = run.settings()
    if GPNN_CAM in methods:
        left = sum(len(group.items) for g, group in enumerate(data.groups) if (GPNN_CAM, g) not in done)
        report_gpnn_cost(run, classifier, np.asarray(data.groups[0].x[0]), left)
    rows = []
    for method in tqdm(methods, desc="pointing game", disable=not run.verbose):
        records = []
        for g, group in enumerate(data.groups):
            record = done.get((method, g))
            if record is None:
                record = score_group(method, classifier, data, g, targets, settings)
                log.append([record])
            elif record["items"] != group.items.tolist():
                raise ConfigMismatchError(
                    f"{log.path}: group {g} holds other items than this data; use a new --out"
                )
            records.append(record)
        rows.append(method_row(method, records, data.classes))
    return rows


def run_pointing_game(
    run: MetricRun, methods: Sequence[str], classifier: Any, batch_size: int, tolerance: float | None
) -> tuple[list[dict[str, Any]], Path]:
    """Score ``methods`` (resuming ``run.out``) and write the report, its table and figures.

    Args:
        run: the run's options (``run.data``: ``"digits"`` or a Pascal VOC folder).
        methods: focuser names (:data:`evaluation.focusers.FOCUSERS`).
        classifier: the ART classifier of ``run.model``.
        batch_size: digits per group.
        tolerance: the hit radius in pixels; None: the default (see :func:`pointing_data`).

    Returns:
        The table rows (one per method) and the Markdown report's path.
    """
    from evaluation.metric_plots import link_figures
    from evaluation.report import write_table
    from evaluation.run_folder import data_digest, lock

    data = pointing_data(run.data, run.n, run.size, run.seed, batch_size, tolerance)
    targets = _targets(classifier, run.data, data)
    # The arguments that determine the scores; the methods are not among them, as each method's scores
    # are saved apart: a rerun with more methods reuses those already scored.
    config = {
        "command": "pointing-game",
        **{"model": run.model, "weights": run.weights, "data": run.data, "n": run.n},
        **{"size": run.size, "layers": run.layers, "tolerance": data.tolerance, "batch_size": batch_size},
        **{"seed": run.seed, "gpnn_variations": run.gpnn_variations, "gpnn": run.gpnn},
    }
    digest = data_digest([*(group.x for group in data.groups), data.classes, *data.boxes])
    with lock(run.out):
        log, _ = open_run(run.out, config, RECORDS, record_key, digest)
        rows = _scores(run, methods, classifier, data, targets, log)
        notes = _notes(run, data)
        md = write_table(run.out, STEM, rows, COLUMNS, "Pointing game", notes, {"notes": notes})["md"]
        link_figures(md, figures(run.out, rows, classifier, data, targets, run.settings()))
    return rows, md
