"""Figures of the saliency metrics: pointing game, cascading-randomisation sanity check, insertion/deletion.

Matplotlib runs headless (Agg); every function writes one PNG through
:func:`evaluation.run_folder.save_figure` and returns its path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Circle, Rectangle  # noqa: E402

from evaluation.run_folder import make_dir, read_bytes, save_figure, write_atomic  # noqa: E402
from evaluation.saliency_metrics import pointing_game  # noqa: E402

#: Baselines that ignore the model, drawn in grey: (grey level, line style).
BASELINES = {"centre": ("0.45", "--"), "random": ("0.7", ":")}
#: Most randomised-layer columns :func:`sanity_cascade` draws (a long cascade is sampled evenly).
MAX_CASCADE_COLUMNS = 9


def _save(fig: Any, path: str | Path, dpi: int = 100) -> Path:
    """Lay out ``fig``, write it to ``path`` (folders made) and close it."""
    fig.tight_layout()
    path = Path(path)
    make_dir(path.parent)
    save_figure(fig, path, dpi)
    plt.close(fig)
    return path


def _hwc(image: np.ndarray) -> np.ndarray:
    """(C,H,W) or (H,W) in [0,1] -> what imshow takes."""
    img = np.asarray(image, dtype=np.float32)
    img = img.transpose(1, 2, 0) if img.ndim == 3 else img
    return np.clip(img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img, 0.0, 1.0)


def _bare(ax: Any) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _styles(methods: Sequence[str]) -> list[tuple[str, str]]:
    """(colour, line style) per method: the colour cycle, solid; baselines grey, dashed or dotted."""
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles, k = [], 0
    for method in methods:
        if method in BASELINES:
            styles.append(BASELINES[method])
        else:
            styles.append((cycle[k % len(cycle)], "-"))
            k += 1
    return styles


def link_figures(md_path: str | Path, figures: Sequence[tuple[str, str | Path]]) -> Path:
    """Append a ``## Figures`` section to the Markdown report ``md_path``: one image link per
    ``(caption, path)``, the path relative to the report's folder."""
    md_path = Path(md_path)
    text = (read_bytes(md_path) or b"").decode("utf-8").rstrip("\n")
    links = "\n\n".join(
        f"![{caption}]({Path(path).relative_to(md_path.parent).as_posix()})" for caption, path in figures
    )
    return write_atomic(md_path, f"{text}\n\n## Figures\n\n{links}\n")


def pointing_bars(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Pointing accuracy and energy in box, one bar per method, the value on each bar and n in the
    titles. ``rows``: the pointing-game table rows (``method``, ``n``, ``accuracy``, ``energy``)."""
    methods = [r["method"] for r in rows]
    n = sorted({int(r["n"]) for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(max(6.0, 1.3 * len(rows) + 2.5), 3.6), squeeze=False)
    for ax, (key, label) in zip(axes[0], (("accuracy", "pointing accuracy"), ("energy", "energy in box"))):
        values = [100 * float(r[key]) for r in rows]
        bars = ax.bar(range(len(rows)), values, color=[colour for colour, _ in _styles(methods)])
        ax.bar_label(bars, labels=[f"{v:.0f}%" for v in values], fontsize=8)
        ax.set_xticks(range(len(rows)), methods, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 110)
        ax.set_ylabel(f"{label} (%)")
        ax.set_title(f"{label}, n = {', '.join(map(str, n))}", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def _pointing_panel(
    ax: Any, image: np.ndarray, saliency_map: np.ndarray, boxes: np.ndarray, tolerance: float
) -> str:
    """The map over the image with its boxes and maximum drawn; returns "hit", "miss" or "blank"."""
    h, w = saliency_map.shape
    extent = (-0.5, w - 0.5, h - 0.5, -0.5)  # the image, whatever its resolution, spans the map's pixels
    ax.imshow(_hwc(image), extent=extent)
    ax.imshow(saliency_map, cmap="jet", alpha=0.45, vmin=0, vmax=1, extent=extent)
    for y0, x0, y1, x1 in np.asarray(boxes).reshape(-1, 4):
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="white", lw=1.5))
    game = pointing_game(saliency_map[None], [boxes], tolerance=tolerance)
    py, px = game["points"][0]
    ax.add_patch(Circle((px, py), tolerance, fill=False, ec="black", lw=1, ls="--"))
    ax.plot(px, py, marker="X", ms=8, mec="black", mfc="white")
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    _bare(ax)
    return "blank" if not saliency_map.any() else ("hit" if game["hits"][0] else "miss")


def pointing_examples(
    images: Sequence[np.ndarray],
    maps: dict[str, Sequence[np.ndarray]],
    boxes: Sequence[np.ndarray],
    tolerance: float,
    path: str | Path,
    labels: Sequence[str] | None = None,
) -> Path:
    """One row per item, one column per method: the map over the image, the ground-truth boxes (white),
    the map's maximum (X) with the hit radius around it (dashed), hit / miss / blank in the title.

    Args:
        images: per item the model input (C,h,w) in [0,1]; it is stretched over the map's pixels.
        maps: method -> per item its map (H,W) in [0,1], at the size the boxes are given in.
        boxes: per item (k,4) ``y0, x0, y1, x1`` in map pixels. tolerance: hit radius in map pixels.
        labels: per item the row's label (default ``"item i"``).
    """
    methods = list(maps)
    size = (max(2.1 * len(methods), 4.8), 2.45 * len(images) + 0.4)  # room for each row's titles
    fig, axes = plt.subplots(len(images), len(methods), figsize=size, squeeze=False)
    for i, image in enumerate(images):
        for j, method in enumerate(methods):
            outcome = _pointing_panel(axes[i, j], image, np.asarray(maps[method][i]), boxes[i], tolerance)
            axes[i, j].set_title(
                f"{method}: {outcome}", fontsize=9, color="black" if outcome == "hit" else "red"
            )
        axes[i, 0].set_ylabel(labels[i] if labels is not None else f"item {i}", fontsize=9)
    fig.suptitle(
        f"Pointing game\nbox (white), maximum (X), hit radius {tolerance:.3g} px (dashed)", fontsize=9
    )
    return _save(fig, path)


def spread_steps(n_steps: int, k: int = MAX_CASCADE_COLUMNS) -> list[int]:
    """At most ``k`` steps of ``1..n_steps`` spread evenly, the first and the last always among them."""
    if n_steps < 1:
        return []
    return sorted({int(round(s)) for s in np.linspace(1, n_steps, min(k, n_steps))})


def sanity_cascade(
    images: np.ndarray,
    trained: np.ndarray,
    maps: np.ndarray,
    layers: Sequence[str],
    rows: Sequence[dict[str, Any]],
    path: str | Path,
    title: str,
) -> Path:
    """The cascading-randomisation figure: per image a row with the image, the trained model's map and
    the maps after randomising down to each of ``layers``; below, the mean Spearman of every cascade
    step (the steps drawn above marked).

    Args:
        images: (k,C,H,W) in [0,1]. trained: (k,H,W) maps. maps: (S,k,H,W) maps after S cascade steps.
        layers: the S layers randomised last at those steps.
        rows: every cascade step: ``layer`` and ``mean_spearman`` (None or NaN where undefined).
    """
    k, s = len(images), len(layers)
    fig = plt.figure(figsize=(1.45 * (s + 2) + 0.4, 1.5 * k + 3.0))
    grid = fig.add_gridspec(k + 1, s + 2, height_ratios=[1.0] * k + [1.7])
    titles = ["image", "trained", *layers]
    for i in range(k):
        panels = [_hwc(images[i]), trained[i], *maps[:, i]]
        for j, (panel, label) in enumerate(zip(panels, titles)):
            ax = fig.add_subplot(grid[i, j])
            ax.imshow(panel, **({} if j == 0 else {"cmap": "jet", "vmin": 0, "vmax": 1}))
            _bare(ax)
            if j > 0 and not panel.any():
                ax.text(0.5, 0.5, "blank", color="white", ha="center", va="center", transform=ax.transAxes)
            if i == 0:
                ax.set_title(label if j < 2 else f"-> {label}", fontsize=7)
            if j == 0:
                ax.set_ylabel(f"image {i}", fontsize=8)
    ax = fig.add_subplot(grid[k, :])
    names = [str(r["layer"]) for r in rows]
    rho = np.array([np.nan if r["mean_spearman"] is None else r["mean_spearman"] for r in rows], float)
    ax.plot(range(len(rows)), rho, marker=".", color="C0")
    shown = [names.index(layer) for layer in layers if layer in names]
    ax.plot(shown, rho[shown], "o", mfc="none", mec="C3", label="maps shown above")
    ax.axhline(0, color="0.5", lw=0.8)
    every = max(1, len(rows) // 20)
    ax.set_xticks(range(0, len(rows), every), names[::every], rotation=40, ha="right", fontsize=7)
    ax.set_xlabel("randomised down to (cascade step)", fontsize=8)
    ax.set_ylabel("mean Spearman", fontsize=8)
    ax.set_ylim(min(-0.1, np.nanmin(rho, initial=0.0) - 0.05), 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def insertion_deletion_curves(curves: dict[str, dict[str, Any]], path: str | Path) -> Path:
    """Mean insertion and deletion curves, one line per method, its AUC and n in the legend.

    ``curves[method]`` holds ``insertion_curve`` and ``deletion_curve`` (the mean class probability at
    each step), ``insertion`` and ``deletion`` (mean AUCs) and ``n``.
    """
    methods = list(curves)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), squeeze=False)
    what = (("insertion", "insertion (higher is better)"), ("deletion", "deletion (lower is better)"))
    for ax, (key, label) in zip(axes[0], what):
        for method, (colour, ls) in zip(methods, _styles(methods)):
            c = curves[method]
            y = np.asarray(c[f"{key}_curve"], dtype=float)
            name = f"{method} (AUC {c[key]:.3f}, n={c['n']})"
            ax.plot(np.linspace(0, 1, len(y)), y, color=colour, ls=ls, label=name)
        ax.set_xlabel(f"fraction of pixels {'inserted' if key == 'insertion' else 'deleted'}")
        ax.set_ylabel("mean probability of the class")
        ax.set_ylim(0, 1.02)
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)
