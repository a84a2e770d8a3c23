"""Focused PGD on an ImageNet model, compared the fair way: for the unfocused attack and for the attack
confined to the top 10 % of a CAMERAS map, the *smallest* L-inf budget that fools the model is searched
per image, and the norms of those minimal perturbations are compared.

    python examples/focused_pgd_torchvision.py                                   # EfficientNet-Lite0, offline
    python examples/focused_pgd_torchvision.py --model resnet50 --weights DEFAULT  # torchvision (downloads)

Comparing L2 at one imposed eps would be unfair: the focused attack changes fewer pixels, so its L2 is
smaller whether or not the map is any good. The photos are the bundled ones (chelsea, coffee, astronaut,
...). Writes each map's overlay and adversarial image into the folder ``--out``. About 5 minutes for the
default 3 photos on a 2-core CPU. On EfficientNet-Lite0 the untargeted minimal budgets are tiny (well
under 1/255 for the whole image), and confined to 10 % of the pixels the attack needs a larger L2 on
these photos: the example prints what it finds.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from evaluation import zoo
from evaluation.datasets import sample_photos
from evaluation.metrics import norm_reduction, perturbation_norms
from evaluation.run_folder import make_dir, save_image
from focused_attacks import FocusedPGD, minimal_eps
from saliency import CAMERAS
from saliency.plot import overlay


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument(
        "--weights", default=None, help="None (the model's own), DEFAULT, or a state_dict file"
    )
    parser.add_argument("--n", type=int, default=3, help="photos to attack (default 3)")
    parser.add_argument("--area", type=float, default=0.1, help="fraction of pixels the attack may change")
    parser.add_argument("--out", default="runs/focused_pgd_torchvision", help="output folder")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    classifier = zoo.classifier(args.model, args.weights, device="cpu")
    size = zoo.input_size(args.model)[-1]
    resize = zoo.resize_size(args.model, size, args.weights)  # as the weights' own transforms
    x, names = sample_photos(size, resize=resize, interpolation=zoo.resize_interpolation(args.model))
    x, names = x[: args.n], names[: args.n]
    label = classifier.predict(x).argmax(axis=1)

    layer = zoo.default_layers(args.model)[0]
    maps = CAMERAS(classifier, layer)(torch.from_numpy(x), targets=torch.from_numpy(label)).numpy()

    # The smallest eps on a log grid over [2 ** -16, 1] (8 halvings: within 4.4 % of the threshold).
    search = dict(low=2.0**-16, high=1.0, steps=8, scale="log")
    pgd = dict(eps=1.0, eps_step=0.25, max_iter=10, verbose=False)
    full = minimal_eps(FocusedPGD(classifier, **pgd), x, label, **search)
    focused = minimal_eps(FocusedPGD(classifier, area=args.area, **pgd), x, label, maps=maps, **search)

    out = make_dir(args.out)
    print(f"{args.model}: CAMERAS at {layer}, PGD with the smallest fooling L-inf budget per image")
    for i, name in enumerate(names):
        save_image(out / f"{name}_cameras.png", overlay(x[i], maps[i]))
        save_image(
            out / f"{name}_adversarial.png",
            np.round(255 * focused.x_adv[i].transpose(1, 2, 0)).astype(np.uint8),
        )
        for what, result in (("unfocused", full), (f"top {100 * args.area:g} %", focused)):
            norms = perturbation_norms(x[i : i + 1], result.x_adv[i : i + 1])
            found = "none fooled it" if np.isnan(result.eps[i]) else f"eps {255 * result.eps[i]:.2f}/255"
            print(f"  {name:>12} {what:>10}: {found}, L2 {float(norms['l2'][0]):.3f}")
    reports = [
        {"success": np.isfinite(result.eps), **perturbation_norms(x, result.x_adv)}
        for result in (focused, full)
    ]
    l2 = norm_reduction(*reports)["l2"]
    print(f"median paired L2 reduction over {l2['n']} images: {l2['median_reduction']:.1f} % -> {out}")


if __name__ == "__main__":
    main()
