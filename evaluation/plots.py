"""Figures of an experiment: norm-vs-area curves per attack and an image/map/mask/perturbation grid.

Matplotlib runs headless (Agg); every function writes PNGs and returns their paths.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from evaluation.run_folder import make_dir, save_figure  # noqa: E402
from evaluation.runner import UNFOCUSED  # noqa: E402

#: Norms drawn by :func:`norm_vs_area`: (summary key, axis label).
CURVE_NORMS = (
    ("median_l2", "median L2"),
    ("median_linf", "median L-inf"),
    ("median_l0", "median L0 (pixels)"),
)


def norm_vs_area(rows: Sequence[dict[str, Any]], folder: str | Path) -> list[Path]:
    """One PNG per attack, ``norm_vs_area_{attack}.png``: median norms against the mask area.

    One line per focuser; the unfocused attack is a dashed horizontal line. Rows are
    :func:`evaluation.report.summarize` rows.
    """
    folder = make_dir(folder)
    paths = []
    for attack in dict.fromkeys(r["attack"] for r in rows):
        mine = [r for r in rows if r["attack"] == attack]
        focusers = list(dict.fromkeys(r["focuser"] for r in mine if r["focuser"] != UNFOCUSED))
        full = next((r for r in mine if r["focuser"] == UNFOCUSED), None)
        fig, axes = plt.subplots(1, len(CURVE_NORMS), figsize=(4.2 * len(CURVE_NORMS), 3.4))
        for ax, (key, label) in zip(axes, CURVE_NORMS):
            for focuser in focusers:
                points = sorted(
                    (r["area"], r[key]) for r in mine if r["focuser"] == focuser and r[key] is not None
                )
                if points:
                    xs, ys = zip(*points)
                    ax.plot(np.multiply(xs, 100), ys, marker="o", label=focuser)
            if full is not None and full[key] is not None:
                ax.axhline(full[key], color="black", linestyle="--", linewidth=1, label="unfocused")
            ax.set_xlabel("mask area (% of pixels)")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
        if axes[0].get_legend_handles_labels()[0]:
            axes[0].legend(fontsize=8)
        fig.suptitle(f"{attack}: smallest successful perturbation vs mask area")
        fig.tight_layout()
        path = folder / f"norm_vs_area_{attack}.png"
        save_figure(fig, path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def _hwc(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image, dtype=np.float32)
    return np.clip(img.transpose(1, 2, 0) if img.ndim == 3 else img, 0.0, 1.0)


def attack_grid(examples: dict[str, np.ndarray], path: str | Path, max_images: int = 2) -> Path:
    """Grid with one row per (image, focuser): image, map, mask, perturbation, adversarial image.

    ``examples`` holds ``"x"`` (k,C,H,W) and per focuser ``"adv:{focuser}"`` (k,C,H,W), optionally
    ``"map:{focuser}"`` (k,H,W) and ``"mask:{focuser}"`` (k,1,H,W); the unfocused attack is
    ``"adv:none"``. The perturbation is shown as ``|x_adv - x|`` summed over channels, scaled per panel.
    """
    x = np.asarray(examples["x"])
    focusers = [k.split(":", 1)[1] for k in examples if k.startswith("adv:")]
    if not focusers:
        raise ValueError("examples: no 'adv:{focuser}' entries to draw")
    k = min(max_images, len(x))
    columns = ("image", "map", "mask", "|perturbation|", "adversarial")
    n_rows = k * len(focusers)
    fig, axes = plt.subplots(n_rows, len(columns), figsize=(2.0 * len(columns), 2.0 * n_rows), squeeze=False)
    for i in range(k):
        for j, focuser in enumerate(focusers):
            row = axes[i * len(focusers) + j]
            adv = np.asarray(examples[f"adv:{focuser}"])[i]
            delta = np.abs(adv - x[i]).sum(axis=0)
            panels = [
                _hwc(x[i]),
                np.asarray(examples[f"map:{focuser}"])[i] if f"map:{focuser}" in examples else None,
                np.asarray(examples[f"mask:{focuser}"])[i].reshape(x.shape[-2:])
                if f"mask:{focuser}" in examples
                else None,
                delta / delta.max() if delta.max() > 0 else delta,
                _hwc(adv),
            ]
            for c, (ax, panel) in enumerate(zip(row, panels)):
                ax.set_xticks([])
                ax.set_yticks([])
                if panel is not None:
                    ax.imshow(
                        panel, cmap=None if panel.ndim == 3 else ("jet" if c == 1 else "gray"), vmin=0, vmax=1
                    )
                if i == 0 and j == 0:
                    ax.set_title(columns[c], fontsize=9)
            row[0].set_ylabel(f"#{i} {focuser}", fontsize=8)
    return _save(fig, path)


def _save(fig: Any, path: str | Path, dpi: int = 90) -> Path:
    """Lay out ``fig``, write it to ``path`` (folders made) and close it."""
    fig.tight_layout()
    path = Path(path)
    make_dir(path.parent)
    save_figure(fig, path, dpi)
    plt.close(fig)
    return path


#: Panels of :func:`paper_figure`: (focuser, what is drawn, title).
PAPER_PANELS = (
    ("none", "x", "image"),
    ("gradcam", "map", "Grad-CAM"),
    ("cameras", "map", "CAMERAS"),
    ("gpnn-cam", "map", "GPNN-CAM"),
    ("none", "delta", "plain PGD |delta|"),
    ("cameras", "delta", "CAMERAS-focused |delta|"),
)


def paper_figure(arrays: dict[str, dict[str, np.ndarray]], path: str | Path, title: str) -> Path:
    """One image under the CAMERAS paper protocol: the image, three maps, and the plain and CAMERAS-focused
    perturbations as |delta| summed over channels, magnified by one shared factor (the larger maximum of
    the two maps to white), so their sizes compare. ``arrays[focuser]`` holds ``x``, ``delta`` and (not
    for ``none``) ``map``; a missing one leaves its panel empty."""
    deltas = {f: np.abs(a["delta"]).sum(axis=0) for f, a in arrays.items() if "delta" in a}
    scale = max((float(d.max()) for d in deltas.values()), default=0.0) or 1.0
    fig, axes = plt.subplots(1, len(PAPER_PANELS), figsize=(2.2 * len(PAPER_PANELS), 2.6))
    for ax, (focuser, what, label) in zip(axes, PAPER_PANELS):
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(label, fontsize=8)
        entry = arrays.get(focuser)
        if entry is None or (what == "map" and "map" not in entry):
            ax.text(0.5, 0.5, "not run", ha="center", va="center", fontsize=8, transform=ax.transAxes)
            continue
        if what == "x":
            ax.imshow(_hwc(entry["x"]))
        elif what == "map":
            ax.imshow(entry["map"], cmap="jet", vmin=0, vmax=1)
        else:
            l2 = float(np.sqrt((entry["delta"].astype(np.float64) ** 2).sum()))
            ax.imshow(deltas[focuser] / scale, cmap="gray", vmin=0, vmax=1)
            ax.set_xlabel(f"L2 {l2:.3f}, x{1 / scale:.0f}", fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)
