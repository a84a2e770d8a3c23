"""Image figures of an experiment: the examples grid (image, map, mask, perturbation, adversarial image
per attack) and the per-image figure of the CAMERAS paper protocol; :func:`save` writes any figure.

Matplotlib runs headless (Agg). ``*_figure`` functions build and return a figure (for tests to inspect);
the others write PNGs and return their paths. The norm charts are in :mod:`evaluation.norm_plots`.
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

from evaluation.focusers import UNFOCUSED  # noqa: E402
from evaluation.run_folder import make_dir, save_figure  # noqa: E402

#: Columns of :func:`attack_grid_figure`.
GRID_COLUMNS = ("image", "map", "mask", "|perturbation|", "adversarial")


def save(fig: Figure, path: str | Path, dpi: int = 90) -> Path:
    """Write ``fig`` to ``path`` as a PNG (folders made) with :func:`evaluation.run_folder.save_figure`
    and close it.

    Args:
        fig: the figure; its layout engine (constrained or tight) lays it out while it is drawn.
        path: the PNG written.
        dpi: resolution.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    make_dir(path.parent)
    try:
        save_figure(fig, path, dpi)
    finally:
        plt.close(fig)
    return path


def _hwc(image: np.ndarray) -> np.ndarray:
    """(C,H,W) in [0,1] -> (H,W,C) for imshow, clipped; one channel -> (H,W)."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3:
        img = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
    return np.clip(img, 0.0, 1.0)


def row_caption(
    image: int, focuser: str, attack: str | None, area: float | None, record: dict[str, Any] | None, l2: float
) -> str:
    """The label of one row of the examples grid: image, attack, focuser and area, then its outcome.

    Args:
        image: the image's index.
        focuser: the row's focuser (``"none"``: the unfocused attack, written "full image").
        attack: the attack's name (None: not stated).
        area: the focused rows' mask area, a fraction (None: not stated).
        record: the row's record (``correct``, ``success``, ``label``, ``adv_pred``, ``l2``), or None.
        l2: the L2 norm of the row's arrays, stated when there is no record.

    Returns:
        Three lines: ``"#i attack"``, ``"full image"`` or ``"focuser, a % area"``, and
        ``"adv. class c (label y), L2 v"`` (or why there is no adversarial class).
    """
    where = "full image" if focuser == UNFOCUSED else focuser
    if focuser != UNFOCUSED and area is not None:
        where += f", {100 * area:g} % area"
    if record is None:
        outcome = f"L2 {l2:.3g}"
    elif not record.get("correct", True):
        outcome = "not attacked (misclassified)"
    elif not record["success"]:
        outcome = f"failed: class {record['adv_pred']}"
    else:
        outcome = f"adv. class {record['adv_pred']} (label {record['label']}), L2 {record['l2']:.3g}"
    return f"#{image} {attack or ''}".rstrip() + f"\n{where}\n{outcome}"


def _grid_records(
    records: Sequence[dict[str, Any]], attack: str | None, area: float | None
) -> dict[tuple[int, str], dict[str, Any]]:
    """The records of the grid's cells by (image, focuser): ``attack`` at ``area`` (unfocused: 1.0)."""
    found: dict[tuple[int, str], dict[str, Any]] = {}
    for r in records:
        focuser = str(r["focuser"])
        if r["attack"] == attack and float(r["area"]) == (1.0 if focuser == UNFOCUSED else area):
            found.setdefault((int(r["image"]), focuser), r)
    return found


def _colour_bars(fig: Figure, block: np.ndarray, maps: list[Any], image: int) -> None:
    """Colour bars of one image's rows ``block``: its perturbation column and (if drawn) its maps."""
    bars = [(block[0][3].images[0], block[:, 3], f"#{image} |perturbation| (max over channels)")]
    bars += [(maps[0], block[:, 1], "saliency map")] if maps else []
    for mappable, column, label in bars:
        bar = fig.colorbar(mappable, ax=list(column), shrink=0.8, aspect=30)
        bar.set_label(label, fontsize=7)
        bar.ax.tick_params(labelsize=6)


def attack_grid_figure(
    examples: dict[str, np.ndarray],
    records: Sequence[dict[str, Any]] = (),
    attack: str | None = None,
    area: float | None = None,
    max_images: int = 2,
) -> Figure:
    """Examples grid, one row per (image, focuser): image, map, mask, perturbation, adversarial image.

    The perturbation is ``|x_adv - x|``, the largest over the channels, on one colour scale per image
    (shared by all its rows, so they compare; set by the successful rows when ``records`` tell which);
    the perturbations and the maps have a colour bar per image. Each row is labelled by
    :func:`row_caption`.

    Args:
        examples: ``"x"`` (k,C,H,W) and per focuser ``"adv:{focuser}"`` (k,C,H,W), optionally
            ``"map:{focuser}"`` (k,H,W) and ``"mask:{focuser}"`` (k,1,H,W); the unfocused attack is
            ``"adv:none"``. Image ``i`` of the arrays is dataset image ``i``.
        records: the run's records; those of ``attack`` at ``area`` (unfocused: 1.0) give each row's
            adversarial class and L2.
        attack: the attack the arrays come from.
        area: the mask area of the focused rows.
        max_images: at most this many images are drawn.

    Returns:
        The figure (close it with ``plt.close``).

    Raises:
        ValueError: when ``examples`` holds no ``"adv:{focuser}"`` entry.
    """
    x = np.asarray(examples["x"])
    focusers = [k.split(":", 1)[1] for k in examples if k.startswith("adv:")]
    if not focusers:
        raise ValueError("examples: no 'adv:{focuser}' entries to draw")
    cells = _grid_records(records, attack, area)
    k = min(max_images, len(x))
    n_rows = k * len(focusers)
    fig, axes = plt.subplots(
        n_rows, len(GRID_COLUMNS), figsize=(12, 1.9 * n_rows + 0.3), squeeze=False, layout="constrained"
    )
    for i in range(k):
        advs = {f: np.asarray(examples[f"adv:{f}"])[i].astype(np.float64) for f in focusers}
        deltas = {f: np.abs(advs[f] - x[i]).max(axis=0) for f in focusers}
        won = [f for f in focusers if cells.get((i, f), {}).get("success")]
        vmax = max(float(deltas[f].max()) for f in won or focusers) or 1.0
        block = axes[i * len(focusers) : (i + 1) * len(focusers)]
        maps = []
        for row, focuser in zip(block, focusers):
            maps += _grid_row(row, examples, i, focuser, deltas[focuser], vmax)
            l2 = float(np.sqrt(((advs[focuser] - x[i]) ** 2).sum()))
            caption = row_caption(i, focuser, attack, area, cells.get((i, focuser)), l2)
            row[0].set_ylabel(caption, fontsize=7)
        _colour_bars(fig, block, maps, i)
    for ax, title in zip(axes[0], GRID_COLUMNS):
        ax.set_title(title, fontsize=9)
    return fig


def _grid_row(
    row: Sequence[Any], examples: dict[str, np.ndarray], i: int, focuser: str, delta: Any, vmax: float
) -> list[Any]:
    """Draw one row of :func:`attack_grid_figure`; return its map image (a list of 0 or 1)."""
    x = np.asarray(examples["x"])[i]
    for ax in row:
        ax.set_xticks([])
        ax.set_yticks([])
    gray = {"cmap": "gray", "vmin": 0, "vmax": 1}
    row[0].imshow(_hwc(x), **gray)
    maps = []
    if f"map:{focuser}" in examples:
        maps.append(row[1].imshow(np.asarray(examples[f"map:{focuser}"])[i], cmap="jet", vmin=0, vmax=1))
    else:  # a white image keeps the panel's size
        row[1].imshow(np.ones(x.shape[-2:]), **gray)
        row[1].text(0.5, 0.5, "no map", ha="center", va="center", fontsize=8, transform=row[1].transAxes)
    mask = examples.get(f"mask:{focuser}")
    row[2].imshow(
        np.ones(x.shape[-2:]) if mask is None else np.asarray(mask)[i].reshape(x.shape[-2:]), **gray
    )
    row[3].imshow(delta, cmap="magma", vmin=0, vmax=vmax)
    row[4].imshow(_hwc(np.asarray(examples[f"adv:{focuser}"])[i]), **gray)
    return maps


def attack_grid(
    examples: dict[str, np.ndarray],
    path: str | Path,
    records: Sequence[dict[str, Any]] = (),
    attack: str | None = None,
    area: float | None = None,
    max_images: int = 2,
) -> Path:
    """Write :func:`attack_grid_figure` to ``path`` (PNG, folders made).

    Args:
        examples: see :func:`attack_grid_figure`.
        path: the PNG written.
        records: the run's records (row captions and the shared perturbation scale).
        attack: the attack the arrays come from.
        area: the mask area of the focused rows.
        max_images: at most this many images are drawn.

    Returns:
        ``path``.
    """
    return save(attack_grid_figure(examples, records, attack, area, max_images), path)


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
    fig, axes = plt.subplots(1, len(PAPER_PANELS), figsize=(2.2 * len(PAPER_PANELS), 2.6), layout="tight")
    for ax, (focuser, what, label) in zip(axes, PAPER_PANELS):
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(label, fontsize=8)
        entry = arrays.get(focuser)
        if entry is None or (what == "map" and "map" not in entry):
            ax.text(0.5, 0.5, "not run", ha="center", va="center", fontsize=8, transform=ax.transAxes)
            continue
        if what == "x":
            ax.imshow(_hwc(entry["x"]), cmap="gray")
        elif what == "map":
            ax.imshow(entry["map"], cmap="jet", vmin=0, vmax=1)
        else:
            l2 = float(np.sqrt((entry["delta"].astype(np.float64) ** 2).sum()))
            ax.imshow(deltas[focuser] / scale, cmap="gray", vmin=0, vmax=1)
            ax.set_xlabel(f"L2 {l2:.3f}, x{1 / scale:.0f}", fontsize=7)
    fig.suptitle(title, fontsize=9)
    return save(fig, path)
