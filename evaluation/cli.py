"""The ``focused-attacks`` command line: saliency maps, training, the demo and the evaluations.

Every subcommand has ``--help`` (:mod:`evaluation.cli_args`). Each ``cmd_*`` checks its options once,
loads the model once, runs the library and prints what it returns. Bad input (unknown model or method,
missing file, empty folder, corrupt image, a run folder made with other arguments: an
:class:`~evaluation.errors.UserError`) prints one line naming the problem and exits with code 2; any
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.attacks import EPS_SEARCH_ATTACKS
from evaluation.cli_args import PROG, REAL_MODEL, REPRODUCE_DIGITS, build_parser, split
from evaluation.configs import PROTOCOL
from evaluation.errors import CLIError, UserError
from evaluation.focusers import (
    GPNN_CAM,
    GPNN_CAM_GPNNS,
    GRID_FOCUSERS,
    PAPER_FOCUSERS,
    UNIFORM,
    check_names,
)
from evaluation.progress import print_progress_lines

#: OSErrors that say what is wrong with the user's files or disk: one line, no traceback.
FILE_SYSTEM_ERRORS = frozenset(
    {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EISDIR}
)
#: The focusers of the demo's paper-protocol run on the photos.
DEMO_PAPER_FOCUSERS = (UNIFORM, "gradcam", "cameras", GPNN_CAM)
#: What an interrupted command keeps: evaluate, demo, reproduce and the saliency metrics resume; train
#: restarts.
RESUME = "rerun the same command to resume"
RESTART = "nothing was saved; rerunning the command starts again"
INTERRUPTED = {
    **dict.fromkeys(
        ("evaluate", "demo", "reproduce", "pointing-game", "sanity", "insertion-deletion"), RESUME
    ),
    "saliency": "the maps written so far are kept; rerunning the command computes them all again",
}


@contextlib.contextmanager
def _option(name: str) -> Iterator[None]:
    """Turn a library's ``ValueError`` about the user's ``name`` option (an
    :class:`~evaluation.errors.InputError` too) into a :class:`CLIError` naming it."""
    try:
        yield
    except ValueError as err:
        raise CLIError(f"{name}: {err}") from None


def _check_image_folder(data: str) -> None:
    """Fail unless ``data`` is a folder the image-folder loader reads (flat or class subfolders)."""
    from evaluation.datasets import image_folder_files

    if not Path(data).is_dir():
        raise CLIError(f"--data: {data!r} is not 'digits', 'photos' or an existing folder")
    with _option("--data"):
        image_folder_files(data)


def _image_size(model: str, size: int | None) -> int:
    """``--size``, or the model's input side when it is None, checked against what the model takes."""
    from evaluation import zoo

    with _option("--model"):
        size = size or zoo.input_size(model)[-1]
    with _option("--size"):
        zoo.check_size(model, size)
    return size


def _layers(args: argparse.Namespace) -> list[str]:
    """``--layer`` (repeated or comma-separated), else the zoo's layers of ``--model``."""
    from evaluation import zoo

    with _option("--layer"):
        return split(args.layer) or list(zoo.default_layers(args.model))


def _classifier(model: str, weights: str | None, device: str | None) -> Any:
    from evaluation import zoo

    try:
        classifier = zoo.classifier(model, weights, device=device)
    except (FileNotFoundError, zoo.WeightsUnavailableError) as err:
        raise CLIError(f"--weights: {err}") from None
    except ValueError as err:
        raise CLIError(f"--model: {err}") from None
    if weights is None and not zoo.ships_weights(model):
        print(f"{PROG}: warning: {model} has random weights: for smoke tests only", file=sys.stderr)
    return classifier


def _model_for(args: argparse.Namespace) -> tuple[int, Any]:
    """Check ``--out``, then the image size and the classifier of ``--model`` (random weights seeded by
    ``--seed``, so they are reproducible): ``(size, classifier)``."""
    import torch

    from evaluation.run_folder import check_out

    check_out(args.out)
    size = _image_size(args.model, args.size)
    torch.manual_seed(args.seed)
    return size, _classifier(args.model, args.weights, args.device)


# ------------------------------------------------------------------------------------------ commands
def cmd_models(args: argparse.Namespace) -> int:
    """List the zoo's models (``--model`` names) and whether each ships trained weights."""
    from evaluation import zoo

    names = zoo.available_models()
    width = max(len(name) for name in names)
    print(f"{'model':<{width}}  trained weights")
    for name in names:
        where = (
            "shipped" if zoo.ships_weights(name) else "--weights DEFAULT (download) or a file; else random"
        )
        print(f"{name:<{width}}  {where}")
    print(f"and any timm model as {zoo.TIMM}NAME (random weights, or --weights a local file)")
    return 0


def _targets(args: argparse.Namespace, classifier: Any, x: np.ndarray) -> np.ndarray:
    """``--class`` for every image (checked against the model's classes), else each one's prediction."""
    if args.target_class is None:
        return classifier.predict(x).argmax(axis=1)
    if not 0 <= args.target_class < classifier.nb_classes:
        raise CLIError(f"--class must lie in [0, {classifier.nb_classes}), got {args.target_class}")
    return np.full(len(x), args.target_class, dtype=np.int64)


def cmd_saliency(args: argparse.Namespace) -> int:
    """Maps for image files: ``DIR/<stem>.npy`` (H,W) float32 and ``DIR/<stem>.png`` overlays."""
    from tqdm.auto import tqdm

    from evaluation import zoo
    from evaluation.focusers import compute_maps
    from evaluation.images import load_image, save_map
    from evaluation.run_folder import lock

    check_names([args.method], "--method")
    stems = [Path(p).stem for p in args.images]
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:
        raise CLIError(f"images: several files share the name {duplicates[0]!r}; outputs would collide")
    size, classifier = _model_for(args)
    resize, interpolation = (
        zoo.resize_size(args.model, size, args.weights),
        zoo.resize_interpolation(args.model),
    )
    x = np.stack([load_image(p, size, resize, interpolation) for p in args.images])
    layers = _layers(args)
    if args.method != GPNN_CAM and len(layers) > 1 and args.layer:
        raise CLIError(f"--layer: method {args.method!r} takes one layer, got {', '.join(layers)}")
    targets = _targets(args, classifier, x)
    out = Path(args.out)
    args.held.enter_context(lock(out))
    for i in tqdm(range(len(x)), desc=f"{args.method} maps", disable=args.quiet):
        params = (layers, args.seed, args.gpnn_variations, GPNN_CAM_GPNNS[args.gpnn])
        maps = compute_maps(args.method, classifier, x[i : i + 1], targets[i : i + 1], [i], *params)
        save_map(out / stems[i], x[i], maps[0])
        print(f"{args.images[i]}: class {int(targets[i])} -> {out / stems[i]}.npy, .png")
        if not maps[0].any():
            print(
                f"{PROG}: warning: {args.images[i]}: the {args.method} map of class {int(targets[i])} is "
                "blank (all zero): no location raises that class's score at this layer (CAMERAS: or no "
                "resolution predicts it); its overlay is a uniform tint",
                file=sys.stderr,
            )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train digits-cnn and save its state_dict at ``--out``."""
    from evaluation.train import check_out_file, train_digits_cnn

    with _option("--out"):
        check_out_file(args.out)
    result = train_digits_cnn(
        args.out, epochs=args.epochs, n_train=args.n_train, seed=args.seed, verbose=not args.quiet
    )
    accuracy, seconds = 100 * result["accuracy"], result["seconds"]
    print(f"{args.model}: test accuracy {accuracy:.2f}% in {seconds:.1f} s -> {args.out}")
    return 0


def _run_grid(config: Any, args: argparse.Namespace, out: str | Path) -> int:
    from evaluation.experiment import run_experiment
    from evaluation.report import SUMMARY_COLUMNS, summarize, text_table

    result = run_experiment(config, out, device=args.device, verbose=not args.quiet)
    if result.is_main:  # rank 0 prints the merged table; the other ranks hold only their own records
        rows = summarize(result.records, attacks=config.attacks, focusers=config.focusers)
        print(text_table(rows, SUMMARY_COLUMNS), end="")
        print(
            f"{len(result.records)} records ({result.computed} computed now) in {result.seconds:.1f} s -> "
            f"{Path(out) / 'report.md'}"
        )
    return 0


def _paper_config(args: argparse.Namespace, model: str, data: str, focusers: Sequence[str]) -> Any:
    """The CAMERAS paper protocol's config from the options of ``evaluate`` / ``demo`` / ``reproduce``;
    options left at None take :class:`~evaluation.configs.PaperConfig`'s defaults."""
    from evaluation.configs import PaperConfig

    options = {
        "weights": getattr(args, "weights", None),
        "labels": getattr(args, "labels", None),
        "n": args.n,
        "size": getattr(args, "size", None),
        "layers": tuple(split(getattr(args, "layer", None))) or None,
        "batch_size": args.batch_size,
        "gpnn_params": GPNN_CAM_GPNNS[args.gpnn],
    }
    return PaperConfig(
        model=model,
        data=data,
        focusers=tuple(focusers),
        seed=args.seed,
        beta=args.beta,
        confidence=args.confidence,
        max_iter=args.max_iter,
        gpnn_variations=args.gpnn_variations,
        **{k: v for k, v in options.items() if v is not None},
    )


def _run_paper(config: Any, args: argparse.Namespace, out: str | Path) -> int:
    from evaluation.paper_protocol import run_paper_protocol
    from evaluation.paper_report import PAPER_COLUMNS, summarize_paper, text_table
    from evaluation.run_folder import check_out

    check_out(out)
    result = run_paper_protocol(config, out, device=args.device, verbose=not args.quiet)
    print(text_table(summarize_paper(result.records, config.focusers), PAPER_COLUMNS), end="")
    print(
        f"{len(result.records)} records ({result.computed} computed now) in {result.seconds:.1f} s -> "
        f"{Path(out) / 'report.md'}"
    )
    return 0


def _grid_config(args: argparse.Namespace, methods: list[str]) -> Any:
    """The attack grid's config from the options of ``evaluate``."""
    from evaluation.configs import ExperimentConfig

    eps_min = {a: {"eps_min": args.eps_min} for a in EPS_SEARCH_ATTACKS} if args.eps_min else {}
    return ExperimentConfig(
        model=args.model,
        weights=args.weights,
        data=args.data,
        labels=args.labels,
        n=args.n,
        size=args.size,
        attacks=tuple(split(args.attacks)),
        focusers=tuple(methods),
        areas=tuple(args.areas),
        layers=tuple(split(args.layer)) or None,
        batch_size=args.batch_size or ExperimentConfig.batch_size,
        seed=args.seed,
        gpnn_variations=args.gpnn_variations,
        gpnn_params=GPNN_CAM_GPNNS[args.gpnn],
        attack_params=eps_min,
    )


def cmd_evaluate(args: argparse.Namespace) -> int:
    """The attack grid (or, with ``--protocol cameras-paper``, the CAMERAS paper protocol) into ``--out``."""
    paper = args.protocol == PROTOCOL
    methods = split(args.methods) or list(PAPER_FOCUSERS if paper else GRID_FOCUSERS)
    check_names(methods, "--methods", controls=paper)
    config = _paper_config(args, args.model, args.data, methods) if paper else _grid_config(args, methods)
    from evaluation.run_folder import check_out

    check_out(args.out)
    if args.data == "photos" and not paper:
        raise CLIError("--data photos: the bundled photos run under --protocol cameras-paper")
    if args.data not in ("digits", "photos"):
        _check_image_folder(args.data)
    _image_size(args.model, args.size)
    _classifier(args.model, args.weights, args.device)  # fail fast on an unknown model / missing weights
    return _run_paper(config, args, args.out) if paper else _run_grid(config, args, args.out)


def cmd_demo(args: argparse.Namespace) -> int:
    """The digits grid into ``OUT/digits``, then the real model under the paper protocol into
    ``OUT/photos``."""
    from evaluation.configs import ExperimentConfig
    from evaluation.run_folder import check_out

    check_out(args.out)
    config = ExperimentConfig(
        n=args.n,
        batch_size=args.batch_size or ExperimentConfig.batch_size,
        seed=args.seed,
        gpnn_variations=args.gpnn_variations,
        gpnn_params=GPNN_CAM_GPNNS[args.gpnn],
    )
    _run_grid(config, args, Path(args.out) / "digits")
    args.n, args.batch_size = args.photos, None  # None: every photo, the protocol's batch
    paper = _paper_config(args, REAL_MODEL, "photos", DEMO_PAPER_FOCUSERS)
    return _run_paper(paper, args, Path(args.out) / "photos")


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Every focuser under the paper protocol: the real model on the photos, digits-cnn on the digits."""
    n = args.n
    for model, data, count in ((REAL_MODEL, "photos", n), ("digits-cnn", "digits", n or REPRODUCE_DIGITS)):
        args.n = count
        config = _paper_config(args, model, data, PAPER_FOCUSERS)
        _run_paper(config, args, Path(args.out) / f"{data}-{model}")
    return 0


def _metric_run(args: argparse.Namespace, methods: Sequence[str], option: str) -> tuple[Any, Any]:
    """Check the methods (``option``), ``--data`` and ``--out``, load the model: the run's options and the
    classifier."""
    from evaluation.metric_runs import MetricRun

    check_names(list(methods), option)
    if args.data not in ("digits", "photos") and args.command != "pointing-game":
        _check_image_folder(args.data)
    size, classifier = _model_for(args)
    options = {k: getattr(args, k) for k in ("model", "weights", "data", "n", "seed", "gpnn_variations")}
    run = MetricRun(
        **options,
        size=size,
        layers=_layers(args),
        gpnn=args.gpnn,
        out=args.out,
        verbose=not args.quiet,
    )
    return run, classifier


def _print_table(rows: list[dict[str, Any]], columns: Any, md: Path) -> int:
    from evaluation.report import text_table

    print(text_table(rows, columns), end="")
    print(f"-> {md}")
    return 0


def cmd_pointing_game(args: argparse.Namespace) -> int:
    """Pointing game (and energy pointing game) accuracy per saliency method."""
    from evaluation import pointing

    run, classifier = _metric_run(args, split(args.methods), "--methods")
    rows, md = pointing.run_pointing_game(
        run, split(args.methods), classifier, args.batch_size, args.tolerance
    )
    return _print_table(rows, pointing.COLUMNS, md)


def cmd_sanity(args: argparse.Namespace) -> int:
    """Cascading parameter randomisation: Spearman correlation of the maps with the trained model's."""
    from evaluation import sanity

    run, classifier = _metric_run(args, [args.method], "--method")
    rows, md = sanity.run_sanity(run, args.method, classifier)
    return _print_table(rows, sanity.COLUMNS, md)


def cmd_insertion_deletion(args: argparse.Namespace) -> int:
    """Insertion and deletion AUC (RISE) per saliency method, with the mean curves."""
    from evaluation import insertion_deletion_run as scores

    run, classifier = _metric_run(args, split(args.methods), "--methods")
    rows, md = scores.run_insertion_deletion(run, split(args.methods), classifier, args.batch_size)
    return _print_table(rows, scores.COLUMNS, md)


#: The subcommands' functions, by name.
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "models": cmd_models,
    "saliency": cmd_saliency,
    "train": cmd_train,
    "demo": cmd_demo,
    "reproduce": cmd_reproduce,
    "evaluate": cmd_evaluate,
    "pointing-game": cmd_pointing_game,
    "insertion-deletion": cmd_insertion_deletion,
    "sanity": cmd_sanity,
}


def _error(args: argparse.Namespace, err: BaseException) -> int:
    print(f"{PROG} {args.command}: error: {err}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``focused-attacks``; returns the exit code (2 for user errors)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    print_progress_lines(PROG)
    try:
        with contextlib.ExitStack() as held:  # what a command holds until it returns (its folder's lock)
            args.held = held
            return int(COMMANDS[args.command](args) or 0)
    except (UserError, FileNotFoundError) as err:
        return _error(args, err)
    except BrokenPipeError:  # the reader stopped early (focused-attacks models | head): no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nor at the final flush
        return 0
    except OSError as err:
        if err.errno not in FILE_SYSTEM_ERRORS:  # not the user's file system: keep the traceback
            raise
        return _error(args, err)
    except ImportError as err:
        from saliency.external import EXTRA

        if EXTRA not in str(err):  # a broken installation, not a missing optional library: keep the traceback
            raise
        return _error(args, err)
    except KeyboardInterrupt:
        what = INTERRUPTED.get(args.command, RESTART)
        print(f"{PROG} {args.command}: interrupted; {what}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
