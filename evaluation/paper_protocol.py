"""The CAMERAS paper's attack protocol (Jalwana et al., CVPR 2021, section 6) as a resumable evaluation.

For every image the model classifies as its label (its own prediction when the data have no labels), PGD
moves the image towards its **least-likely class** (the argmin of the clean logits) with the loss
``CE(target) + beta * ||delta * (1 - Psi)||_2`` (:class:`focused_attacks.FocusedPGD` with
``focus="penalty"``), maintaining the target's softmax probability at ``confidence`` (99.99 %): the
plain attack stops when it gets there; a penalised one steps on CE alone below it and on CE + penalty at
or above it for ``max_iter`` steps, and its smallest-L2 iterate at or above it is recorded. The focusers
give Psi:

* ``none``: no penalty, plain targeted PGD (the paper's baseline);
* ``uniform``: a constant Psi equal to the image's CAMERAS map mean (the same penalty everywhere: it
  separates "the penalty shrinks the norm" from "the map helps");
* ``shuffled``: the image's CAMERAS map with its values at random places (fixed per (seed, image));
* any saliency method of :data:`evaluation.focusers.FOCUSERS` (gradcam, hirescam, layercam, cameras,
  gpnn-cam, ...).

Each (image, focuser) becomes one record in ``DIR/records.jsonl``; a rerun resumes, ``config.json`` and
``data.sha256`` pin the arguments and the pixels (as :func:`evaluation.experiment.run_experiment`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.configs import ARRAYS_DIR, FIGURE_FOCUSERS, PROTOCOL, PaperConfig
from evaluation.errors import InputError
from evaluation.focusers import FOCUSERS, UNFOCUSED, compute_maps
from evaluation.loading import load_model_and_data
from evaluation.progress import Progress
from evaluation.records import batches, check_names, softmax
from evaluation.run_folder import (
    BatchMaps,
    RecordLog,
    check_config,
    check_data,
    check_out,
    lock,
    make_dir,
    save_arrays,
)


def paper_key(record: dict[str, Any]) -> tuple[int, str]:
    """The identity of a protocol record: ``(image, focuser)``."""
    return int(record["image"]), str(record["focuser"])


# ---------------------------------------------------------------------------------------------- maps
def least_likely(logits: np.ndarray) -> np.ndarray:
    """The least-likely class of each row of ``logits`` (N,K): its argmin (the first on ties)."""
    return np.asarray(logits).argmin(axis=1)


def focuser_maps(
    focuser: str,
    classifier: Any,
    x: np.ndarray,
    labels: np.ndarray,
    image_ids: list[int],
    layers: list[str],
    config: PaperConfig,
    cache: BatchMaps,
) -> np.ndarray | None:
    """Psi (N,H,W) of ``focuser`` for images ``x`` explaining ``labels`` (None for the plain attack); maps
    are computed once per batch and saved in ``cache`` (the controls reuse the CAMERAS map)."""
    if focuser == UNFOCUSED:
        return None
    entry = FOCUSERS[focuser]
    source = entry.source or focuser
    maps = cache.get(
        source,
        lambda: compute_maps(
            source,
            classifier,
            x,
            labels,
            image_ids,
            layers,
            config.seed,
            config.gpnn_variations,
            config.gpnn_params,
        ),
    )
    if entry.source is not None:  # a control: derived from its source's maps
        return entry.derive(maps, image_ids, tuple(x.shape[-2:]), config.seed)
    return maps


# -------------------------------------------------------------------------------------------- attack
def paper_attack(classifier: Any, config: PaperConfig) -> Any:
    """The protocol's targeted penalty PGD on ``classifier``."""
    from focused_attacks import FocusedPGD

    return FocusedPGD(
        classifier,
        focus="penalty",
        beta=config.beta,
        eps=config.eps,
        eps_step=config.eps_step,
        max_iter=config.max_iter,
        norm=np.inf if config.norm == "inf" else 2,
        targeted=True,
        stop_confidence=config.confidence,
        batch_size=config.batch_size,
        verbose=False,
    )


def attack_records(
    classifier: Any,
    config: PaperConfig,
    focuser: str,
    x: np.ndarray,
    maps: np.ndarray | None,
    info: dict[str, np.ndarray],
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Attack the images ``x`` (all to be attacked) and return their records and x_adv.

    ``info`` holds per image ``image``, ``name``, ``label``, ``clean_pred``, ``target`` and ``map_mean``.
    A record's norms (pixel scale [0,1], and x255) are null when the attack failed.
    """
    from evaluation.metrics import perturbation_norms

    attack = paper_attack(classifier, config)
    x_adv = attack.generate(x, y=info["target"], maps=maps)
    probs = softmax(classifier.predict(x_adv, batch_size=config.batch_size))
    norms = perturbation_norms(x, x_adv)
    records = []
    for j in range(len(x)):
        target = int(info["target"][j])
        confidence = float(probs[j, target])
        success = confidence >= config.confidence
        record = {
            "image": int(info["image"][j]),
            "name": str(info["name"][j]),
            "focuser": focuser,
            "label": int(info["label"][j]),
            "clean_pred": int(info["clean_pred"][j]),
            "target": target,
            "attacked": True,
            "adv_pred": int(probs[j].argmax()),
            "target_confidence": confidence,
            "success": bool(success),
            "iterations": int(attack.last_iterations_[j]),
            "map_mean": None if maps is None else float(maps[j].mean()),
        }
        for norm in ("l2", "linf"):
            value = float(norms[norm][j]) if success else None
            record[norm] = value
            record[f"{norm}_255"] = None if value is None else 255.0 * value
        records.append(record)
    return records, x_adv


# --------------------------------------------------------------------------------------------- run
@dataclass
class PaperResult:
    """What :func:`run_paper_protocol` returns."""

    records: list[dict[str, Any]]
    out_dir: Path
    seconds: float
    computed: int


def _prepare(config: PaperConfig, out: Path, device: str | None) -> tuple[Any, list[str], Any]:
    """Validate everything against the model and data before anything is written; load them."""
    check_out(out)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise InputError(f"the {PROTOCOL} protocol runs in one process; start it without torchrun")
    check_config(out, config.to_dict(), write=False)
    return load_model_and_data(config, device)


def run_paper_protocol(
    config: PaperConfig, out_dir: str | Path, device: str | None = None, verbose: bool = True
) -> PaperResult:
    """Run (or resume) the protocol ``config`` into ``out_dir`` and write its report.

    Example:
        >>> from evaluation.configs import PaperConfig
        >>> from evaluation.paper_protocol import run_paper_protocol
        >>> result = run_paper_protocol(PaperConfig(focusers=("uniform", "cameras")), "runs/paper")
        >>> result.records[0]["l2"]  # the L2 norm of the first image's plain attack (None if it failed)
    """

    start = time.perf_counter()
    out = Path(out_dir)
    classifier, layers, data = _prepare(config, out, device)
    with lock(out):
        log = RecordLog(out / "records.jsonl", key=paper_key)
        stored = log.read(repair=True)
        check_names(stored, data.names, config.data)
        check_config(out, config.to_dict())
        check_data(out, data.digest(), has_results=bool(stored))
        computed = _run_batches(config, out, classifier, layers, data, log, stored, verbose)
        records = sorted(log.read(), key=paper_key)
        from evaluation.paper_report import write_paper_report
        from evaluation.provenance import provenance

        seconds = time.perf_counter() - start
        run = provenance(getattr(classifier, "device", None), layers, seconds)
        write_paper_report(out, records, config.to_dict(), provenance=run, labels=data.label_source)
    return PaperResult(records, out, seconds, computed)


def _run_batches(
    config: PaperConfig,
    out: Path,
    classifier: Any,
    layers: list[str],
    data: Any,
    log: RecordLog,
    stored: list[dict[str, Any]],
    verbose: bool,
) -> int:
    """Compute and append every missing record, batch by batch; return how many were computed."""
    done = {paper_key(r) for r in stored}
    focusers = (UNFOCUSED, *config.focusers)
    computed = 0
    image_batches = batches(len(data.x), config.batch_size)
    progress = Progress(PROTOCOL, len(image_batches), len(focusers), verbose, [len(b) for b in image_batches])
    for number, batch in enumerate(image_batches, start=1):
        pending = [f for f in focusers if any((i, f) not in done for i in batch)]
        progress.advance(len(focusers) - len(pending))
        cache = BatchMaps(out, batch)
        if pending:
            info, attacked = _batch_info(classifier, config, data, batch)
            for focuser in pending:
                progress.cell(number, "plain PGD" if focuser == UNFOCUSED else focuser)
                records = _focuser_records(
                    classifier, config, layers, data, out, focuser, info, attacked, cache
                )
                computed += log.append_new(records, done)
                progress.advance()
        cache.clear()  # every record of the batch is written (or was, before a crash)
        progress.batch_done(number, computed=bool(pending))
    progress.close()
    return computed


def _focuser_records(
    classifier: Any,
    config: PaperConfig,
    layers: list[str],
    data: Any,
    out: Path,
    focuser: str,
    info: dict[str, np.ndarray],
    attacked: np.ndarray,
    cache: BatchMaps,
) -> list[dict[str, Any]]:
    """The records of one focuser on one batch (``info``): attacked images and the skipped ones."""
    records: list[dict[str, Any]] = []
    ids = [int(i) for i, a in zip(info["image"], attacked) if a]
    if ids:
        x = data.x[ids]
        maps = focuser_maps(focuser, classifier, x, info["label"][attacked], ids, layers, config, cache)
        records, x_adv = attack_records(
            classifier, config, focuser, x, maps, {k: v[attacked] for k, v in info.items()}
        )
        _save_arrays(out, config, focuser, ids, x, x_adv, maps)
    return records + _skipped_records(info, ~attacked, focuser)


def _batch_info(
    classifier: Any, config: PaperConfig, data: Any, batch: list[int]
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-image fields of a batch and which images are attacked (classified as their label)."""
    logits = classifier.predict(data.x[batch], batch_size=config.batch_size)
    clean_pred = logits.argmax(axis=1)
    labels = data.y[batch] if data.y is not None else clean_pred
    info = {
        "image": np.asarray(batch),
        "name": np.asarray([data.names[i] for i in batch]),
        "label": np.asarray(labels),
        "clean_pred": clean_pred,
        "target": least_likely(logits),
    }
    return info, clean_pred == labels


def _skipped_records(info: dict[str, np.ndarray], skipped: np.ndarray, focuser: str) -> list[dict[str, Any]]:
    """Records of images not attacked (the model misclassifies them): no attack, no norms."""
    return [
        {
            "image": int(info["image"][j]),
            "name": str(info["name"][j]),
            "focuser": focuser,
            "label": int(info["label"][j]),
            "clean_pred": int(info["clean_pred"][j]),
            "target": int(info["target"][j]),
            "attacked": False,
            "success": False,
        }
        for j in np.flatnonzero(skipped)
    ]


def _save_arrays(
    out: Path,
    config: PaperConfig,
    focuser: str,
    ids: list[int],
    x: np.ndarray,
    x_adv: np.ndarray,
    maps: np.ndarray | None,
) -> None:
    """Map and perturbation of the figure's focusers for the first ``n_figures`` images (float16)."""
    if focuser not in FIGURE_FOCUSERS:
        return
    folder = make_dir(out / ARRAYS_DIR)
    for j, image in enumerate(ids):
        if image >= config.n_figures:
            continue
        arrays = {"x": x[j].astype(np.float16), "delta": (x_adv[j] - x[j]).astype(np.float16)}
        if maps is not None:
            arrays["map"] = maps[j].astype(np.float16)
        save_arrays(folder / f"{image:05d}-{focuser}.npz", arrays, compressed=True)
