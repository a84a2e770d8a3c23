"""Which saliency map makes the best attack focuser? A small run of the experiment grid on the embedded
benchmark (cluttered digits + the shipped digits CNN): PGD unfocused and focused by CAMERAS, Grad-CAM,
LayerCAM and a random mask of the same area (the control), at 10 % of the pixels. (HiResCAM is left
out: behind a global-average-pooling head its gradients are spatially constant, so it equals Grad-CAM.)

    python examples/compare_focusers.py [--n 30] [--out runs/compare_focusers]

The full version is ``focused-attacks demo``; this one trims the grid to run in well under a minute.
Rerunning resumes from ``--out``.
"""

from __future__ import annotations

import argparse

from evaluation.configs import ExperimentConfig
from evaluation.experiment import run_experiment
from evaluation.report import SUMMARY_COLUMNS, summarize, text_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=30, help="number of test images")
    parser.add_argument("--out", default="runs/compare_focusers")
    args = parser.parse_args()

    config = ExperimentConfig(
        model="digits-cnn",
        data="digits",
        n=args.n,
        attacks=("pgd",),
        focusers=("cameras", "gradcam", "layercam", "random"),
        areas=(0.1,),
        batch_size=args.n,
    )
    result = run_experiment(config, args.out, device="cpu", verbose=False)
    rows = summarize(result.records, attacks=config.attacks, focusers=config.focusers)
    print(text_table(rows, SUMMARY_COLUMNS), end="")
    print(f"{result.seconds:.1f} s; report, records and figures in {args.out}")


if __name__ == "__main__":
    main()
