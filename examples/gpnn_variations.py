"""Write a grid PNG of GPNN variations of scikit-image's bundled photos (chelsea, coffee, astronaut).

Each row: the source image, then ``--n`` variations. The default (64 px short side, 4 variations) takes
about 10 s on a 2-core CPU. Writes ``variations.png`` into the folder ``--out`` (default
``runs/gpnn_variations``). Example: ``python examples/gpnn_variations.py --size 96 --n 4 --out runs/gpnn``.
"""

from __future__ import annotations

import argparse
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import skimage.data  # noqa: E402
import skimage.transform  # noqa: E402
import torch  # noqa: E402

from evaluation.run_folder import make_dir, save_figure  # noqa: E402
from saliency import GPNN  # noqa: E402

PHOTOS = ("chelsea", "coffee", "astronaut")


def load_photo(name: str, short_side: int) -> torch.Tensor:
    """A bundled photo resized (antialiased) to the given short side: (3,H,W) float32 in [0,1]."""
    image = getattr(skimage.data, name)()
    height, width = image.shape[:2]
    scale = short_side / min(height, width)
    small = skimage.transform.resize(image, (round(height * scale), round(width * scale)), anti_aliasing=True)
    return torch.from_numpy(small).permute(2, 0, 1).float().clamp(0, 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="short side of the photos in pixels")
    parser.add_argument("--n", type=int, default=4, help="variations per photo")
    parser.add_argument("--iters", type=int, default=10, help="PNN iterations per pyramid level")
    parser.add_argument("--fold", default="uniform", choices=["uniform", "distance"], help="patch averaging")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="runs/gpnn_variations", help="output folder (variations.png)")
    args = parser.parse_args(argv)

    gpnn = GPNN(iters=args.iters, fold=args.fold, device=args.device, verbose=True)
    n_rows, n_cols = len(PHOTOS), args.n + 1
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2 * n_cols, 2 * n_rows), squeeze=False)
    for row, name in enumerate(PHOTOS):
        image = load_photo(name, args.size)
        start = time.perf_counter()
        variations = gpnn.generate(image, args.n, seed=args.seed).cpu()
        seconds = (time.perf_counter() - start) / args.n
        print(f"{name} {tuple(image.shape[1:])}: {seconds:.2f} s per variation")
        for col, picture in enumerate([image, *variations]):
            axes[row, col].imshow(picture.permute(1, 2, 0).numpy())
            axes[row, col].set_axis_off()
        axes[row, 0].set_title(f"{name} (source)", fontsize=8)
    fig.tight_layout()
    path = save_figure(fig, make_dir(args.out) / "variations.png", dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
