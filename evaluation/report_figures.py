"""The figures of the grid report (:func:`evaluation.report.write_report`): what each one draws, taken
from the records and the summary rows, so that a plotted point is a pair the table counts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.focusers import UNFOCUSED
from evaluation.records import group_records
from evaluation.stats import paired_norms


def paired_panels(
    records: Sequence[dict[str, Any]],
    rows: Sequence[dict[str, Any]],
    attack: str,
    area: float,
) -> list[dict[str, Any]]:
    """The panels of the paired plot (:func:`evaluation.norm_plots.paired_figure`) of ``attack``.

    Args:
        records: the run's records.
        rows: their :func:`summarize` rows (norm ``l2``): the reductions and intervals of the titles.
        attack: the attack drawn.
        area: the focusers' mask area drawn.

    Returns:
        One panel per focuser with a row of ``attack`` at ``area``, in row order: ``label``, the pairs'
        ``images``, unfocused (``reference``) and focused L2, ``median_reduction`` and ``median_ci``.
        The pairs are those the row's ``l2_reduction`` and ``n_paired`` count.
    """
    groups, _, _ = group_records(records, None, None)
    unfocused = groups.get((attack, UNFOCUSED, 1.0), {})
    panels = []
    for row in rows:
        if row["attack"] != attack or row["focuser"] == UNFOCUSED or row["area"] != area:
            continue
        images, reference, focused = paired_norms(groups[(attack, row["focuser"], area)], unfocused, "l2")
        panels.append(
            {
                "label": row["focuser"],
                "images": images,
                "reference": reference,
                "focused": focused,
                "median_reduction": row.get("l2_reduction"),
                "median_ci": row.get("l2_reduction_ci"),
            }
        )
    return panels


def example_area(config: dict[str, Any] | None, rows: Sequence[dict[str, Any]]) -> float:
    """The focused area of the examples and the paired plots: the middle of the config's ``areas`` (as
    the runner picks it), else of the focused rows' areas; 1.0 when there are none."""
    areas = list((config or {}).get("areas") or [])
    areas = areas or sorted({r["area"] for r in rows if r["focuser"] != UNFOCUSED})
    return float(areas[len(areas) // 2]) if areas else 1.0


def write_figures(
    folder: Path,
    records: Sequence[dict[str, Any]],
    rows: Sequence[dict[str, Any]],
    config: dict[str, Any] | None = None,
    examples: dict[str, np.ndarray] | None = None,
) -> list[Path]:
    """Write the report's figures to ``folder``.

    Per attack ``norm_vs_area_{attack}.png`` (:func:`evaluation.norm_plots.norm_vs_area`) and
    ``paired_{attack}.png`` (:func:`evaluation.norm_plots.paired_plot` at :func:`example_area`), then,
    with ``examples``, ``examples.png`` (:func:`evaluation.plots.attack_grid`: the config's first attack
    at the same area).

    Args:
        folder: where the PNGs go.
        records: the run's records.
        rows: their :func:`summarize` rows.
        config: the run's config (areas, attacks), or None.
        examples: the arrays of ``examples.npz``, or None.

    Returns:
        The paths written, in that order.
    """
    from evaluation import norm_plots, plots

    area = example_area(config, rows)
    paths = norm_plots.norm_vs_area(rows, folder)
    attacks = list(dict.fromkeys(r["attack"] for r in rows))
    for attack in attacks:
        title = f"{attack}: focused vs unfocused L2 per image, {100 * area:g} % area"
        panels = paired_panels(records, rows, attack, area)
        if panels:
            paths.append(norm_plots.paired_plot(panels, folder / f"paired_{attack}.png", title))
    if examples:
        attack = ((config or {}).get("attacks") or attacks)[0]
        paths.append(plots.attack_grid(examples, folder / "examples.png", records, attack, area))
    return paths


#: A caption per figure kind (the file name's start) in the reports.
CAPTIONS = {
    "norm_vs_area": "Success rate and the median L2 / L-inf of the successful attacks (bars: interquartile "
    "range, numbers: successes) against the mask area; dashed: the unfocused attack.",
    "paired": "One point per image both attacks fooled: the unfocused (plain) L2 (x) against the focused "
    "L2 (y), log-log; points under the diagonal are images the focus made cheaper. Titles: paired "
    "reductions [95 % CI].",
    "examples": "The first images under the first attack: one row per focuser at the middle area, one "
    "perturbation colour scale per image.",
}


def figures_markdown(paths: Sequence[Path], out: Path) -> str:
    """The ``## Figures`` section of a report: each figure linked relative to ``out``, with its caption.

    Args:
        paths: the figures, inside ``out``.
        out: the report's folder.

    Returns:
        Markdown text; empty without figures.
    """
    if not paths:
        return ""
    lines = ["## Figures\n"]
    for p in paths:
        caption = next((c for kind, c in CAPTIONS.items() if p.stem.startswith(kind)), "")
        lines.append(
            f"![{p.stem}]({p.relative_to(out).as_posix()})\n" + (f"\n{caption}\n" if caption else "")
        )
    return "\n".join(lines)
