"""The insertion-deletion run: RISE's insertion and deletion AUC per saliency method.

Images are scored in batches; each (method, batch) becomes one record in ``DIR/insertion_deletion.jsonl``
as soon as it is done, so a rerun resumes and a rerun with more methods computes only the new ones. The
maps explain the model's prediction on the clean image, and insertion/deletion score that class
(:func:`evaluation.insertion_deletion_metric.insertion_deletion`, RISE's choice).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.errors import ConfigMismatchError
from evaluation.focusers import GPNN_CAM, MapSettings
from evaluation.metric_runs import MetricRun, open_run, report_gpnn_cost

STEM = "insertion_deletion"
#: Scores per (method, batch) as they are computed, so that a rerun resumes.
RECORDS = f"{STEM}.jsonl"
FIGURE = Path("figures") / f"{STEM}.png"
#: The two scores, each an AUC and a curve per image.
SCORES = ("insertion", "deletion")
COLUMNS = (
    ("method", "method", "s"),
    ("n", "n", "d"),
    ("insertion", "insertion AUC", ".3f"),
    ("deletion", "deletion AUC", ".3f"),
    ("blank", "blank maps", "d"),
    ("seconds", "seconds", ".1f"),
)


def record_key(record: dict[str, Any]) -> tuple[str, int]:
    """The identity of a record: ``(method, batch)``."""
    return str(record["method"]), int(record["batch"])


def score_batch(
    method: str, classifier: Any, x: np.ndarray, targets: np.ndarray, items: np.ndarray, settings: MapSettings
) -> dict[str, Any]:
    """One record: the maps of ``method`` for the images ``x`` (their indices ``items``) and the classes
    ``targets``, then their insertion and deletion AUCs per image, the sums of their curves (for the
    mean curves), which maps are blank, and the seconds the maps took."""
    from evaluation.insertion_deletion_metric import insertion_deletion

    start = time.perf_counter()
    maps = settings.maps(method, classifier, x, targets, items)
    seconds = time.perf_counter() - start
    scores = insertion_deletion(classifier, x, maps, targets=targets)
    return {
        "method": method,
        "items": items.tolist(),
        "insertion": scores["insertion"].tolist(),
        "deletion": scores["deletion"].tolist(),
        "insertion_curve_sum": scores["insertion_curve"].sum(axis=0).tolist(),
        "deletion_curve_sum": scores["deletion_curve"].sum(axis=0).tolist(),
        "blank": (~maps.reshape(len(maps), -1).any(axis=1)).tolist(),
        "seconds": seconds,
    }


def score(
    methods: Sequence[str],
    classifier: Any,
    x: np.ndarray,
    targets: np.ndarray,
    settings: MapSettings,
    log: Any,
    saved: Sequence[dict[str, Any]],
    batch_size: int,
    verbose: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Score every method on every batch, reusing the ``saved`` records and appending new ones to
    ``log`` (an :class:`evaluation.run_folder.RecordLog`).

    Returns:
        The table rows (per method: ``n``, mean ``insertion`` and ``deletion`` AUC, ``blank`` maps,
        ``seconds``) and per method the figure's data (the rows plus the mean curves).
    """
    from tqdm.auto import tqdm

    from evaluation.records import batches

    done = {record_key(r): r for r in saved}
    rows, curves = [], {}
    image_batches = [np.asarray(items) for items in batches(len(x), batch_size)]
    jobs = [(m, b, items) for m in methods for b, items in enumerate(image_batches)]
    per_method: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for method, b, items in tqdm(jobs, desc="insertion/deletion", disable=not verbose):
        record = done.get((method, b))
        if record is None:
            record = {
                **score_batch(method, classifier, x[items], targets[items], items, settings),
                "batch": b,
            }
            log.append([record])
        elif record["items"] != items.tolist():
            raise ConfigMismatchError(
                f"{log.path}: batch {b} holds other images than this data; use a new --out"
            )
        per_method[method].append(record)
    for method, records in per_method.items():
        n = sum(len(r["items"]) for r in records)
        row = {
            "method": method,
            "n": n,
            "insertion": float(np.mean([a for r in records for a in r["insertion"]])),
            "deletion": float(np.mean([a for r in records for a in r["deletion"]])),
            "blank": int(sum(sum(r["blank"]) for r in records)),
            "seconds": float(sum(r["seconds"] for r in records)),
        }
        rows.append(row)
        curves[method] = {
            **row,
            **{f"{k}_curve": np.sum([r[f"{k}_curve_sum"] for r in records], axis=0) / n for k in SCORES},
        }
    return rows, curves


def notes(model: str, weights: str, images: str, size: int) -> str:
    """The report's paragraph on what was measured: ``images`` says which (``"32 bundled photographs"``)."""
    return (
        f"Model {model} (weights: {weights}), {images} at {size} px. Each map explains the model's "
        "prediction on the clean image. Pixels are ranked by the map; deletion sets the top pixels to 0 "
        "(black), insertion copies them from the image into a blurred copy (Gaussian, sigma 5), one image "
        "row of pixels per step (RISE). AUC: the normalised trapezoid of that class's softmax probability "
        "over the steps, averaged over the n images: insertion higher is better, deletion lower is better. "
        "Blank maps (all zero) delete and insert in row-major order. Seconds: computing the maps (summed "
        "over resumed runs), not the scoring."
    )


def write_results(out: str | Path, rows: Sequence[dict[str, Any]], curves: dict[str, Any], text: str) -> Path:
    """``insertion_deletion.md/.json/.csv`` (:func:`evaluation.report.write_table`) and
    ``figures/insertion_deletion.png`` (:func:`evaluation.metric_plots.insertion_deletion_curves`),
    linked from the Markdown report; returns the report's path."""
    from evaluation.metric_plots import insertion_deletion_curves, link_figures
    from evaluation.report import write_table

    paths = write_table(out, STEM, rows, COLUMNS, "Insertion and deletion", text, {"notes": text})
    figure = insertion_deletion_curves(curves, Path(out) / FIGURE)
    link_figures(paths["md"], [("mean insertion and deletion curves per method", figure)])
    return paths["md"]


def run_insertion_deletion(
    run: MetricRun, methods: Sequence[str], classifier: Any, batch_size: int
) -> tuple[list[dict[str, Any]], Path]:
    """Score ``methods`` (resuming ``run.out``) and write the report, its table and figure.

    Args:
        run: the run's options.
        methods: focuser names (:data:`evaluation.focusers.FOCUSERS`).
        classifier: the ART classifier of ``run.model``.
        batch_size: images per batch.

    Returns:
        The table rows (one per method) and the Markdown report's path.
    """
    from evaluation.records import batches
    from evaluation.run_folder import data_digest, lock

    x = run.dataset(classifier.nb_classes).x
    targets = classifier.predict(x, batch_size=batch_size).argmax(axis=1)
    # as the pointing game: the methods are not pinned, each one's records are its own
    config = {
        "command": "insertion-deletion",
        **{"model": run.model, "weights": run.weights, "data": run.data, "n": run.n},
        **{"size": run.size, "layers": run.layers, "batch_size": batch_size, "seed": run.seed},
        **{"gpnn_variations": run.gpnn_variations, "gpnn": run.gpnn},
    }
    with lock(run.out):
        log, saved = open_run(run.out, config, RECORDS, record_key, data_digest([x]))
        if GPNN_CAM in methods:
            done = {record_key(r) for r in saved}
            image_batches = enumerate(batches(len(x), batch_size))
            left = sum(len(items) for b, items in image_batches if (GPNN_CAM, b) not in done)
            report_gpnn_cost(run, classifier, x[0], left)
        settings = run.settings()
        rows, curves = score(methods, classifier, x, targets, settings, log, saved, batch_size, run.verbose)
        md = write_results(
            run.out, rows, curves, notes(run.model, run.weights_label(), run.data_phrase(len(x)), run.size)
        )
    return rows, md
