"""The experiment runner: attack a model's images unfocused and focused by saliency maps, record the norms.

One experiment is the grid (image x attack x focuser x area). Every cell becomes one JSON record in
``DIR/records.jsonl`` (see :func:`make_records` for the fields). The run is

* **resumable**: records are appended per batch (one ``write``, ``flush`` and ``fsync``); a rerun skips
  every (image, attack, focuser, area) already recorded, so nothing is duplicated or lost; a truncated
  last line left by a crash is dropped and the file repaired;
* **pinned to its arguments and images**: ``DIR/config.json`` stores the :class:`ExperimentConfig` and
  ``DIR/data.sha256`` a digest of the loaded pixels; resuming with different arguments, or with
  ``--data`` now loading other pixels (an image edited in place, another loader), fails with
  :class:`ConfigMismatchError`;
* **shardable**: under ``torchrun --nproc-per-node K -m evaluation.cli -- evaluate ...`` (the ``--``
  keeps torchrun from parsing our options) the image batches are dealt round-robin to the
  ranks, each rank appends to ``records.rank{r}.jsonl``, and after a barrier rank 0 merges them into
  ``records.jsonl`` and writes the report. A batch always holds the same images whatever the number of
  ranks, so a sharded run computes exactly what a single process computes.

Each image's saliency maps are computed once per batch and reused for every attack and area.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evaluation.distributed import DistributedContext, init_distributed, shard
from evaluation.labels import PREDICTED_SOURCE, PREDICTION, csv_labels, folder_labels
from evaluation.progress import Progress
from evaluation.run_folder import (
    BatchMaps,
    ConfigMismatchError,
    RecordLog,
    RunFolderError,
    check_config,
    check_data,
    check_out,
    data_digest,
    json_line,
    load_arrays,
    lock,
    save_arrays,
    write_atomic,
)

#: Focuser name of the unfocused (whole-image) attack; its records have area 1.0.
UNFOCUSED = "none"
#: Focuser name of the control: a uniformly random map per image, i.e. a random mask of the same area.
RANDOM = "random"
#: Focuser name of the centre baseline: a Gaussian bump at the image centre.
CENTRE = "centre"
#: Attack names understood by the runner.
ATTACKS = ("pgd", "fgsm", "cw")
#: Name of the merged records file.
RECORDS_FILE = "records.jsonl"
#: Arrays for the example figure (first images, first attack, middle area), written by the batch of image 0.
EXAMPLES_FILE = "examples.npz"
N_EXAMPLES = 3

Key = tuple[int, str, str, float]


# --------------------------------------------------------------------------------------------- records
def record_key(record: dict[str, Any]) -> Key:
    """The identity of a record: ``(image, attack, focuser, area)``."""
    return (int(record["image"]), str(record["attack"]), str(record["focuser"]), float(record["area"]))


def record_files(out_dir: str | Path) -> list[Path]:
    """``records.jsonl`` (if present) followed by every ``records.rank{r}.jsonl`` in ``out_dir``, by rank."""
    out = Path(out_dir)
    ranked = sorted(out.glob("records.rank*.jsonl"), key=lambda p: int(p.name.split(".")[1][4:]))
    merged = out / RECORDS_FILE
    return ([merged] if merged.exists() else []) + ranked


def unique_records(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records with duplicate keys removed (first kept), sorted by :func:`record_key`."""
    by_key: dict[Key, dict[str, Any]] = {}
    for record in records:
        by_key.setdefault(record_key(record), record)
    return [by_key[k] for k in sorted(by_key)]


def load_records(out_dir: str | Path) -> list[dict[str, Any]]:
    """Every record of a run folder (merged file and per-rank files), deduplicated and sorted."""
    return unique_records(r for path in record_files(out_dir) for r in RecordLog(path, record_key).read())


def merge_records(out_dir: str | Path) -> list[dict[str, Any]]:
    """Merge all record files of ``out_dir`` into ``records.jsonl`` (atomically) and delete the rank files."""
    out = Path(out_dir)
    files = record_files(out)
    records = unique_records(r for path in files for r in RecordLog(path, record_key).read())
    write_atomic(out / RECORDS_FILE, "".join(json_line(r) for r in records))
    for path in files:
        if path.name != RECORDS_FILE:
            path.unlink()
    return records


# --------------------------------------------------------------------------------------------- config
#: Attack hyper-parameters used unless a config overrides them (see ``report.md`` for the reasoning).
#: PGD and FGSM are L-inf attacks whose eps is searched per image (the smallest eps that succeeds, by
#: log-space bisection over ``[eps_min, eps_max]`` in ``search_steps`` steps: found within a factor
#: 1024 ** (2 ** -steps) of the threshold, 24 % for PGD, 2.7 % for FGSM); C&W L2 minimises L2 itself.
DEFAULT_ATTACK_PARAMS: dict[str, dict[str, Any]] = {
    "pgd": {"eps_min": 1 / 1024, "eps_max": 1.0, "search_steps": 5, "max_iter": 5, "step_ratio": 0.25},
    "fgsm": {"eps_min": 1 / 1024, "eps_max": 1.0, "search_steps": 8},
    "cw": {"max_iter": 10, "binary_search_steps": 3, "learning_rate": 0.1, "initial_const": 1.0},
}


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that determines an experiment's records (the device does not)."""

    model: str = "digits-cnn"
    weights: str | None = None
    data: str = "digits"
    labels: str | None = None
    n: int = 200
    size: int | None = None
    attacks: tuple[str, ...] = ATTACKS
    focusers: tuple[str, ...] = ("cameras", "gpnn-cam", "gradcam", RANDOM)
    areas: tuple[float, ...] = (0.05, 0.1, 0.2)
    layers: tuple[str, ...] | None = None
    batch_size: int = 50
    seed: int = 0
    gpnn_variations: int = 8
    gpnn_params: dict[str, Any] = field(default_factory=dict)
    attack_params: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "attacks", tuple(self.attacks))
        object.__setattr__(self, "focusers", tuple(self.focusers))
        object.__setattr__(self, "areas", tuple(float(a) for a in self.areas))
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(self.layers))
        params = {
            a: {**DEFAULT_ATTACK_PARAMS.get(a, {}), **self.attack_params.get(a, {})} for a in self.attacks
        }
        object.__setattr__(self, "attack_params", params)
        self.validate()

    def validate(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"n must be an integer >= 1, got {self.n!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        if not self.attacks:
            raise ValueError("attacks: give at least one attack")
        unknown = [a for a in self.attacks if a not in ATTACKS]
        if unknown:
            raise ValueError(f"attacks: unknown attack {unknown[0]!r}; choose from {', '.join(ATTACKS)}")
        if len(set(self.attacks)) != len(self.attacks) or len(set(self.focusers)) != len(self.focusers):
            raise ValueError("attacks and focusers must not repeat a name")
        if UNFOCUSED in self.focusers:
            raise ValueError(f"focusers: {UNFOCUSED!r} is always run; do not list it")
        if len(set(self.areas)) != len(self.areas):
            raise ValueError(f"areas must not repeat a value, got {list(self.areas)}")
        bad = [a for a in self.areas if not (0.0 < a < 1.0)]
        if bad:
            raise ValueError(f"areas must lie in (0, 1), got {bad[0]}")
        if self.focusers and not self.areas:
            raise ValueError("areas: give at least one area when focusers are given")
        if self.gpnn_variations < 2:
            raise ValueError(f"gpnn_variations must be >= 2, got {self.gpnn_variations}")
        for attack, params in self.attack_params.items():
            if "eps_min" in params and not 0 < params["eps_min"] < params["eps_max"]:
                raise ValueError(
                    f"attack_params: {attack}'s eps_min must lie in (0, eps_max = {params['eps_max']}), "
                    f"got {params['eps_min']}"
                )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExperimentConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"config: unknown fields {sorted(unknown)}")
        return cls(**data)

    def jobs(self) -> list[tuple[str, str, float]]:
        """The (attack, focuser, area) cells per image: each attack unfocused, then per focuser and area."""
        cells = []
        for attack in self.attacks:
            cells.append((attack, UNFOCUSED, 1.0))
            cells.extend((attack, f, a) for f in self.focusers for a in self.areas)
        return cells


# ----------------------------------------------------------------------------------------------- data
@dataclass
class Dataset:
    """Images (N,C,H,W) float32 in [0,1], labels (N,) (None: use the model's prediction), names, and where
    the labels come from (:mod:`evaluation.labels`)."""

    x: np.ndarray
    y: np.ndarray | None
    names: list[str]
    boxes: np.ndarray | None = None
    label_source: str = PREDICTED_SOURCE

    def digest(self) -> str:
        """:func:`evaluation.run_folder.data_digest` of the pixels, and of the labels when they come from
        files (class subfolders, a CSV), so that a resume with other labels is refused."""
        from_files = self.y is not None and self.boxes is None
        return data_digest([self.x, self.y] if from_files else [self.x])


def load_dataset(
    data: str,
    n: int,
    size: int,
    seed: int = 0,
    resize: int | None = None,
    interpolation: str = "bilinear",
    labels: str | None = None,
    nb_classes: int = 1000,
) -> Dataset:
    """``"digits"`` (the embedded benchmark's test split, with labels and boxes), ``"photos"`` (the
    natural photographs bundled with the dependencies, :func:`evaluation.datasets.sample_photos`) or an
    image folder (:func:`evaluation.datasets.image_folder`, only the first ``n`` files decoded). Photos and
    folders: shorter side resized to ``resize`` with ``interpolation`` before the centre crop.

    ``labels`` (photos and folders): None takes class subfolders named by class index or WordNet id
    (:func:`evaluation.labels.folder_labels`; a model of ``nb_classes``), ``"prediction"`` none, any other
    value is a CSV file (:func:`evaluation.labels.csv_labels`). Without labels the model's clean prediction
    is attacked."""
    from evaluation import datasets

    if data == "digits":
        if labels is not None:
            raise ValueError("labels: the digits carry their own labels; --labels is for photos and folders")
        x, y, boxes = datasets.cluttered_digits(n, "test", size=size, seed=seed)
        return Dataset(x, y, [f"digits-{i:05d}" for i in range(n)], boxes, "the digits' own labels")
    if data == "photos":
        x, names = datasets.sample_photos(size, resize=resize, interpolation=interpolation)
        x, names, y, source = np.asarray(x[:n], dtype=np.float32), list(names[:n]), None, PREDICTED_SOURCE
    else:
        loaded = datasets.image_folder(data, size=size, n=n, resize=resize, interpolation=interpolation)
        names = [str(Path(p).relative_to(data).with_suffix("").as_posix()) for p in loaded.paths]
        x, y, source = np.asarray(loaded.x, dtype=np.float32), None, PREDICTED_SOURCE
        if loaded.y is not None:
            y, source = folder_labels(loaded.classes, loaded.y, nb_classes)
    if labels == PREDICTION:
        y, source = None, PREDICTED_SOURCE
    elif labels is not None:
        y, source = csv_labels(labels, names, nb_classes), f"the CSV file {labels}"
    return Dataset(x, y, names, label_source=source)


# ------------------------------------------------------------------------------------------- saliency
def random_maps(image_ids: Sequence[int], shape: tuple[int, int], seed: int) -> np.ndarray:
    """Uniform random maps (N,H,W), one fixed per (seed, image id): top-k of it is a random mask."""
    return np.stack(
        [np.random.default_rng([seed, int(i)]).random(shape, dtype=np.float32) for i in image_ids]
    )


SALIENCY_NAMES_EXTRA = ("gpnn-cam", RANDOM, CENTRE)
SaliencyFactory = Callable[[Any, Sequence[str]], Callable[..., torch.Tensor]]


def _external() -> Any:
    from saliency import external

    return external


#: Saliency methods of the optional libraries (``pip install 'focused-attacks[extra]'``): name ->
#: factory(model, layers); layer-based ones use ``layers[0]``. Settings, cheap but sensible on a CPU:
#:
#: * ``scorecam``: pytorch-grad-cam ScoreCAM on layers[0]; one forward pass per channel of the layer
#:   (96 on digits-cnn; 1280 on EfficientNet-Lite's ``bn2``: slow on a CPU), 32 masked images a pass.
#: * ``eigencam``: pytorch-grad-cam EigenCAM on layers[0]: one forward pass and an SVD, class-agnostic.
#: * ``fullgrad``: pytorch-grad-cam FullGrad: input and bias gradients of every Conv2d/BatchNorm2d with a
#:   bias (``layers`` are not used); one forward and backward pass.
#: * ``ablationcam``: pytorch-grad-cam AblationCAM on layers[0]; one forward pass per channel, 32 a batch.
#: * ``integrated-gradients``: captum IntegratedGradients from a black image (baseline 0), 32 Gauss-Legendre
#:   steps, 32 scaled images per forward/backward pass (bounded memory), channels reduced by abs-sum.
#: * ``vanilla-gradient``: captum Saliency (Simonyan et al.): |d score / d pixel|, maximum over channels.
#: * ``occlusion``: captum Occlusion with a black 16 x 16 window moved by 8 px at 224 px, both scaled to
#:   the image size (5 x 5, stride 2 at 64 px), 32 occluded images per forward pass, signed channel sum.
LIBRARY_SALIENCY: dict[str, SaliencyFactory] = {
    "scorecam": lambda m, layers: _external().build_pytorch_grad_cam("ScoreCAM", m, layers[:1], 32),
    "eigencam": lambda m, layers: _external().build_pytorch_grad_cam("EigenCAM", m, layers[:1]),
    "fullgrad": lambda m, layers: _external().build_pytorch_grad_cam("FullGrad", m, ()),
    "ablationcam": lambda m, layers: _external().build_pytorch_grad_cam("AblationCAM", m, layers[:1], 32),
    "integrated-gradients": lambda m, layers: _external().build_captum(
        "IntegratedGradients", m, n_steps=32, internal_batch_size=32
    ),
    "vanilla-gradient": lambda m, layers: _external().build_captum("Saliency", m, reduce="max-abs"),
    "occlusion": lambda m, layers: _external().occlusion(m, 16, 8, 224, perturbations_per_eval=32),
}


def saliency_names() -> tuple[str, ...]:
    """Every focuser / saliency name: ``saliency.METHODS`` keys, :data:`LIBRARY_SALIENCY` keys, gpnn-cam,
    random and centre."""
    import saliency

    return tuple(saliency.METHODS) + tuple(LIBRARY_SALIENCY) + SALIENCY_NAMES_EXTRA


def check_saliency_names(names: Sequence[str], what: str = "saliency") -> None:
    """Raise ``ValueError`` naming the first unknown method name."""
    valid = saliency_names()
    for name in names:
        if name not in valid:
            raise ValueError(f"{what}: unknown method {name!r}; choose from {', '.join(valid)}")


def check_layers(classifier: Any, layers: Sequence[str]) -> None:
    """Raise ValueError naming the first of ``layers`` that is not a module of the classifier's model."""
    from saliency.base import resolve_layer

    model = getattr(classifier, "model", classifier)
    for layer in layers:
        try:
            resolve_layer(model, layer)
        except ValueError as err:
            raise ValueError(f"layers: {err}") from None


def gpnn_generator(overrides: dict[str, Any] | None = None) -> Any:
    """GPNN-CAM's GPNN preset (``saliency.gpnn_cam.gpnn_cam_preset``) with some settings replaced, e.g.
    ``{"iters": 1, "coarsest": 32, "patch_size": 5}`` for a fast CPU run; None/empty: the preset itself."""
    from saliency.gpnn import GPNN
    from saliency.gpnn_cam import gpnn_cam_preset

    preset = gpnn_cam_preset()
    if not overrides:
        return preset
    names = (
        "patch_size",
        "scale_factor",
        "coarsest",
        "noise_sigma",
        "alpha",
        "iters",
        "init",
        "fold",
        "search",
    )
    unknown = set(overrides) - set(names)
    if unknown:
        raise ValueError(f"gpnn_params: unknown GPNN settings {sorted(unknown)}; valid: {', '.join(names)}")
    return GPNN(**{**{k: getattr(preset, k) for k in names}, **overrides})


def saliency_method(
    name: str | object,
    model: Any,
    layers: Sequence[str],
    seed: int = 0,
    gpnn_variations: int = 8,
    gpnn_params: dict[str, Any] | None = None,
) -> Callable[..., torch.Tensor]:
    """The saliency method ``name`` on ``model`` as a callable ``maps = method(x, targets)``.

    Single-layer methods use ``layers[0]`` (the top layer); GPNN-CAM uses all ``layers`` with
    ``gpnn_variations`` image variations from :func:`gpnn_generator` (``gpnn_params``); ``"centre"`` is
    the centre baseline of
    :func:`evaluation.saliency_metrics.centre_maps`. (``"random"`` needs image ids: see :func:`compute_maps`.)
    :data:`LIBRARY_SALIENCY` names build pytorch-grad-cam / captum methods; instead of a name, a
    pytorch-grad-cam CAM object or a captum attribution method is wrapped and a callable
    ``maps = f(x, targets)`` used directly (:func:`saliency.external.as_saliency`).
    """
    import saliency

    if not isinstance(name, str):
        return _external().as_saliency(name, "saliency")
    if name in LIBRARY_SALIENCY:
        return LIBRARY_SALIENCY[name](model, layers)
    if name == "gpnn-cam":
        return saliency.GPNNCAM(
            model,
            list(layers),
            n_variations=gpnn_variations,
            batch_variations=min(10, gpnn_variations),
            gpnn=gpnn_generator(gpnn_params),
            seed=seed,
            verbose=False,
        )
    if name in saliency.METHODS:
        return saliency.METHODS[name](model, layers[0])
    if name == CENTRE:
        from evaluation.saliency_metrics import centre_maps

        return lambda x, targets=None: torch.from_numpy(centre_maps(len(x), *x.shape[-2:]))
    check_saliency_names([name])
    raise ValueError(f"saliency: {name!r} has no method object (it needs image ids)")


def compute_maps(
    method: str | object,
    classifier: Any,
    x: np.ndarray,
    targets: np.ndarray,
    image_ids: Sequence[int],
    layers: Sequence[str],
    seed: int = 0,
    gpnn_variations: int = 8,
    gpnn_params: dict[str, Any] | None = None,
) -> np.ndarray:
    """Saliency maps (N,H,W) float32 in [0,1] of ``method`` for ``targets`` on the ART ``classifier``.

    ``"random"`` gives :func:`random_maps` (fixed per image id); every other name, and a method object
    (a pytorch-grad-cam CAM, a captum attribution method or a callable), :func:`saliency_method`.
    """
    if isinstance(method, str) and method == RANDOM:
        return random_maps(image_ids, tuple(x.shape[-2:]), seed)
    cam = saliency_method(method, classifier, layers, seed, gpnn_variations, gpnn_params)
    device = getattr(classifier, "device", torch.device("cpu"))
    xt = torch.from_numpy(np.ascontiguousarray(x)).to(device)
    maps = cam(xt, targets=torch.as_tensor(np.asarray(targets, dtype=np.int64)).to(device))
    return torch.as_tensor(maps).detach().cpu().numpy().astype(np.float32)


# -------------------------------------------------------------------------------------------- attacks
def build_attack(name: str, classifier: Any, area: float, params: dict[str, Any], batch_size: int) -> Any:
    """The attack ``name`` built with the runner's parameters (``area`` matters only with maps)."""
    import focused_attacks as fa

    if name == "pgd":
        eps = float(params["eps_max"])
        return fa.FocusedPGD(
            classifier,
            area=area,
            eps=eps,
            eps_step=eps * float(params["step_ratio"]),
            max_iter=int(params["max_iter"]),
            norm=np.inf,
            batch_size=batch_size,
            verbose=False,
        )
    if name == "fgsm":
        return fa.FocusedFGSM(
            classifier, area=area, eps=float(params["eps_max"]), norm=np.inf, batch_size=batch_size
        )
    if name == "cw":
        return fa.FocusedCarliniL2(
            classifier,
            area=area,
            confidence=0.0,
            learning_rate=float(params["learning_rate"]),
            binary_search_steps=int(params["binary_search_steps"]),
            max_iter=int(params["max_iter"]),
            initial_const=float(params["initial_const"]),
            batch_size=batch_size,
            verbose=False,
        )
    raise ValueError(f"attack: unknown attack {name!r}; choose from {', '.join(ATTACKS)}")


def run_attack(
    name: str,
    classifier: Any,
    x: np.ndarray,
    y: np.ndarray,
    maps: np.ndarray | None,
    area: float,
    params: dict[str, Any],
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Attack ``x`` (labels ``y``) focused by the top-``area`` mask of ``maps`` (None: whole image).

    FGSM and PGD: the smallest L-inf budget that fools the model, by a per-image bisection of eps in
    **log** space over ``[eps_min, eps_max]`` in ``search_steps`` steps
    (:func:`focused_attacks.minimal_eps` with ``scale="log"``): each step halves the *ratio*
    ``high / low``, so the found eps is within a factor ``(eps_max / eps_min) ** (2 ** -steps)`` above the
    smallest succeeding one on the grid, whatever its size. A linear bisection's absolute resolution
    ``eps_max / 2 ** steps`` would be coarse for the unfocused attack (small eps) and fine for the
    focused ones (large eps), biasing the reduction. C&W L2: one run (it minimises L2 itself).
    Returns ``(x_adv, mask, eps)``: the (N,1,H,W) mask the attack used (None: whole image) and the
    found eps per image (NaN where none succeeded, x_adv = x there; None for C&W).
    """
    from focused_attacks import minimal_eps

    attack = build_attack(name, classifier, area, params, batch_size)
    if name == "cw":
        x_adv, eps = attack.generate(x, y, maps=maps), None
        mask = attack.last_mask_
    else:
        found = minimal_eps(
            attack,
            x,
            y,
            low=float(params["eps_min"]),
            high=float(params["eps_max"]),
            steps=int(params["search_steps"]),
            maps=maps,
            scale="log",
        )
        x_adv, eps = found.x_adv, found.eps
        # Unfocused: None (the whole image), as minimal_eps stores an all-ones mask there.
        mask = None if maps is None else attack.last_mask_
    mask = None if mask is None else np.asarray(mask, dtype=np.float32).reshape(len(x), 1, *x.shape[-2:])
    return np.asarray(x_adv, dtype=np.float32), mask, eps


# -------------------------------------------------------------------------------------------- records
def make_records(
    image_ids: Sequence[int],
    names: Sequence[str],
    attack: str,
    focuser: str,
    area: float,
    x: np.ndarray,
    x_adv: np.ndarray,
    labels: np.ndarray,
    clean_pred: np.ndarray,
    adv_probs: np.ndarray,
    mask_area: np.ndarray,
    eps: np.ndarray | None,
) -> list[dict[str, Any]]:
    """One record per image.

    Fields: ``image`` (dataset index), ``name``, ``attack``, ``focuser``, ``area`` (requested mask
    fraction; 1.0 unfocused), ``label``, ``clean_pred``, ``adv_pred``, ``correct`` (clean prediction ==
    label), ``success`` (correct and adv_pred != label), ``adv_confidence`` (softmax probability of
    adv_pred), ``mask_area`` (fraction of pixels the mask lets change; null for images not attacked
    because the model already misclassifies them), ``eps`` (the searched L-inf budget; null for C&W,
    when no eps succeeded or the image was not attacked) and the perturbation norms of
    :func:`evaluation.metrics.perturbation_norms` (null when the attack did not succeed).
    """
    from evaluation.metrics import perturbation_norms

    norms = perturbation_norms(x, x_adv)
    adv_pred = adv_probs.argmax(axis=1)
    records = []
    for j, image in enumerate(image_ids):
        correct = bool(clean_pred[j] == labels[j])
        e = None if eps is None or not np.isfinite(eps[j]) else float(eps[j])
        m = float(mask_area[j]) if np.isfinite(mask_area[j]) else None
        record = {
            "image": int(image),
            "name": str(names[j]),
            "attack": attack,
            "focuser": focuser,
            "area": float(area),
            "label": int(labels[j]),
            "clean_pred": int(clean_pred[j]),
            "adv_pred": int(adv_pred[j]),
            "correct": correct,
            "success": bool(correct and adv_pred[j] != labels[j]),
            "adv_confidence": float(adv_probs[j, adv_pred[j]]),
            "mask_area": m,
            "eps": e,
        }
        # a failed or unattempted attack has no perturbation norm (null, an empty CSV cell), never 0
        record.update({k: np.asarray(v)[j].item() if record["success"] else None for k, v in norms.items()})
        records.append(record)
    return records


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def load_examples(out_dir: str | Path) -> dict[str, np.ndarray] | None:
    """The arrays of ``examples.npz`` (see :func:`evaluation.plots.attack_grid`); None if absent or
    unreadable (then recomputed)."""
    return load_arrays(Path(out_dir) / EXAMPLES_FILE)


# --------------------------------------------------------------------------------------------- runner
@dataclass
class RunResult:
    """What :func:`run_experiment` returns: the records (all of them on rank 0, this rank's elsewhere)."""

    records: list[dict[str, Any]]
    out_dir: Path
    seconds: float
    computed: int
    is_main: bool = True


def _check_names(records: Sequence[dict[str, Any]], names: Sequence[str], data: str) -> None:
    """Records are keyed by dataset index: refuse to resume when an index now names another image (files
    added to or removed from an image folder since the run started)."""
    for r in records:
        image = int(r["image"])
        now = names[image] if image < len(names) else None
        if now != r["name"]:
            raise ConfigMismatchError(
                f"data {data!r} changed since this run started: image {image} was {r['name']!r}, now "
                f"{now!r}; choose another --out folder"
            )


def batches(n: int, batch_size: int) -> list[list[int]]:
    """The image indices of each batch: ``0..batch_size-1``, ``batch_size..``, ...; a batch always holds
    the same images, whatever the number of ranks or the commands' resumes."""
    return [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]


def _batch_maps(
    focuser: str,
    config: ExperimentConfig,
    classifier: Any,
    x: np.ndarray,
    labels: np.ndarray,
    batch: list[int],
    attacked: np.ndarray,
    layers: list[str],
) -> np.ndarray:
    """The maps (N,H,W) of ``focuser`` for a batch: those of the attacked images, zero for the others."""
    maps = np.zeros((len(x), *x.shape[-2:]), np.float32)
    if attacked.any():
        ids = [i for i, a in zip(batch, attacked) if a]
        maps[attacked] = compute_maps(
            focuser,
            classifier,
            x[attacked],
            labels[attacked],
            ids,
            layers,
            config.seed,
            config.gpnn_variations,
            config.gpnn_params,
        )
    return maps


def _attack_batch(
    config: ExperimentConfig,
    attack: str,
    classifier: Any,
    x: np.ndarray,
    labels: np.ndarray,
    attacked: np.ndarray,
    maps: np.ndarray | None,
    area: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x_adv, mask (N,1,H,W), eps)`` of one cell: only the attacked (correctly classified) images are
    attacked; the others keep ``x_adv = x``, a zero mask and eps NaN."""
    x_adv = x.copy()
    mask = np.zeros((len(x), 1, *x.shape[-2:]), np.float32)
    eps = np.full(len(x), np.nan)
    if attacked.any():
        adv, used_mask, used_eps = run_attack(
            attack,
            classifier,
            x[attacked],
            labels[attacked],
            None if maps is None else maps[attacked],
            area,
            config.attack_params[attack],
            config.batch_size,
        )
        x_adv[attacked] = adv
        mask[attacked] = 1.0 if used_mask is None else used_mask
        eps[attacked] = np.nan if used_eps is None else used_eps
    return x_adv, mask, eps


def load_model_and_data(config: Any, device: str | None = None) -> tuple[Any, list[str], Dataset]:
    """The ART classifier of ``config`` (an :class:`ExperimentConfig` or a
    :class:`evaluation.paper_protocol.PaperConfig`: its model, weights, data, labels, n, size, layers and
    seed), its CAM layers and its data, checked against each other before anything is written: the layers
    are modules of the model and the labels are classes of it."""
    from evaluation import zoo

    size = config.size or zoo.input_size(config.model)[-1]
    zoo.check_size(config.model, size)
    torch.manual_seed(config.seed)  # random weights (weights=None for torchvision) are the same on every rank
    classifier = zoo.classifier(config.model, config.weights, device=device)
    layers = list(config.layers) if config.layers else list(zoo.default_layers(config.model))
    check_layers(classifier, layers)
    resize = zoo.resize_size(config.model, size, config.weights)
    interpolation = zoo.resize_interpolation(config.model)
    data = load_dataset(
        config.data, config.n, size, config.seed, resize, interpolation, config.labels, classifier.nb_classes
    )
    if data.y is not None and not 0 <= int(data.y.min()) <= int(data.y.max()) < classifier.nb_classes:
        raise ValueError(
            f"data {config.data!r}: labels must lie in [0, {classifier.nb_classes}) for {config.model}, got "
            f"[{int(data.y.min())}, {int(data.y.max())}]"
        )
    return classifier, layers, data


def _check_areas(areas: Sequence[float], shape: tuple[int, ...]) -> None:
    """Every area keeps at least one pixel of an image of ``shape`` (checked before the folder is pinned)."""
    from saliency.masks import top_k

    try:
        for area in areas:
            top_k(np.zeros((1, *shape[-2:]), np.float32), area)
    except ValueError as err:
        raise ValueError(f"areas: {err}") from None


def _pin_folder(
    out: Path, ctx: DistributedContext, config: ExperimentConfig, data: Dataset
) -> tuple[RecordLog, list[dict[str, Any]]]:
    """Check the folder against ``config`` and ``data`` on every rank, pin it (rank 0), and return this
    rank's record log with every record already in the folder."""
    # Only rank 0 writes config.json and data.sha256; the others check them after all_ok (a collective, so
    # they wait for rank 0): a rank can never see records of this run before its digest exists.
    digest = data.digest()
    refusal: ConfigMismatchError | None = None
    own = RecordLog(
        out / (f"records.rank{ctx.rank}.jsonl" if ctx.is_distributed else RECORDS_FILE), record_key
    )
    stored = own.read(repair=True)  # cuts a line a crash left half-written; only this rank writes here
    stored += [
        r for path in record_files(out) if path != own.path for r in RecordLog(path, record_key).read()
    ]
    try:
        _check_names(stored, data.names, config.data)
        if ctx.is_main:
            check_config(out, config)
            check_data(out, digest, has_results=bool(stored))
    except ConfigMismatchError as err:
        refusal = err
    if not ctx.all_ok(refusal is None):
        raise refusal or ConfigMismatchError(f"{out}: rank 0 refused this folder (see its message)")
    if not ctx.is_main:
        check_config(out, config, write=False)
        check_data(out, digest, has_results=False, write=False)
    return own, stored


def run_experiment(
    config: ExperimentConfig,
    out_dir: str | Path,
    device: str | None = None,
    verbose: bool = True,
    report: bool = True,
) -> RunResult:
    """Run (or resume) ``config`` into ``out_dir``; under torchrun the batches are sharded over the ranks.

    Rank 0 holds the folder's lock (:func:`evaluation.run_folder.lock`), merges every rank's records into
    ``records.jsonl`` and, when ``report`` is true, writes the report (``report.md``, ``results.json``,
    ``records.csv``, figures) with :func:`evaluation.report.write_report`.
    """
    start = time.perf_counter()
    ctx: DistributedContext = init_distributed(device)
    out = Path(out_dir)
    check_out(out)
    # Validate everything before config.json pins the folder, so a failed start can be rerun fixed.
    check_config(out, config, write=False)
    check_saliency_names(config.focusers, "focusers")
    classifier, layers, data = load_model_and_data(config, device)
    _check_areas(config.areas, data.x.shape)
    with contextlib.ExitStack() as held:
        refusal: RunFolderError | None = None
        if ctx.is_main:
            try:
                held.enter_context(lock(out))
            except RunFolderError as err:
                refusal = err
        if not ctx.all_ok(refusal is None):
            raise refusal or RunFolderError(f"--out: rank 0 could not lock {out} (see its message)")
        own, stored = _pin_folder(out, ctx, config, data)
        computed = _run_batches(config, out, ctx, classifier, layers, data, own, stored, verbose)
        records: list[dict[str, Any]] = own.read()
        computed = ctx.total(computed)  # over all ranks; a collective, so every rank's records are written
        if ctx.is_main:
            records = merge_records(out)
            if report:
                from evaluation.provenance import provenance
                from evaluation.report import write_report

                run = provenance(getattr(classifier, "device", None), layers, time.perf_counter() - start)
                examples = load_examples(out)
                write_report(
                    out, records, config.to_dict(), examples, provenance=run, labels=data.label_source
                )
        ctx.barrier()
    return RunResult(records, out, time.perf_counter() - start, computed, ctx.is_main)


def _run_batches(
    config: ExperimentConfig,
    out: Path,
    ctx: DistributedContext,
    classifier: Any,
    layers: list[str],
    data: Dataset,
    own: RecordLog,
    stored: list[dict[str, Any]],
    verbose: bool,
) -> int:
    """Compute and append every missing record of this rank's batches; return how many were computed."""
    grid = _Grid(config, out, classifier, layers, data, own, {record_key(r) for r in stored})
    my_batches = shard(batches(len(data.x), config.batch_size), ctx.rank, ctx.world_size)
    jobs = config.jobs()
    name = f"rank {ctx.rank}" if ctx.is_distributed else "attacks"
    progress = Progress(name, len(my_batches), len(jobs), verbose, [len(b) for b in my_batches])
    computed = 0
    for number, batch in enumerate(my_batches, start=1):
        pending = [job for job in jobs if grid.missing(batch, *job)]
        progress.advance(len(jobs) - len(pending))
        if pending:
            state = grid.start(batch)
            for attack, focuser, area in pending:
                progress.cell(number, f"{attack} x {focuser} x {area:.0%}")
                computed += grid.cell(state, attack, focuser, area)
                progress.advance()
        BatchMaps(out, batch).clear()  # every record of the batch is written (or was, before a crash)
        progress.batch_done(number, computed=bool(pending))
    progress.close()
    return computed


@dataclass
class _Batch:
    """One batch being computed: its images, clean predictions, attacked labels and maps."""

    ids: list[int]
    x: np.ndarray
    clean_pred: np.ndarray
    labels: np.ndarray
    attacked: np.ndarray
    saved_maps: BatchMaps
    maps: dict[str, np.ndarray] = field(default_factory=dict)


class _Grid:
    """The grid's cells of one run: what is missing, and computing one (image batch, attack, focuser,
    area) cell with the batch's maps and clean predictions computed once (:class:`_Batch`)."""

    def __init__(
        self,
        config: ExperimentConfig,
        out: Path,
        classifier: Any,
        layers: list[str],
        data: Dataset,
        own: RecordLog,
        done: set[Key],
    ):
        self.config, self.out, self.classifier, self.layers, self.data = config, out, classifier, layers, data
        self.own, self.done = own, done
        self.examples: dict[str, np.ndarray] = load_examples(out) or {}
        self.example_area = config.areas[len(config.areas) // 2] if config.areas else 1.0

    def is_example(self, batch: list[int], attack: str, area: float) -> bool:
        """The cell feeds the example figure (first images, first attack, unfocused and middle area)."""
        return 0 in batch and attack == self.config.attacks[0] and area in (1.0, self.example_area)

    def missing(self, batch: list[int], attack: str, focuser: str, area: float) -> bool:
        """A record of the cell is missing, or its example arrays (a run interrupted in batch 0)."""
        if any((i, attack, focuser, area) not in self.done for i in batch):
            return True
        return self.is_example(batch, attack, area) and f"adv:{focuser}" not in self.examples

    def start(self, batch: list[int]) -> _Batch:
        """The batch's images and clean predictions; only correctly classified images are attacked."""
        x = self.data.x[batch]
        clean_pred = self.classifier.predict(x, batch_size=self.config.batch_size).argmax(axis=1)
        labels = self.data.y[batch] if self.data.y is not None else clean_pred
        if 0 in batch:
            self.examples["x"] = x[:N_EXAMPLES]
        return _Batch(batch, x, clean_pred, labels, clean_pred == labels, BatchMaps(self.out, batch))

    def cell(self, b: _Batch, attack: str, focuser: str, area: float) -> int:
        """Compute the cell of batch ``b``, append its missing records; return how many."""
        config = self.config
        if focuser != UNFOCUSED and focuser not in b.maps:
            # Maps of the attacked images only, computed once (saved) and reused by every attack and area.
            compute = partial(
                _batch_maps, focuser, config, self.classifier, b.x, b.labels, b.ids, b.attacked, self.layers
            )
            b.maps[focuser] = b.saved_maps.get(focuser, compute)
        x_adv, mask, eps = _attack_batch(
            config, attack, self.classifier, b.x, b.labels, b.attacked, b.maps.get(focuser), area
        )
        mask_area = np.where(b.attacked, mask.reshape(len(b.x), -1).mean(axis=1), np.nan)
        if self.is_example(b.ids, attack, area):
            self.examples[f"adv:{focuser}"] = x_adv[:N_EXAMPLES]
            if focuser != UNFOCUSED:
                self.examples[f"mask:{focuser}"] = mask[:N_EXAMPLES]
                self.examples[f"map:{focuser}"] = b.maps[focuser][:N_EXAMPLES]
            save_arrays(self.out / EXAMPLES_FILE, self.examples)  # before the records: both or neither
        probs = _softmax(self.classifier.predict(x_adv, batch_size=config.batch_size))
        names = [self.data.names[i] for i in b.ids]
        records = make_records(
            b.ids, names, attack, focuser, area, b.x, x_adv, b.labels, b.clean_pred, probs, mask_area, eps
        )
        return self.own.append_new(records, self.done)
