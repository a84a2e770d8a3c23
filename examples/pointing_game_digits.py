"""Pointing game on the embedded benchmark: does each saliency map's maximum fall on the digit?

    python examples/pointing_game_digits.py [--n 200]

Cluttered digits (a handwritten digit among fragments of other digits) with the shipped digits CNN; the
maps are computed for the true class; a hit is a maximum within 15 x 64/224 = 4.3 px of the digit's box
(TorchRay's 15 px, which it applies at the original image size, scaled by us to these 64 px images as if
they were 224 px ones). The centre baseline shows how much a method beats "always point at the middle".
The CLI version is ``focused-attacks pointing-game``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from evaluation import datasets, zoo
from evaluation.focusers import compute_maps
from evaluation.saliency_metrics import energy_pointing_game, pointing_game

METHODS = ("centre", "gradcam", "hirescam", "gradcam++", "layercam", "cameras")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="number of test images")
    args = parser.parse_args()

    classifier = zoo.classifier("digits-cnn", device="cpu")
    layers = zoo.default_layers("digits-cnn")
    x, y, boxes = datasets.cluttered_digits(args.n, "test")
    accuracy = (classifier.predict(x).argmax(axis=1) == y).mean()
    print(f"digits-cnn accuracy on these {args.n} images: {100 * accuracy:.1f}%; target layer {layers[0]}")
    print(f"{'method':<10} {'pointing':>9} {'energy':>8} {'seconds':>8}")
    for method in METHODS:
        start = time.perf_counter()
        maps = compute_maps(method, classifier, x, y, np.arange(args.n), layers)
        seconds = time.perf_counter() - start
        hit = pointing_game(maps, boxes, tolerance=15 * 64 / 224)["accuracy"]
        energy = energy_pointing_game(maps, boxes)["mean"]
        print(f"{method:<10} {100 * hit:8.1f}% {100 * energy:7.1f}% {seconds:8.2f}")


if __name__ == "__main__":
    main()
