"""Speed and equality of the focused attacks against ART's own attacks on the same inputs, mask and
iterations: FocusedPGD vs ProjectedGradientDescent(mask=...), FocusedFGSM vs FastGradientMethod(mask=...),
FocusedCarliniL2 (mask of ones) vs CarliniL2Method.

    python benchmarks/attack_speed.py [--model resnet18|small-cnn] [--size 64] [--n 32] [--batch-size 32]

Prints one row per attack: ART seconds, focused seconds, the ratio ART / focused (> 1 = faster), the
largest absolute difference between the two outputs and the fraction of images the focused attack
fooled. Timings are the best of ``--repeats`` interleaved runs after one
warm-up call.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch
import torchvision
from art.attacks.evasion import CarliniL2Method, FastGradientMethod, ProjectedGradientDescent
from art.estimators.classification import PyTorchClassifier
from torch import nn

from focused_attacks import FocusedCarliniL2, FocusedFGSM, FocusedPGD
from saliency import masks


class SmallCNN(nn.Module):
    """Three 3x3 convolutions, a max-pool and a linear head on global average pooling: 10 logits."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
        )
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))

    @torch.no_grad()
    def standardise_head(self, size: int) -> SmallCNN:
        """Untrained nets give nearly the same logits for every image; standardising the pooled features
        (estimated on random images) in the head makes predictions vary so the attacks have work to do."""
        feats = self.features(torch.rand(64, 3, size, size)).mean(dim=(2, 3))
        spread = feats.std(0)
        self.fc.weight.mul_(torch.where(spread > 1e-6, 1 / spread.clamp_min(1e-6), 0.0))
        self.fc.bias.copy_(-(self.fc.weight @ feats.mean(0)))
        return self


def build_model(name: str, size: int) -> nn.Module:
    torch.manual_seed(0)
    if name == "resnet18":
        return torchvision.models.resnet18(weights=None, num_classes=10).eval()
    return SmallCNN().standardise_head(size).eval()


def interleaved_best_times(
    reference: Callable[[], np.ndarray], focused: Callable[[], np.ndarray], repeats: int
) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Alternate the two runs ``repeats`` times (so a busy machine slows both alike) and keep each one's
    fastest wall time: (ART s, focused s, ART output, focused output)."""
    times: tuple[list[float], list[float]] = ([], [])
    outputs: list[np.ndarray] = [np.empty(0), np.empty(0)]
    for _ in range(repeats):
        for slot, run in enumerate((reference, focused)):
            start = time.perf_counter()
            outputs[slot] = run()
            times[slot].append(time.perf_counter() - start)
    return min(times[0]), min(times[1]), outputs[0], outputs[1]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["resnet18", "small-cnn"], default="resnet18")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument("--n", type=int, default=32, help="number of images (default 32)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--pgd-iter", type=int, default=10)
    parser.add_argument("--cw-steps", type=int, default=2, help="C&W binary search steps (default 2)")
    parser.add_argument("--cw-iter", type=int, default=3, help="C&W iterations per step (default 3)")
    parser.add_argument("--cw-const", type=float, default=10.0, help="C&W initial constant (default 10)")
    parser.add_argument("--cw-lr", type=float, default=0.1, help="C&W learning rate (default 0.1)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--area", type=float, default=0.1)
    return parser


def _cases(args: argparse.Namespace, clf: PyTorchClassifier, x: np.ndarray, mask: np.ndarray) -> list:
    """(name, ART's attack, the focused one, repeats) of every compared attack."""
    ones = np.ones_like(mask)
    bs = args.batch_size
    pgd = dict(eps=8 / 255, eps_step=2 / 255, max_iter=args.pgd_iter, batch_size=bs, verbose=False)
    cw = dict(
        binary_search_steps=args.cw_steps,
        max_iter=args.cw_iter,
        initial_const=args.cw_const,
        learning_rate=args.cw_lr,
        batch_size=bs,
        verbose=False,
    )

    return [
        (
            f"PGD Linf ({args.pgd_iter} it, area {args.area})",
            lambda: ProjectedGradientDescent(clf, **pgd).generate(x, mask=mask),
            lambda: FocusedPGD(clf, **pgd).generate(x, mask=mask),
            args.repeats,
        ),
        (
            f"FGSM Linf (area {args.area})",
            lambda: FastGradientMethod(clf, eps=8 / 255, batch_size=bs).generate(x, mask=mask),
            lambda: FocusedFGSM(clf, eps=8 / 255, batch_size=bs).generate(x, mask=mask),
            args.repeats,
        ),
        (
            f"C&W L2 ({args.cw_steps}x{args.cw_iter}, full mask)",
            lambda: CarliniL2Method(clf, **cw).generate(x),
            lambda: FocusedCarliniL2(clf, **cw).generate(x, mask=ones),
            max(1, args.repeats - 1),
        ),
    ]


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    model = build_model(args.model, args.size)
    clf = PyTorchClassifier(
        model, nn.CrossEntropyLoss(), (3, args.size, args.size), 10, clip_values=(0.0, 1.0), device_type="cpu"
    )
    rng = np.random.default_rng(0)
    x = rng.random((args.n, 3, args.size, args.size), dtype=np.float32)
    mask = masks.top_k(rng.random((args.n, args.size, args.size), dtype=np.float32), args.area)
    print(
        f"{args.model} (untrained) {args.size}x{args.size}, {args.n} images, batch {args.batch_size}, "
        f"torch threads {torch.get_num_threads()}"
    )
    header = (
        f"{'attack':<34} {'ART s':>8} {'focused s':>10} {'ART/focused':>12} {'max |diff|':>11} {'fooled':>7}"
    )
    print(header)
    print("-" * len(header))
    clean = clf.predict(x).argmax(1)
    for name, reference, focused, repeats in _cases(args, clf, x, mask):
        reference()  # warm-up (allocator, first-call overheads)
        focused()
        t_ref, t_foc, out_ref, out_foc = interleaved_best_times(reference, focused, repeats)
        diff = float(np.abs(out_ref - out_foc).max())
        fooled = (clf.predict(out_foc).argmax(1) != clean).mean()
        print(f"{name:<34} {t_ref:>8.2f} {t_foc:>10.2f} {t_ref / t_foc:>11.2f}x {diff:>11.2e} {fooled:>7.0%}")


if __name__ == "__main__":
    main()
