"""What a run loads: the images of ``--data`` with their labels, and the classifier they are checked
against (:func:`load_model_and_data`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.errors import InputError
from evaluation.focusers import check_layers
from evaluation.labels import PREDICTED_SOURCE, PREDICTION, csv_labels, folder_labels
from evaluation.run_folder import data_digest


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
            raise InputError("labels: the digits carry their own labels; --labels is for photos and folders")
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


def load_model_and_data(config: Any, device: str | None = None) -> tuple[Any, list[str], Dataset]:
    """The ART classifier of ``config`` (an :class:`ExperimentConfig` or a
    :class:`evaluation.paper_protocol.PaperConfig`: its model, weights, data, labels, n, size, layers and
    seed), its CAM layers and its data, checked against each other before anything is written: the layers
    are modules of the model and the labels are classes of it."""
    import torch

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
        raise InputError(
            f"data {config.data!r}: labels must lie in [0, {classifier.nb_classes}) for {config.model}, got "
            f"[{int(data.y.min())}, {int(data.y.max())}]"
        )
    return classifier, layers, data


def check_areas(areas: Sequence[float], shape: tuple[int, ...]) -> None:
    """Every area keeps at least one pixel of an image of ``shape`` (checked before the folder is pinned)."""
    from saliency.masks import top_k

    try:
        for area in areas:
            top_k(np.zeros((1, *shape[-2:]), np.float32), area)
    except ValueError as err:
        raise InputError(f"areas: {err}") from None
