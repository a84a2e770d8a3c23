"""Where the labels of an image folder come from, so that an attack runs against the true class.

* **Class subfolders** named by the model's class index (``0/``, ``243/``) or by ImageNet WordNet id
  (``n01440764/``, the ImageNet validation layout; mapped to the class order of ImageNet-1k models through
  timm's ``ImageNetInfo``).
* **A CSV file** (``--labels labels.csv``): a header ``image,label``; ``image`` is the file's path relative
  to the folder (with or without its suffix), ``label`` a class index or a WordNet id. Every loaded image
  needs a row.
* **None**: flat folders, subfolders with other names (``cat/``), ``--labels prediction`` or the bundled
  photos. The model's own clean prediction is attacked, and the report says so.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np

from evaluation.errors import InputError

#: ``--labels`` value that ignores any labels and attacks the model's prediction.
PREDICTION = "prediction"
#: How the records' labels were made when none were given.
PREDICTED_SOURCE = "none: the model's clean prediction is attacked"
WORDNET_ID = re.compile(r"n\d{8}")


@cache
def imagenet_wordnet_ids() -> tuple[str, ...]:
    """The 1,000 WordNet ids of ImageNet-1k in class-index order (timm's ``ImageNetInfo``)."""
    from timm.data import ImageNetInfo

    return tuple(ImageNetInfo().label_names())


def class_index(name: str, nb_classes: int, what: str) -> int:
    """The class index that ``name`` (an integer or a WordNet id) denotes for a model of ``nb_classes``."""
    if name.isdigit():
        return int(name)
    if WORDNET_ID.fullmatch(name):
        if nb_classes != 1000:
            raise InputError(
                f"{what}: WordNet id {name!r} needs an ImageNet-1k model, this one has {nb_classes}"
            )
        ids = imagenet_wordnet_ids()
        if name not in ids:
            raise InputError(f"{what}: {name!r} is not one of ImageNet-1k's 1,000 WordNet ids")
        return ids.index(name)
    raise InputError(f"{what}: {name!r} is neither a class index nor a WordNet id (n########)")


def folder_labels(
    classes: Sequence[str], indices: np.ndarray, nb_classes: int
) -> tuple[np.ndarray | None, str]:
    """Labels from class subfolders: ``indices`` into ``classes`` (the sorted subfolder names) become the
    model's class indices when every name is one, or a WordNet id. Returns ``(labels or None, source)``."""
    if all(c.isdigit() for c in classes):
        source = "class subfolders named by class index"
    elif all(WORDNET_ID.fullmatch(c) for c in classes):
        source = "class subfolders named by ImageNet WordNet id"
    else:
        shown = ", ".join(f"{c}/" for c in classes[:3])
        return None, f"{PREDICTED_SOURCE} (subfolders {shown} are neither class indices nor WordNet ids)"
    lookup = np.asarray([class_index(c, nb_classes, "class subfolder") for c in classes], dtype=np.int64)
    return lookup[indices], source


def csv_labels(path: str | Path, names: Sequence[str], nb_classes: int) -> np.ndarray:
    """The labels of images ``names`` (paths relative to the folder, suffix removed) from the CSV ``path``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--labels: no such file {path}")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"image", "label"} <= set(rows[0]):
        raise InputError(f"--labels: {path} needs a header 'image,label' and one row per image")
    table = {}
    for number, row in enumerate(rows, start=2):
        image = Path((row["image"] or "").strip()).with_suffix("").as_posix()
        table[image] = class_index((row["label"] or "").strip(), nb_classes, f"--labels {path} line {number}")
    missing = [name for name in names if name not in table]
    if missing:
        raise InputError(f"--labels: {path} has no row for {len(missing)} image(s), e.g. {missing[0]!r}")
    return np.asarray([table[name] for name in names], dtype=np.int64)
