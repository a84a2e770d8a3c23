"""GPNN-CAM's pointing game on the cluttered digits with the exact and the FAISS searches.

For each configuration (``--configs``, as in ``benchmarks/gpnn_quality.py``, ``@S`` included), GPNN-CAM
maps the true class of the first ``--n`` test digits (the shipped digits-cnn, its three layers,
``--variations`` variations per image, the same seeds for every configuration), and the pointing game
scores them as ``focused-attacks pointing-game`` does (a hit: the map's maximum within 15 * 64 / 224 px
of the digit's box). It prints each configuration's accuracy, its difference from the exact search's on the
same digits with a paired bootstrap 95 % interval, and the share of digits where both point at the same
pixel.

Maps are saved in ``--out`` chunk by chunk (``<config>_<start>.npy``), the configurations taking turns, so a
run stopped at any time can be resumed, and its table printed (``--report``) on the digits that every
configuration has done.

Example: ``python benchmarks/gpnn_pointing.py --out runs/gpnn_pointing --n 1000 --variations 4``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: `benchmarks` importable

CHUNK = 20


def _maps(config: str, x: np.ndarray, y: np.ndarray, start: int, variations: int, seed: int) -> np.ndarray:
    from benchmarks.gpnn_quality import gpnn_and_seed
    from evaluation import zoo
    from saliency import GPNNCAM

    model = zoo.load("digits-cnn")
    gpnn, seed = gpnn_and_seed(config, seed)
    cam = GPNNCAM(model, zoo.default_layers("digits-cnn"), variations, min(10, variations), gpnn)
    maps = []
    for i in range(len(x)):  # one image at a time: seeds per image index, as in the evaluation
        cam.seed = seed + start + i
        maps.append(cam(torch.from_numpy(x[i : i + 1]), [int(y[i])])[0].numpy())
    return np.stack(maps)


def compute(out: Path, configs: list[str], n: int, variations: int, seed: int) -> None:
    """Every configuration's maps of the first ``n`` digits, chunk by chunk, configurations in turn."""
    from evaluation.datasets import cluttered_digits

    x, y, _ = cluttered_digits(n)
    for start in range(0, n, CHUNK):
        for config in configs:
            path = out / f"{config}_{start:05d}.npy"
            if not path.exists():
                maps = _maps(
                    config, x[start : start + CHUNK], y[start : start + CHUNK], start, variations, seed
                )
                np.save(path, maps)
                print(f"{config}: digits {start}-{start + len(maps) - 1} done", flush=True)


def report(out: Path, configs: list[str], n: int) -> None:
    """Accuracies on the digits every configuration has mapped."""
    from evaluation.datasets import cluttered_digits
    from evaluation.pointing import TORCHRAY_TOLERANCE
    from evaluation.saliency_metrics import pointing_game
    from evaluation.stats import bootstrap_ci

    maps = {}
    for config in configs:
        chunks = []
        for start in range(0, n, CHUNK):
            path = out / f"{config}_{start:05d}.npy"
            if not path.exists():
                break
            chunks.append(np.load(path))
        maps[config] = np.concatenate(chunks) if chunks else np.zeros((0, 64, 64), np.float32)
    done = min(len(m) for m in maps.values())
    _, _, boxes = cluttered_digits(done)
    radius = TORCHRAY_TOLERANCE * 64 / 224
    games = {c: pointing_game(m[:done], boxes, radius) for c, m in maps.items()}
    exact = games["exact"]["hits"].astype(float)
    print(f"pointing game on {done} digits (hit radius {radius:.2f} px)")
    for config, game in games.items():
        hits = game["hits"].astype(float)
        low, high = bootstrap_ci(hits - exact, np.mean) or (0.0, 0.0)
        same = (game["points"] == games["exact"]["points"]).all(axis=1).mean()
        print(
            f"{config}: {game['accuracy']:.1%}, minus exact {100 * (hits - exact).mean():+.1f} points "
            f"[{100 * low:+.1f}, {100 * high:+.1f}], same point as exact on {same:.1%}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the maps")
    parser.add_argument("--configs", nargs="+", default=["exact", "faiss"])
    parser.add_argument("--n", type=int, default=1000, help="digits (default 1000)")
    parser.add_argument("--variations", type=int, default=4, help="GPNN-CAM variations (default 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", action="store_true", help="only print the table of what is done")
    args = parser.parse_args()
    configs = ["exact", *[c for c in args.configs if c != "exact"]]
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report:
        compute(args.out, configs, args.n, args.variations, args.seed)
    report(args.out, configs, args.n)


if __name__ == "__main__":
    main()
