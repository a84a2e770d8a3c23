"""The sanity run: the cascading-randomisation check, resumable step by step, its report and figure.

Each cascade step's per-image Spearman correlations become one record in ``DIR/sanity.jsonl`` as soon
as they are computed (:func:`evaluation.saliency_metrics.sanity_check`), so a rerun resumes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.errors import ConfigMismatchError, InputError
from evaluation.focusers import CENTRE, GPNN_CAM, RANDOM
from evaluation.metric_runs import MetricRun, open_run, report_gpnn_cost

STEM = "sanity"
#: Spearman correlations per cascade step as they are computed, so that a rerun resumes.
RECORDS = f"{STEM}.jsonl"
FIGURE = Path("figures") / "sanity_cascade.png"
COLUMNS = (
    ("step", "step", "d"),
    ("layer", "randomised down to", "s"),
    ("mean_spearman", "Spearman", ".3f"),
    ("n_defined", "images with a defined Spearman", "d"),
)
#: Images whose cascade the figure shows, one row each.
FIGURE_IMAGES = 3


def record_key(record: dict[str, Any]) -> int:
    """The identity of a record: its cascade step."""
    return int(record["step"])


def steps(
    factory: Callable[[Any], Any],
    classifier: Any,
    x: np.ndarray,
    targets: np.ndarray | None,
    log: Any,
    completed: list[dict[str, Any]],
    seed: int = 0,
    verbose: bool = True,
) -> list[dict[str, Any]]:
    """The table rows of the cascade (``step``, ``layer``, ``mean_spearman``: None where undefined,
    ``n_defined``): the ``completed`` records reused, the other steps computed and appended to ``log``
    (an :class:`evaluation.run_folder.RecordLog`; NaN as null) and to ``completed`` one by one."""
    from evaluation.saliency_metrics import sanity_check

    def save(row: dict[str, Any]) -> None:
        rho = [None if np.isnan(v) else float(v) for v in row["spearman"]]
        completed.append({"step": len(completed), "layer": row["layer"], "spearman": rho})
        log.append(completed[-1:])

    rows = sanity_check(
        factory,
        classifier,
        x,
        targets=targets,
        seed=seed,
        verbose=verbose,
        completed=list(completed),
        on_step=save,
    )
    return [
        {
            "step": i,
            "layer": r["layer"],
            "mean_spearman": r["mean_spearman"] if r["n_defined"] else None,
            "n_defined": r["n_defined"],
        }
        for i, r in enumerate(rows)
    ]


def figure_maps(n_images: int, n_layers: int) -> int:
    """How many maps :func:`figure` computes for ``n_images`` images and a cascade of ``n_layers``."""
    from evaluation.metric_plots import spread_steps

    return min(FIGURE_IMAGES, n_images) * (1 + len(spread_steps(n_layers)))


def figure(
    out: str | Path,
    factory: Callable[[Any], Any],
    classifier: Any,
    x: np.ndarray,
    targets: np.ndarray | None,
    table: list[dict[str, Any]],
    seed: int,
    title: str,
) -> Path:
    """``figures/sanity_cascade.png``: the maps of the first :data:`FIGURE_IMAGES` images after at most
    :data:`evaluation.metric_plots.MAX_CASCADE_COLUMNS` steps spread over the cascade, recomputed with
    the cascade's own randomisation (the records keep correlations, not maps), and the mean Spearman of
    every step of ``table``."""
    from evaluation.metric_plots import sanity_cascade, spread_steps
    from evaluation.saliency_metrics import cascade_maps

    k = min(FIGURE_IMAGES, len(x))
    chosen = spread_steps(len(table) - 1)
    cascade = cascade_maps(
        factory, classifier, x[:k], chosen, targets=None if targets is None else targets[:k], seed=seed
    )
    maps, layers = cascade["maps"], cascade["layers"]
    path = Path(out) / FIGURE
    return sanity_cascade(
        x[:k], cascade["trained"], maps, layers, table, path, f"{title}, the first {k} images"
    )


def notes(method: str, model: str, weights: str, images: str) -> str:
    """The report's paragraph: ``images`` says which (``"32 bundled photographs"``)."""
    return (
        f"{method} on {model} (weights: {weights}), {images}: layers re-initialised one by one from the "
        "output down; Spearman rank correlation of each randomised model's maps with the trained model's, "
        "per image. It is undefined when either map is constant (e.g. all zero): such images are left out, "
        "and the Spearman column is the mean over the images counted in the last column. A sane method "
        "decorrelates."
    )


def _redraw(run: MetricRun, method: str, classifier: Any, x: np.ndarray, saved: int) -> bool:
    """Whether the figure is out of date (``saved`` steps done); for GPNN-CAM, say what its maps cost."""
    from evaluation.saliency_metrics import cascade_layers

    n_layers = len(cascade_layers(classifier))
    redraw = saved < 1 + n_layers or not (Path(run.out) / FIGURE).is_file()  # else the figure is up to date
    if method == GPNN_CAM:  # the trained model's maps, one set per step not saved, the figure's
        left = len(x) * (2 + n_layers - saved) + (figure_maps(len(x), n_layers) if redraw else 0)
        report_gpnn_cost(run, classifier, x[0], left)
    return redraw


def run_sanity(run: MetricRun, method: str, classifier: Any) -> tuple[list[dict[str, Any]], Path]:
    """The cascading randomisation check of ``method`` (resuming ``run.out``), its report and figure.

    Args:
        run: the run's options.
        method: a focuser name that depends on the model (not random nor centre).
        classifier: the ART classifier of ``run.model``.

    Returns:
        The table rows (one per cascade step) and the Markdown report's path.
    """
    from evaluation.metric_plots import link_figures
    from evaluation.report import write_table
    from evaluation.run_folder import lock

    if method in (RANDOM, CENTRE):
        raise InputError(f"--method: {method!r} does not depend on the model; a sanity check needs a method")
    data = run.dataset(classifier.nb_classes)
    x = data.x
    targets = data.y if run.data != "digits" or run.model == "digits-cnn" else None
    config = {
        "command": "sanity",
        **{"model": run.model, "weights": run.weights, "method": method, "n": run.n},
        "data": None if run.data == "digits" else run.data,  # None: as before --data existed
        **{"size": run.size, "layers": run.layers, "seed": run.seed},
        **{"gpnn_variations": run.gpnn_variations, "gpnn": run.gpnn},
    }
    with lock(run.out):
        log, completed = open_run(run.out, config, RECORDS, record_key, data.digest())
        if [record_key(r) for r in completed] != list(range(len(completed))):
            raise ConfigMismatchError(
                f"{log.path}: the saved steps are not 0, 1, 2, ...; use a new --out folder"
            )
        redraw = _redraw(run, method, classifier, x, len(completed))
        factory = run.settings().factory(method)
        table = steps(factory, classifier, x, targets, log, completed, run.seed, run.verbose)
        text = notes(method, run.model, run.weights_label(), run.data_phrase(len(x)))
        md = write_table(run.out, STEM, table, COLUMNS, "Sanity check (cascading randomisation)", text)["md"]
        path = Path(run.out) / FIGURE
        if redraw:
            title = f"Cascading randomisation: {method} on {run.model}"
            path = figure(run.out, factory, classifier, x, targets, table, run.seed, title)
        link_figures(md, [("maps along the cascade and the mean Spearman per step", path)])
    return table, md
