"""The ``sanity`` command's computation: the cascading-randomisation check, resumable step by step, and its
figure.

Each cascade step's per-image Spearman correlations become one record in ``DIR/sanity.jsonl`` as soon
as they are computed (:func:`evaluation.saliency_metrics.sanity_check`), so a rerun resumes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

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
