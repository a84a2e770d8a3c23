"""Focused PGD on a torchvision model: a CAMERAS map picks the top 10 % of the pixels, L-inf PGD may only
change those, and the result is compared with the unfocused attack.

    python examples/focused_pgd_torchvision.py                      # resnet18, random weights (smoke run)
    python examples/focused_pgd_torchvision.py --weights DEFAULT    # ImageNet weights (downloads them)

The photo is scikit-image's ``chelsea`` (a cat). With random weights the classes mean nothing, but every
step runs; pass ``--weights DEFAULT`` for meaningful maps. Writes the map overlay and the adversarial
image to ``--out``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage import data

from evaluation import zoo
from evaluation.cli import resize_crop
from evaluation.metrics import perturbation_norms
from focused_attacks import FocusedPGD
from saliency import CAMERAS
from saliency.plot import save_overlay


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--weights", default=None, help="None (random), DEFAULT, or a state_dict file")
    parser.add_argument("--area", type=float, default=0.1, help="fraction of pixels the attack may change")
    parser.add_argument("--eps", type=float, default=8 / 255, help="L-inf budget")
    parser.add_argument("--out", default="runs/focused_pgd_torchvision")
    args = parser.parse_args()

    torch.manual_seed(0)
    classifier = zoo.classifier(args.model, args.weights, device="cpu")
    size = zoo.input_size(args.model)[-1]
    resize = zoo.resize_size(args.model, size, args.weights)  # as the weights' own transforms
    x = resize_crop(data.chelsea(), size, resize)[None]  # (1,3,size,size) in [0,1]
    label = classifier.predict(x).argmax(axis=1)

    layer = zoo.default_layers(args.model)[0]
    # Scales 1x..2x of the input instead of the official 1x..~4x: a quarter of the CPU time.
    cameras = CAMERAS(classifier, layer, resolutions=[size, round(1.5 * size), 2 * size])
    maps = cameras(torch.from_numpy(x), targets=torch.from_numpy(label)).numpy()

    pgd = dict(eps=args.eps, eps_step=args.eps / 4, max_iter=10, verbose=False)
    x_full = FocusedPGD(classifier, **pgd).generate(x, label)
    x_focus = FocusedPGD(classifier, area=args.area, **pgd).generate(x, label, maps=maps)

    out = Path(args.out)
    save_overlay(out / "cameras_overlay.png", x[0], maps[0])
    Image.fromarray(np.round(255 * x_focus[0].transpose(1, 2, 0)).astype(np.uint8)).save(
        out / "adversarial.png"
    )
    print(f"{args.model} (weights={args.weights}): clean class {int(label[0])}, CAMERAS at {layer}")
    for name, x_adv in (("unfocused", x_full), (f"focused {100 * args.area:g}%", x_focus)):
        norms = perturbation_norms(x, x_adv)
        pred = int(classifier.predict(x_adv).argmax(axis=1)[0])
        print(
            f"  {name:>12}: class {pred} ({'fooled' if pred != label[0] else 'not fooled'}), "
            f"L0 {int(norms['l0_pixels'][0])} px, L2 {float(norms['l2'][0]):.3f}, "
            f"Linf {float(norms['linf'][0]):.4f}"
        )
    print(f"wrote {out}/cameras_overlay.png and {out}/adversarial.png")


if __name__ == "__main__":
    main()
