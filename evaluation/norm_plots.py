"""Figures of the perturbation norms: norm and success rate against the mask area, and paired scatters.

Matplotlib runs headless (Agg). Each ``*_figure`` function builds and returns a figure (for tests to
inspect); the others write PNGs through :func:`evaluation.plots.save` and return their paths.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator  # noqa: E402

from evaluation.focusers import UNFOCUSED  # noqa: E402
from evaluation.plots import save  # noqa: E402

#: Norm panels of :func:`norm_vs_area_figure`: (record norm, axis label).
NORM_PANELS = (("l2", "L2"), ("linf", "L-inf"))
#: Series of :func:`area_series`, per focuser: summary-row keys read into arrays (None -> NaN).
SERIES_KEYS = ("area", "n", "n_success", "success_rate") + tuple(
    f"{stat}_{norm}" for norm, _ in NORM_PANELS for stat in ("median", "q1", "q3")
)
#: Text of a point (or a focuser) where no attack succeeded.
NO_SUCCESS = "0 % success"


def area_series(rows: Sequence[dict[str, Any]], attack: str) -> dict[str, dict[str, np.ndarray]]:
    """What :func:`norm_vs_area_figure` plots for ``attack``: per focuser, arrays over its areas.

    Args:
        rows: :func:`evaluation.report.summarize` rows.
        attack: the attack whose rows are read.

    Returns:
        ``{focuser: {key: array}}`` for every focuser with a row of ``attack`` (the unfocused attack
        first, then in row order), keys :data:`SERIES_KEYS`, ordered by area; a missing statistic
        (no attacked image, no success) is NaN. Rows without an attacked image are left out.
    """
    series: dict[str, dict[str, np.ndarray]] = {}
    for focuser in dict.fromkeys(r["focuser"] for r in rows if r["attack"] == attack):
        mine = sorted(
            (r for r in rows if r["attack"] == attack and r["focuser"] == focuser and r["n"]),
            key=lambda r: r["area"],
        )
        series[focuser] = {
            k: np.array([np.nan if r.get(k) is None else float(r[k]) for r in mine]) for k in SERIES_KEYS
        }
    return series


def _legend_label(focuser: str, s: dict[str, np.ndarray]) -> str:
    """The focuser's name; a focuser that never succeeded says so (it has no norm to plot)."""
    name = "unfocused (full image)" if focuser == UNFOCUSED else focuser
    return f"{name} ({NO_SUCCESS})" if len(s["n"]) and not np.nansum(s["n_success"]) else name


def _dodge(areas: np.ndarray, k: int, count: int) -> np.ndarray:
    """Areas shifted a little (log-scale) so the error bars of ``count`` focusers do not overlap."""
    return areas * 1.12 ** (k - (count - 1) / 2)


def _area_axis(ax: Any, areas: np.ndarray) -> None:
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(areas))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{100 * a:g}" for a in areas])
    ax.set_xlim(areas.min() / 1.5, areas.max() * 1.5)
    ax.set_xlabel("mask area (% of pixels)")
    ax.grid(alpha=0.3)


def _plain_log_labels(axis: Any) -> None:
    """Plain numbers on a log axis ("0.5", "2"); under two decades, the 2s and 5s are labelled too."""
    low, high = sorted(axis.get_view_interval())
    few = high / low < 100
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if few and f"{v:.0e}"[0] in "25" else ""))


def _counts(ax: Any, title: str, points: Sequence[tuple[float, float, float, str]], noun: str) -> None:
    """Give the number behind each point: in the title when it is the same for all, else beside each.

    ``points`` are ``(x, y, count, colour)``; ``noun`` says what is counted.
    """
    counts = {p[2] for p in points}
    if len(counts) == 1:
        ax.set_title(f"{title}; n = {counts.pop():.0f} {noun} per point", fontsize=8)
        return
    ax.set_title(f"{title}; numbers: {noun}", fontsize=8)
    for x, y, count, colour in points:
        ax.annotate(f"{count:.0f}", (x, y), **_NOTE, color=colour)


#: Text style of the per-point notes (n), placed just right of and above the point.
_NOTE: dict[str, Any] = dict(textcoords="offset points", xytext=(3, 2), fontsize=6)
#: Style of the unfocused attack's horizontal line.
_FULL_LINE: dict[str, Any] = dict(color="black", linestyle="--", linewidth=1)


def _success_panel(ax: Any, series: dict[str, dict[str, np.ndarray]], colours: dict[str, Any]) -> None:
    focused = [f for f in series if f != UNFOCUSED]
    points = []
    for k, focuser in enumerate(focused):
        s = series[focuser]
        x = _dodge(s["area"], k, len(focused))
        ax.plot(x, 100 * s["success_rate"], marker="o", color=colours[focuser])
        points += [(xi, 100 * r, n, colours[focuser]) for xi, r, n in zip(x, s["success_rate"], s["n"])]
    if UNFOCUSED in series and len(series[UNFOCUSED]["n"]):
        ax.axhline(100 * series[UNFOCUSED]["success_rate"][0], **_FULL_LINE)
    ax.set_ylim(-5, 108)
    ax.set_ylabel("success rate (% of the images attacked)")
    _counts(ax, "success rate", points, "images")


def _norm_panel(
    ax: Any, series: dict[str, dict[str, np.ndarray]], norm: str, label: str, colours: dict[str, Any]
) -> None:
    focused = [f for f in series if f != UNFOCUSED]
    points = []
    for k, focuser in enumerate(focused):
        s = series[focuser]
        x = _dodge(s["area"], k, len(focused))
        med, q1, q3 = s[f"median_{norm}"], s[f"q1_{norm}"], s[f"q3_{norm}"]
        ok = ~np.isnan(med)
        yerr = [med[ok] - q1[ok], q3[ok] - med[ok]]
        ax.errorbar(x[ok], med[ok], yerr=yerr, marker="o", capsize=2, color=colours[focuser])
        points += [(xi, yi, n, colours[focuser]) for xi, yi, n in zip(x[ok], med[ok], s["n_success"][ok])]
        for xi in x[~ok]:  # no success: a hollow marker on the axis, never a silent gap
            bottom = ax.get_xaxis_transform()  # x in data, y in axes fraction
            ax.plot(xi, 0.04, marker="o", mfc="none", color=colours[focuser], transform=bottom)
            above = dict(textcoords="offset points", xytext=(0, 5), ha="center", fontsize=6)
            ax.annotate(NO_SUCCESS, (xi, 0.04), xycoords=bottom, **above, color=colours[focuser])
    if UNFOCUSED in series and len(series[UNFOCUSED]["n"]):
        s = series[UNFOCUSED]
        if not np.isnan(s[f"median_{norm}"][0]):
            ax.axhline(s[f"median_{norm}"][0], **_FULL_LINE)
            ax.axhspan(s[f"q1_{norm}"][0], s[f"q3_{norm}"][0], color="black", alpha=0.08, lw=0)
    ax.set_yscale("log")
    ax.set_ylabel(f"{label} of the successful attacks (log)")
    _counts(ax, f"median {label}, bars: interquartile range", points, "successes")
    _plain_log_labels(ax.yaxis)


def norm_vs_area_figure(rows: Sequence[dict[str, Any]], attack: str) -> Figure:
    """The norm-vs-area figure of one attack: success rate, L2 and L-inf against the mask area.

    Each focuser is a line over its areas (shifted a little apart so the bars do not overlap); the
    unfocused attack is a dashed horizontal line (its interquartile range shaded). The success panel
    gives the images attacked, the norm panels (log scale) the median over the successful attacks with
    interquartile error bars and the number of successes: in the panel's title when it is the same at
    every point, else beside each point. Where none succeeded a hollow marker sits on the axis, noted
    :data:`NO_SUCCESS`, and a focuser that never succeeded says so in the legend.

    Args:
        rows: :func:`evaluation.report.summarize` rows (with the ``q1_*`` / ``q3_*`` quartiles).
        attack: the attack drawn.

    Returns:
        The figure (close it with ``plt.close``).
    """
    series = area_series(rows, attack)
    focused = [f for f in series if f != UNFOCUSED]
    colours = {f: f"C{k}" for k, f in enumerate(focused)}
    fig, axes = plt.subplots(1, 1 + len(NORM_PANELS), figsize=(13.5, 4.2), layout="constrained")
    areas = np.unique(np.concatenate([series[f]["area"] for f in focused] or [np.array([1.0])]))
    _success_panel(axes[0], series, colours)
    for ax, (norm, label) in zip(axes[1:], NORM_PANELS):
        _norm_panel(ax, series, norm, label, colours)
    for ax in axes:
        _area_axis(ax, areas)
    handles = [Line2D([], [], color=colours[f], marker="o") for f in focused]
    labels = [_legend_label(f, series[f]) for f in focused]
    if UNFOCUSED in series:
        handles.append(Line2D([], [], **_FULL_LINE))
        labels.append(_legend_label(UNFOCUSED, series[UNFOCUSED]))
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=8)
    fig.suptitle(f"{attack}: success and smallest successful perturbation vs mask area")
    return fig


def norm_vs_area(rows: Sequence[dict[str, Any]], folder: str | Path) -> list[Path]:
    """Write :func:`norm_vs_area_figure` for every attack of ``rows``.

    Args:
        rows: :func:`evaluation.report.summarize` rows.
        folder: where the PNGs go (made if missing).

    Returns:
        The paths written, ``folder/norm_vs_area_{attack}.png``, one per attack in row order.
    """
    return [
        save(norm_vs_area_figure(rows, attack), Path(folder) / f"norm_vs_area_{attack}.png", dpi=100)
        for attack in dict.fromkeys(r["attack"] for r in rows)
    ]


def _reduction_text(name: str, value: float | None, ci: Sequence[float] | None) -> str:
    if value is None:
        return f"{name} reduction –"
    interval = f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci is not None else ""
    return f"{name} reduction {100 * value:.1f} %{interval}"


def paired_figure(panels: Sequence[dict[str, Any]], title: str, reference: str = "unfocused") -> Figure:
    """Paired per-image norms: one log-log panel per focuser, x = reference L2, y = focused L2.

    One point per image both attacks fooled; points under the drawn diagonal are images whose focused
    perturbation is smaller. All panels share their limits.

    Args:
        panels: per panel ``label`` (str), ``reference`` and ``focused`` (equal-length arrays, one value
            per pair), ``median_reduction`` (fraction or None) with ``median_ci`` ((low, high) or None),
            and optionally ``mean_reduction`` with ``mean_ci``.
        title: the figure's title.
        reference: the reference attack's name, for the x-axis label.

    Returns:
        The figure (close it with ``plt.close``).
    """
    values = np.concatenate([np.r_[p["reference"], p["focused"]] for p in panels] or [np.ones(1)])
    values = values[values > 0] if (values > 0).any() else np.ones(1)
    lims = (values.min() / 1.5, values.max() * 1.5)
    cols = min(4, max(1, len(panels)))
    rows = -(-max(1, len(panels)) // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.3 * cols, 3.5 * rows), squeeze=False, layout="constrained"
    )
    for ax in axes.flat[len(panels) :]:
        ax.set_axis_off()
    for ax, p in zip(axes.flat, panels):
        ax.plot(lims, lims, color="grey", linewidth=1, linestyle="--")
        ax.scatter(p["reference"], p["focused"], s=14, alpha=0.7)
        ax.set(xscale="log", yscale="log", xlim=lims, ylim=lims)
        ax.set_box_aspect(1)
        _plain_log_labels(ax.xaxis)
        _plain_log_labels(ax.yaxis)
        ax.set_xlabel(f"{reference} L2", fontsize=8)
        ax.set_ylabel(f"{p['label']} L2", fontsize=8)
        lines = [f"{p['label']}: n = {len(p['reference'])} pairs"]
        if "mean_reduction" in p:
            lines.append(_reduction_text("mean", p["mean_reduction"], p.get("mean_ci")))
        lines.append(_reduction_text("median", p["median_reduction"], p.get("median_ci")))
        ax.set_title("\n".join(lines), fontsize=8)
        if not len(p["reference"]):
            ax.text(0.5, 0.5, "no image fooled by both", ha="center", transform=ax.transAxes, fontsize=8)
        ax.grid(alpha=0.3, which="both", linewidth=0.4)
    fig.suptitle(
        f"{title}\nbelow the diagonal: the focused perturbation is smaller; [95 % confidence interval]",
        fontsize=10,
    )
    return fig


def paired_plot(
    panels: Sequence[dict[str, Any]], path: str | Path, title: str, reference: str = "unfocused"
) -> Path:
    """Write :func:`paired_figure` to ``path`` (PNG, folders made).

    Args:
        panels: see :func:`paired_figure`.
        path: the PNG written.
        title: the figure's title.
        reference: the reference attack's name.

    Returns:
        ``path``.
    """
    return save(paired_figure(panels, title, reference), path, dpi=100)
