"""Tables from experiment records: a per-(attack, focuser, area) summary as Markdown, JSON and CSV.

The summary statistics (all over the images the model classifies correctly, the only ones attacked in
earnest):

* ``success_rate``: share of those images whose adversarial prediction differs from the label;
* ``median_l0`` / ``median_l2`` / ``median_linf``: medians over the *successful* images of the number of
  changed pixels and the L2 / L-inf norms of the perturbation; ``q1_l2`` / ``q3_l2`` / ``q1_linf`` /
  ``q3_linf``: the quartiles of those norms (the error bars of the norm-vs-area figure);
* ``l2_reduction``: paired reduction against the unfocused attack, ``1 - median(l2_focused / l2_full)``
  over the images on which *both* attacks succeeded (``n_paired`` of them, the "pairs" column), so a
  focused attack is never credited for images it failed on; ``l2_reduction_vs_random``: the same against
  the random mask of the same area (the control; ``n_paired_random`` images). Both are None (printed as
  a dash) on the unfocused row, where the reduction would compare the attack with itself;
* ``l2_reduction_ci`` / ``l2_reduction_vs_random_ci``: their 95 % percentile-bootstrap confidence
  intervals over the paired images, ``[low, high]`` (:func:`evaluation.stats.bootstrap_ci`, seed 0,
  10,000 resamples), None with fewer than 2 pairs.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evaluation import report_figures
from evaluation.focusers import RANDOM, UNFOCUSED
from evaluation.labels import PREDICTED_SOURCE
from evaluation.provenance import provenance_markdown
from evaluation.records import Group, group_records
from evaluation.run_folder import make_dir, write_atomic
from evaluation.stats import bootstrap_ci, paired_reductions

#: Columns of the summary table: (key, header, format).
SUMMARY_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("attack", "attack", "s"),
    ("focuser", "focuser", "s"),
    ("area", "area", "area"),
    ("n", "n", "d"),
    ("success_rate", "success", "pct"),
    ("median_l0", "median L0 (px)", "count"),
    ("median_l2", "median L2", ".3f"),
    ("median_linf", "median Linf", ".3f"),
    ("l2_reduction", "L2 reduction vs unfocused", "pct"),
    ("l2_reduction_ci", "95 % CI", "ci"),
    ("n_paired", "pairs", "d"),
    ("l2_reduction_vs_random", "L2 reduction vs random", "pct"),
    ("l2_reduction_vs_random_ci", "95 % CI", "ci"),
    ("n_paired_random", "pairs", "d"),
)


def _median(values: Sequence[float]) -> float | None:
    return float(np.median(values)) if len(values) else None


def _quartiles(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not len(values):
        return None, None
    q1, q3 = np.percentile(values, [25, 75])
    return float(q1), float(q3)


def interval(values: np.ndarray, statistic: Any) -> list[float] | None:
    """:func:`evaluation.stats.bootstrap_ci` of ``statistic(values)`` as JSON's ``[low, high]`` (None with
    fewer than 2 values)."""
    ci = bootstrap_ci(values, statistic)
    return None if ci is None else list(ci)


def _paired_reduction(
    focused: Group, reference: Group, norm: str
) -> tuple[float | None, int, list[float] | None]:
    """Median per-image reduction ``1 - norm_f / norm_ref`` (a fraction) over the images both attacks fool
    (with a non-zero reference norm, :func:`evaluation.stats.paired_reductions`), the number of those
    images and the median's bootstrap 95 % interval ``[low, high]``; ``(None, 0, None)`` if none."""
    reductions = paired_reductions(focused, reference, norm)
    return _median(reductions), len(reductions), interval(reductions, np.median)


def _row(key: tuple[str, str, float], groups: dict[tuple[str, str, float], Group], norm: str) -> dict:
    """The summary row of one group (see :func:`summarize`)."""
    attack, focuser, area = key
    group = groups[key]
    successes = [r for r in group.values() if r["success"]]
    row: dict[str, Any] = {
        "attack": attack,
        "focuser": focuser,
        "area": area,
        "n": len(group),
        "n_success": len(successes),
        "success_rate": len(successes) / len(group) if group else None,
        "median_l0": _median([r["l0_pixels"] for r in successes]),
        "median_l2": _median([r["l2"] for r in successes]),
        "median_linf": _median([r["linf"] for r in successes]),
        "median_mask_area": _median([r["mask_area"] for r in group.values()]),
    }
    for name in ("l2", "linf"):
        row[f"q1_{name}"], row[f"q3_{name}"] = _quartiles([r[name] for r in successes])
    unfocused = groups.get((attack, UNFOCUSED, 1.0), {})
    random = groups.get((attack, RANDOM, area), {})
    fields = (f"{norm}_reduction", "n_paired", f"{norm}_reduction_ci")
    compare = focuser != UNFOCUSED
    row.update(zip(fields, _paired_reduction(group, unfocused, norm) if compare else (None,) * 3))
    fields = (f"{norm}_reduction_vs_random", "n_paired_random", f"{norm}_reduction_vs_random_ci")
    compare = focuser not in (UNFOCUSED, RANDOM) and bool(random)
    row.update(zip(fields, _paired_reduction(group, random, norm) if compare else (None,) * 3))
    return row


def summarize(
    records: Sequence[dict[str, Any]],
    norm: str = "l2",
    attacks: Sequence[str] | None = None,
    focusers: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """One row per (attack, focuser, area): counts, success rate, median norms and paired reductions.

    Rows are ordered by attack, then the unfocused row, then the focusers (``attacks`` / ``focusers``
    give the order; otherwise first appearance), each by increasing area. ``norm`` (a record field:
    ``l2``, ``linf``, ``l0_pixels``...) picks the norm of the reductions, stored as
    ``{norm}_reduction`` and ``{norm}_reduction_vs_random`` with their intervals ``{...}_ci``.

    Args:
        records: the run's records.
        norm: the norm of the paired reductions.
        attacks: the attack order (others follow in order of appearance).
        focusers: the focuser order (others follow in order of appearance).

    Returns:
        The rows, keys as in the module docstring.
    """
    groups, attack_order, focuser_order = group_records(records, attacks, focusers)

    def order(key: tuple[str, str, float]) -> tuple[int, int, float]:
        attack, focuser, area = key
        f = -1 if focuser == UNFOCUSED else focuser_order.index(focuser)
        return attack_order.index(attack), f, area

    return [_row(key, groups, norm) for key in sorted(groups, key=order)]


def _format(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if fmt == "pct":
        text = f"{100 * value:.1f}"
        if text == "100.0" and value < 1:  # not every one: never round up to "all"
            return ">99.9%"
        return ("0.0" if text == "-0.0" else text) + "%"
    if fmt == "count":  # a whole number, or a median halfway between two
        return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"
    if fmt == "ci":  # an interval of fractions
        return f"[{_format(value[0], 'pct')}, {_format(value[1], 'pct')}]"
    if fmt == "area":
        return "full" if value >= 1.0 else f"{100 * value:g}%"
    if fmt == "s":
        return str(value)
    return format(value, fmt)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """A GitHub Markdown table of ``rows`` with ``columns`` = (key, header, format) triples.

    Formats: ``"pct"`` (fraction -> percent with one decimal; ">99.9%" below 1 that would round to
    100, never "-0.0%"), ``"ci"`` (a ``[low, high]`` pair of fractions, each as ``"pct"``),
    ``"count"`` (whole number, or one decimal for a half), ``"area"`` (1.0 -> "full"), ``"s"`` (str)
    or any ``format()`` spec; ``None`` prints as an en dash.
    """
    header = "| " + " | ".join(h for _, h, _ in columns) + " |"
    rule = "|" + "|".join("---" if f == "s" else "---:" for _, _, f in columns) + "|"
    body = ["| " + " | ".join(_format(row.get(k), f) for k, _, f in columns) + " |" for row in rows]
    return "\n".join([header, rule, *body]) + "\n"


def text_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """The same table aligned in plain text (for the terminal)."""
    cells = [[h for _, h, _ in columns]] + [[_format(row.get(k), f) for k, _, f in columns] for row in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    lines = []
    for n, line in enumerate(cells):
        parts = [c.ljust(w) if f == "s" else c.rjust(w) for c, w, (_, _, f) in zip(line, widths, columns)]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


def records_csv(records: Sequence[dict[str, Any]]) -> str:
    """CSV text of the records; columns are the union of the records' keys (key fields first)."""
    first = ["image", "name", "attack", "focuser", "area"]
    keys = sorted({k for r in records for k in r} - set(first))
    columns = [k for k in first if any(k in r for r in records)] + keys
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    return buffer.getvalue()


def write_table(
    out_dir: str | Path,
    stem: str,
    rows: Sequence[dict[str, Any]],
    columns: Sequence[tuple[str, str, str]],
    title: str,
    notes: str = "",
    extra: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``stem.md`` (title, notes, table), ``stem.json`` (``extra`` + rows) and ``stem.csv``."""
    out = make_dir(out_dir)
    md = f"# {title}\n\n" + (notes.strip() + "\n\n" if notes else "") + markdown_table(rows, columns)
    paths = {"md": out / f"{stem}.md", "json": out / f"{stem}.json", "csv": out / f"{stem}.csv"}
    write_atomic(paths["md"], md)
    write_atomic(paths["json"], json.dumps({**(extra or {}), "rows": list(rows)}, indent=2) + "\n")
    write_atomic(paths["csv"], records_csv(rows))
    return paths


#: The first point of :data:`FAIRNESS`, with labels and without.
SAME_IMAGES = {
    True: "the correctly classified ones; the others count in no statistic), against the **same class** "
    "(the label)",
    False: "every image: without labels, each attack attacked the predicted class), against the **same "
    "class** (the model's clean prediction)",
}


def budgets_at_floor(records: Sequence[dict[str, Any]], config: dict[str, Any]) -> dict[tuple[str, str], int]:
    """Successful PGD/FGSM records per (attack, focuser) whose searched budget is the search's lowest,
    ``eps_min``: the true minimal budget may be lower, so their norms are upper bounds."""
    counts: dict[tuple[str, str], int] = {}
    for r in records:
        floor = config.get("attack_params", {}).get(r["attack"], {}).get("eps_min")
        if floor is None or not r.get("success") or r.get("eps") is None:
            continue
        key = (r["attack"], r["focuser"])
        counts[key] = counts.get(key, 0) + int(r["eps"] <= floor * (1 + 1e-9))
    return counts


def floor_note(at_floor: dict[tuple[str, str], int], config: dict[str, Any]) -> str:
    """The report's warning about budgets found at the search's floor (:func:`budgets_at_floor`)."""
    listed = ", ".join(f"{a} {f}: {k}" for (a, f), k in at_floor.items() if k)
    floors = ", ".join(
        f"{a} {p['eps_min']:.3g}" for a, p in config.get("attack_params", {}).items() if "eps_min" in p
    )
    return (
        "## Budgets at the search's floor\n\n"
        f"Some attacks already succeeded at the smallest budget searched (eps_min: {floors}), so their true "
        f"minimal budget is lower and their norms are upper bounds; reductions involving them are not exact. "
        f"Successful attacks at the floor: {listed}. Rerun into a new folder with a lower `--eps-min` "
        "(the API's `attack_params`).\n"
    )


FAIRNESS = """\
## How the comparison is kept fair

* Every attack runs on the **same images** ({same_images}, with the **same hyper-parameters** whether
  unfocused or focused; only the mask differs.
* Each image's saliency maps are computed **once**, on the clean image for its label, and reused by
  every attack and area; the mask keeps exactly the top `area` fraction of pixels (`saliency.masks.top_k`).
* The norms are those of the **smallest perturbation that succeeds**, not of an imposed budget: PGD and
  FGSM search the L-inf budget per image by log-space bisection (the smallest eps that fools the
  model); C&W L2 minimises the L2 norm itself. With a fixed budget, a focused attack would trivially
  have a smaller L2/L0 simply because it may change fewer pixels.
* The **random mask of the same area** is the control: it changes as few pixels as the saliency masks,
  so the saliency-focused row beats it only if the map puts the budget on the pixels that matter.
* Reading the numbers: a mask shrinks the set of allowed perturbations, so it can never lower the
  *true* minimal norm of any kind. The L2/L0 reductions of the L-inf attacks (PGD, FGSM) come from not
  spending the budget on every pixel; for C&W, which already minimises L2, a negative "reduction" is
  the L2 price of confining the perturbation to `area` of the pixels (in exchange for L0 = `area`).
* Reductions are **paired** per image, `1 - median(norm_focused / norm_reference)`, over the images on
  which both attacks succeeded; the success rate is reported beside it, since a focused attack that
  fails on hard images would otherwise look cheaper.
"""


def settings_text(config: dict[str, Any]) -> str:
    """A Markdown paragraph describing the attack and GPNN-CAM settings of a run's config."""
    lines = ["## Settings\n"]
    params = config.get("attack_params", {})
    if "pgd" in params:
        p = params["pgd"]
        lines.append(
            f"* PGD (L-inf): {p['max_iter']} iterations of step {p['step_ratio']} x eps; eps searched per "
            f"image in [{p['eps_min']:.4g}, {p['eps_max']:g}] by {p['search_steps']} log-space bisections."
        )
    if "fgsm" in params:
        p = params["fgsm"]
        lines.append(
            f"* FGSM (L-inf): eps searched per image in [{p['eps_min']:.4g}, {p['eps_max']:g}] by "
            f"{p['search_steps']} log-space bisection steps."
        )
    if "cw" in params:
        p = params["cw"]
        lines.append(
            f"* C&W L2: {p['binary_search_steps']} binary-search steps of the constant (initial "
            f"{p['initial_const']:g}) x {p['max_iter']} gradient iterations (ART's line-search variant) at "
            f"learning rate {p['learning_rate']:g}, confidence 0; its L2 is minimised by the attack itself."
        )
    if "gpnn-cam" in config.get("focusers", []):
        gpnn = config.get("gpnn_params") or "GPNN-CAM's preset"
        lines.append(
            f"* GPNN-CAM: {config.get('gpnn_variations')} variations per image, GPNN settings: {gpnn} "
            "(a reduced setting trades map quality for CPU time; GPNN-CAM's own default is 100 variations "
            "from the preset)."
        )
    layers = config.get("layers") or "the zoo's default layers (single-layer methods: the top one)"
    lines.append(f"* Saliency target layers: {layers}.")
    return "\n".join(lines) + "\n"


def _order(config: dict[str, Any] | None) -> dict[str, Any]:
    """summarize()'s row order from a run's config (attacks and focusers as given)."""
    config = config or {}
    return {"attacks": config.get("attacks"), "focusers": config.get("focusers")}


def _report_parts(
    rows: list[dict[str, Any]],
    config: dict[str, Any] | None,
    notes: str,
    labels: str | None,
    at_floor: dict[tuple[str, str], int],
) -> list[str]:
    """The paragraphs of ``report.md`` up to its settings: title, run, notes, labels, the summary table and
    how to read it, budgets at the floor."""
    parts = ["# Saliency-focused attacks: perturbation norms\n"]
    if config:
        summary = ", ".join(
            f"{k}={config[k]}" for k in ("model", "data", "n", "attacks", "focusers", "areas") if k in config
        )
        parts.append(f"Run: {summary}.\n")
    if notes:
        parts.append(notes.strip() + "\n")
    labelled = labels is None or not labels.startswith(PREDICTED_SOURCE)
    if labels:
        parts.append(f"Labels: {labels}.\n")
    parts.append(markdown_table(rows, SUMMARY_COLUMNS))
    attacked = (
        "correctly classified images attacked" if labelled else "images attacked (their predicted class)"
    )
    parts.append(
        f"`n`: {attacked}; medians over successful attacks; L0 = changed pixels; "
        "reductions are paired medians over the `pairs` images both attacks fool (see below), with their "
        "95 % percentile-bootstrap confidence intervals over those images (10,000 resamples).\n"
    )
    parts.append(FAIRNESS.format(same_images=SAME_IMAGES[labelled]))
    if any(at_floor.values()):
        parts.append(floor_note(at_floor, config or {}))
    if config:
        parts.append(settings_text(config))
    return parts


def write_report(
    out_dir: str | Path,
    records: Sequence[dict[str, Any]],
    config: dict[str, Any] | None = None,
    examples: dict[str, np.ndarray] | None = None,
    notes: str = "",
    figures: bool = True,
    provenance: dict[str, Any] | None = None,
    labels: str | None = None,
) -> dict[str, Any]:
    """Write ``report.md``, ``results.json``, ``records.csv`` and (``figures=True``) figures to ``out_dir``.

    ``provenance`` (:func:`evaluation.provenance.provenance`) and ``labels`` (where the labels came from,
    :attr:`evaluation.loading.Dataset.label_source`; None: not stated) are recorded in both report files.

    ``examples`` (see :func:`evaluation.plots.attack_grid`) adds the image/map/mask/perturbation grid;
    the figures are those of :func:`evaluation.report_figures.write_figures`, linked from ``report.md``.
    Returns ``{"rows": summary rows, "table": plain-text table, "paths": {...}}``.
    """
    out = make_dir(out_dir)
    rows = summarize(records, **_order(config))
    paths: dict[str, Path] = {}
    figure_paths = (
        report_figures.write_figures(out / "figures", records, rows, config, examples)
        if figures and rows
        else []
    )
    at_floor = budgets_at_floor(records, config or {})
    parts = _report_parts(rows, config, notes, labels, at_floor)
    if figure_paths:
        parts.append(report_figures.figures_markdown(figure_paths, out))
    if config:
        parts.append(
            "## Configuration\n\n```json\n" + json.dumps(config, indent=2, sort_keys=True) + "\n```\n"
        )
    if provenance:
        parts.append(provenance_markdown(provenance))
    paths["md"] = out / "report.md"
    write_atomic(paths["md"], "\n".join(parts))
    summary = {"config": config, "labels": labels, "provenance": provenance, "summary": rows}
    summary["budgets_at_floor"] = {f"{a}/{f}": k for (a, f), k in at_floor.items() if k}
    paths["json"] = write_atomic(out / "results.json", json.dumps(summary, indent=2) + "\n")
    paths["csv"] = write_atomic(out / "records.csv", records_csv(records))
    for i, p in enumerate(figure_paths):
        paths[f"figure{i}"] = p
    return {"rows": rows, "table": text_table(rows, SUMMARY_COLUMNS), "paths": paths}
