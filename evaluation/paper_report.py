"""Tables and figures of the CAMERAS paper protocol (:mod:`evaluation.paper_protocol`).

Per focuser, over the images attacked (those the model classifies as their label):

* ``success_rate``: share whose target class reached the protocol's confidence;
* ``mean_l2`` / ``median_l2`` / ``mean_linf_255``: norms of the successful perturbations (pixel scale
  [0,1]; L-inf also x255);
* ``mean_iterations``: PGD steps spent, over all attacked images;
* ``reduction`` / ``median_reduction``: per-image L2 reduction ``1 - l2_focused / l2_plain`` averaged
  (the paper's statistic is a mean) or its median, over the ``pairs`` images on which both attacks
  succeeded, with their 95 % percentile-bootstrap confidence intervals over those images
  (``reduction_ci`` / ``median_reduction_ci``: ``[low, high]``, :func:`evaluation.stats.bootstrap_ci`,
  seed 0, 10,000 resamples; None with fewer than 2 pairs); ``reduction_vs_uniform`` (and its median):
  the same against the uniform-penalty control.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.configs import ARRAYS_DIR, FIGURE_FOCUSERS
from evaluation.focusers import UNFOCUSED, UNIFORM
from evaluation.labels import PREDICTED_SOURCE
from evaluation.provenance import provenance_markdown
from evaluation.report import _median, interval, markdown_table, records_csv, text_table
from evaluation.report_figures import figures_markdown
from evaluation.run_folder import load_arrays, write_atomic
from evaluation.stats import paired_norms, paired_reductions

PAPER_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("focuser", "focuser", "s"),
    ("n", "n", "d"),
    ("success_rate", "success", "pct"),
    ("mean_l2", "mean L2", ".3f"),
    ("median_l2", "median L2", ".3f"),
    ("mean_linf_255", "mean Linf x255", ".2f"),
    ("mean_iterations", "mean steps", ".1f"),
    ("reduction", "L2 reduction vs plain: mean", "pct"),
    ("reduction_ci", "95 % CI", "ci"),
    ("median_reduction", "median", "pct"),
    ("median_reduction_ci", "95 % CI", "ci"),
    ("pairs", "pairs", "d"),
    ("reduction_vs_uniform", "vs uniform: mean", "pct"),
    ("median_reduction_vs_uniform", "median", "pct"),
    ("pairs_uniform", "pairs", "d"),
)
#: The paper's headline: mean PGD perturbation-norm reduction with CAMERAS, ResNet-50, ImageNet val.
PAPER_REDUCTION = 0.565


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def paper_groups(records: Sequence[dict[str, Any]]) -> dict[str, dict[int, dict[str, Any]]]:
    """The attacked records by focuser, then by image (the first record of an image wins).

    Args:
        records: the protocol's records.

    Returns:
        ``{focuser: {image: record}}`` in order of first appearance; a focuser whose images were all
        skipped has an empty group.
    """
    groups: dict[str, dict[int, dict[str, Any]]] = {}
    for r in records:
        group = groups.setdefault(str(r["focuser"]), {})
        if r.get("attacked", True):
            group.setdefault(int(r["image"]), r)
    return groups


def summarize_paper(records: Sequence[dict[str, Any]], focusers: Sequence[str] | None = None) -> list[dict]:
    """One row per focuser (the plain attack first, then ``focusers`` or their first appearance).

    Args:
        records: the protocol's records.
        focusers: the focuser order.

    Returns:
        The rows, keys as in the module docstring.
    """
    groups = paper_groups(records)
    order = [UNFOCUSED, *(focusers or [])]
    order += [f for f in groups if f not in order]
    rows = []
    for focuser in (f for f in order if f in groups):
        group = groups[focuser]
        won = [r for r in group.values() if r["success"]]
        row: dict[str, Any] = {
            "focuser": focuser,
            "n": len(group),
            "success_rate": len(won) / len(group) if group else None,
            "mean_l2": _mean([r["l2"] for r in won]),
            "median_l2": _median([r["l2"] for r in won]),
            "mean_linf_255": _mean([r["linf_255"] for r in won]),
            "mean_iterations": _mean([r["iterations"] for r in group.values()]),
        }
        intervals: dict[str, Any] = {"reduction_ci": None, "median_reduction_ci": None}
        for suffix, reference in (("", UNFOCUSED), ("_vs_uniform", UNIFORM)):
            pairs_key = "pairs" if not suffix else "pairs_uniform"
            if focuser in (UNFOCUSED, reference) or reference not in groups:
                row.update({f"reduction{suffix}": None, f"median_reduction{suffix}": None, pairs_key: None})
                continue
            reductions = paired_reductions(group, groups[reference])
            row[f"reduction{suffix}"] = _mean(reductions)
            row[f"median_reduction{suffix}"] = _median(reductions)
            row[pairs_key] = len(reductions)
            if reference == UNFOCUSED:  # the headline reductions get their intervals
                intervals = {
                    "reduction_ci": interval(reductions, np.mean),
                    "median_reduction_ci": interval(reductions, np.median),
                }
        row.update(intervals)
        rows.append(row)
    return rows


def paired_l2_panels(records: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]]) -> list[dict]:
    """The panels of ``figures/paired_l2.png``: each focuser's L2 against the plain attack's, per image.

    Args:
        records: the protocol's records.
        rows: their :func:`summarize_paper` rows (the reductions and intervals of the titles).

    Returns:
        One panel per focuser but the plain attack (see :func:`evaluation.norm_plots.paired_figure`); its
        points are the ``pairs`` of the focuser's row.
    """
    groups = paper_groups(records)
    panels = []
    for row in rows:
        if row["focuser"] == UNFOCUSED:
            continue
        images, reference, focused = paired_norms(groups[row["focuser"]], groups.get(UNFOCUSED, {}))
        panels.append(
            {
                "label": row["focuser"],
                "images": images,
                "reference": reference,
                "focused": focused,
                "mean_reduction": row["reduction"],
                "mean_ci": row["reduction_ci"],
                "median_reduction": row["median_reduction"],
                "median_ci": row["median_reduction_ci"],
            }
        )
    return panels


def settings_notes(
    config: dict[str, Any], records: Sequence[dict[str, Any]], labels: str | None = None
) -> str:
    """What was run, in words: model, data, labels (where they came from), attack settings."""
    attacked = {r["image"] for r in records if r.get("attacked", True)}
    images = {r["image"] for r in records}
    labels = labels or ("the digits' own labels" if config["data"] == "digits" else PREDICTED_SOURCE)
    which = (
        "every image: without labels, each attack attacked the predicted class"
        if labels.startswith(PREDICTED_SOURCE)
        else f"those classified as the label; labels: {labels}"
    )
    inf = config["norm"] == "inf"
    step = f"{255 * config['eps_step']:.3g}/255" if inf else f"{config['eps_step']:g}"
    bound = (
        "bounded by the pixel range only"
        if config["eps"] >= 1
        else f"inside an L-{config['norm']} ball of {255 * config['eps']:.3g}/255"
    )
    return (
        f"Model {config['model']} (weights: {config['weights'] or 'the default'}), data {config['data']}: "
        f"{len(attacked)} of {len(images)} images attacked ({which}). "
        "Targeted PGD to the least-likely class of the clean image, loss CE + "
        f"{config['beta']:g} * ||delta * (1 - Psi)||_2, L-{config['norm']} steps of {step}, {bound}, "
        f"{config['max_iter']} steps. The plain attack stops once the target's softmax probability "
        f"reaches {100 * config['confidence']:g} %; a penalised one keeps that probability (CE steps "
        "below it, CE + penalty at or above it) and its smallest-L2 perturbation at or above it is "
        "recorded. Success = that probability reached. Norms of the successful perturbations in pixel "
        "units [0,1] (L-inf also x255); steps: those taken to the recorded perturbation. Reductions are "
        "per-image L2 reductions over the pairs both attacks fooled: the mean (the paper's statistic: "
        f"{100 * PAPER_REDUCTION:.1f} % for CAMERAS on ResNet-50, ImageNet val) and the median. `uniform` "
        "is the same penalty with a constant map (the image's CAMERAS mean); `shuffled` the CAMERAS map's "
        "values at random places."
    )


def write_paper_report(
    out_dir: str | Path,
    records: Sequence[dict[str, Any]],
    config: dict[str, Any],
    figures: bool = True,
    provenance: dict[str, Any] | None = None,
    labels: str | None = None,
) -> dict[str, Any]:
    """Write ``report.md``, ``results.json``, ``records.csv`` and the per-image figures to ``out_dir``;
    ``provenance`` (:func:`evaluation.provenance.provenance`) is recorded in both report files, ``labels``
    (where the labels came from) in the notes."""
    out = Path(out_dir)
    rows = summarize_paper(records, config.get("focusers"))
    notes = settings_notes(config, records, labels)
    paths = [] if not figures else [*paired_l2_figure(out, records, rows), *image_figures(out, records)]
    parts = [
        "# CAMERAS paper protocol: targeted PGD with the saliency penalty\n",
        notes + "\n",
        markdown_table(rows, PAPER_COLUMNS),
    ]
    if paths:
        parts.append(figures_markdown(paths, out))
    parts.append("## Configuration\n\n```json\n" + json.dumps(config, indent=2, sort_keys=True) + "\n```\n")
    if provenance:
        parts.append(provenance_markdown(provenance))
    write_atomic(out / "report.md", "\n".join(parts))
    summary = {"config": config, "notes": notes, "provenance": provenance, "summary": rows}
    write_atomic(out / "results.json", json.dumps(summary, indent=2) + "\n")
    write_atomic(out / "records.csv", records_csv(records))
    return {"rows": rows, "table": text_table(rows, PAPER_COLUMNS), "figures": paths}


def paired_l2_figure(
    out: Path, records: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]]
) -> list[Path]:
    """Write ``figures/paired_l2.png`` (:func:`paired_l2_panels`); no file when no focuser ran.

    Args:
        out: the run folder.
        records: the protocol's records.
        rows: their :func:`summarize_paper` rows.

    Returns:
        The path written, or an empty list.
    """
    from evaluation import norm_plots

    panels = paired_l2_panels(records, rows)
    if not panels:
        return []
    title = "Paper protocol: focused vs plain PGD L2 per image"
    return [norm_plots.paired_plot(panels, out / "figures" / "paired_l2.png", title, reference="plain PGD")]


def _load_arrays(path: Path) -> dict[str, np.ndarray] | None:
    """An arrays file as float32, or None when it is missing or unreadable (the figure skips it)."""
    arrays = load_arrays(path)
    return None if arrays is None else {k: v.astype(np.float32) for k, v in arrays.items()}


def image_figures(out: Path, records: Sequence[dict[str, Any]]) -> list[Path]:
    """One PNG per image with saved arrays: the image, the maps of Grad-CAM / CAMERAS / GPNN-CAM, and the
    plain and CAMERAS-focused perturbations (|delta| summed over channels, one shared magnification)."""
    from evaluation import plots

    names = {int(r["image"]): str(r["name"]) for r in records}
    paths = []
    for image in sorted(names):
        arrays = {f: _load_arrays(out / ARRAYS_DIR / f"{image:05d}-{f}.npz") for f in FIGURE_FOCUSERS}
        arrays = {f: a for f, a in arrays.items() if a is not None}
        if arrays:
            safe = names[image].replace("/", "_")
            paths.append(
                plots.paper_figure(arrays, out / "figures" / f"{image:05d}-{safe}.png", names[image])
            )
    return paths
