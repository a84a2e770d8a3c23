"""The grid's records: their identity, the record files of a run folder, and how one is made.

Every (image, attack, focuser, area) cell of the grid is one JSON record in ``DIR/records.jsonl``
(:func:`make_records` lists the fields); under torchrun each rank appends to ``records.rank{r}.jsonl`` and
rank 0 merges them (:func:`merge_records`). The report and the plots read records through this module.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.errors import ConfigMismatchError
from evaluation.focusers import UNFOCUSED
from evaluation.run_folder import RecordLog, json_line, load_arrays, write_atomic

#: Name of the merged records file.
RECORDS_FILE = "records.jsonl"
#: Arrays for the example figure (first images, first attack, middle area), written by the batch of image 0.
EXAMPLES_FILE = "examples.npz"
N_EXAMPLES = 3

Key = tuple[int, str, str, float]
#: A group of records: one (attack, focuser, area), the correctly classified images by index.
Group = dict[int, dict[str, Any]]


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


def group_records(
    records: Sequence[dict[str, Any]], attacks: Sequence[str] | None, focusers: Sequence[str] | None
) -> tuple[dict[tuple[str, str, float], Group], list[str], list[str]]:
    """The correctly classified records by (attack, focuser, area), then by image.

    The first record of a key wins, as in :func:`unique_records`; every key gets a group, empty if no
    image was correct.

    Args:
        records: the run's records.
        attacks: the attack order (others follow in order of appearance).
        focusers: the focuser order (others follow in order of appearance).

    Returns:
        ``(groups, attack order, focuser order)``; the unfocused attack is in no focuser order.
    """
    groups: dict[tuple[str, str, float], Group] = {}
    attack_order: list[str] = list(attacks or [])
    focuser_order: list[str] = list(focusers or [])
    seen: set[Key] = set()
    for r in records:
        if record_key(r) in seen:
            continue
        seen.add(record_key(r))
        if r["attack"] not in attack_order:
            attack_order.append(r["attack"])
        if r["focuser"] not in focuser_order and r["focuser"] != UNFOCUSED:
            focuser_order.append(r["focuser"])
        group = groups.setdefault((r["attack"], r["focuser"], float(r["area"])), {})
        if r["correct"]:
            group[int(r["image"])] = r
    return groups, attack_order, focuser_order


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


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``logits`` (N,K), shifted by each row's maximum."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def load_examples(out_dir: str | Path) -> dict[str, np.ndarray] | None:
    """The arrays of ``examples.npz`` (see :func:`evaluation.plots.attack_grid`); None if absent or
    unreadable (then recomputed)."""
    return load_arrays(Path(out_dir) / EXAMPLES_FILE)


def check_names(records: Sequence[dict[str, Any]], names: Sequence[str], data: str) -> None:
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
