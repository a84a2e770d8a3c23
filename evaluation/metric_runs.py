"""What the saliency-metric runs (pointing game, insertion-deletion, sanity) share: their options
(:class:`MetricRun`), their run folder (:func:`open_run`), their data and what a GPNN-CAM map costs on
this machine (:func:`gpnn_seconds_per_map`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.focusers import GPNN_CAM_GPNNS, MapSettings


@dataclass(frozen=True)
class MetricRun:
    """The options every saliency-metric run takes: the model (``weights`` None: its default), the data
    (``n`` images at ``size`` px), the target layers, the seed, GPNN-CAM's variations and GPNN (a name of
    :data:`evaluation.focusers.GPNN_CAM_GPNNS`), the output folder and progress bars."""

    model: str
    weights: str | None
    data: str
    n: int
    size: int
    layers: list[str]
    seed: int
    gpnn_variations: int
    gpnn: str
    out: str
    verbose: bool = True

    def settings(self) -> MapSettings:
        """How the run makes its maps."""
        return MapSettings(self.layers, self.seed, self.gpnn_variations, GPNN_CAM_GPNNS[self.gpnn])

    def weights_label(self) -> str:
        """How the report names the weights: digits-cnn's and EfficientNet-Lite's default are shipped."""
        from evaluation import zoo

        if self.weights is None:
            return "shipped" if zoo.ships_weights(self.model) else "random (none)"
        return str(self.weights)

    def data_phrase(self, n: int) -> str:
        """``"32 cluttered-digit test images"``, ``"9 bundled photographs"``, ``"5 images of DIR"``."""
        what = {"digits": "cluttered-digit test images", "photos": "bundled photographs"}
        return f"{n} {what.get(self.data, f'images of {self.data}')}"

    def dataset(self, nb_classes: int) -> Any:
        """The images of ``data`` (:func:`evaluation.loading.load_dataset`): the digits, the bundled photos
        or an image folder, resized as the model's weights expect."""
        from evaluation import zoo
        from evaluation.loading import load_dataset

        resize = zoo.resize_size(self.model, self.size, self.weights)
        interpolation = zoo.resize_interpolation(self.model)
        return load_dataset(
            self.data, self.n, self.size, self.seed, resize, interpolation, nb_classes=nb_classes
        )


def open_run(
    out: str | Path, config: dict[str, Any], records: str, key: Callable[[dict[str, Any]], Any], digest: str
) -> tuple[Any, list[dict[str, Any]]]:
    """Pin ``out`` to a run's arguments (``config.json``) and inputs (``data.sha256``: ``digest``, of
    :func:`evaluation.run_folder.data_digest`), or check a rerun against them.

    Returns:
        The ``records`` log (:class:`evaluation.run_folder.RecordLog`) and what it holds (a line cut by a
        crash repaired).
    """
    from evaluation.run_folder import RecordLog, check_config, check_data

    check_config(out, config)
    log = RecordLog(Path(out) / records, key=key)
    saved = log.read(repair=True)
    check_data(out, digest, has_results=bool(saved))
    return log, saved


def _duration(seconds: float) -> str:
    """``"40 s"``, ``"12 min"``, ``"3.5 h"``."""
    if seconds < 60:
        return f"{seconds:.2g} s" if seconds < 10 else f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"


def gpnn_seconds_per_map(classifier: Any, image: np.ndarray, settings: MapSettings) -> float:
    """About how many seconds one GPNN-CAM map of ``image`` (C,H,W) takes, measured now on this machine.

    GPNN is warmed up on a small crop (one-time set-up costs), then ONE variation of ``image`` is
    generated with the settings' GPNN and classified; a map costs that time times the variations (its
    regressions are cheap next to them). GPNN-CAM generates the variations in batches of up to 10, which
    share some fixed costs: the estimate is close for the preset at 224 px (its time grows linearly with
    the variations) and up to ~2x high for the reduced GPNN on small images.
    """
    import torch

    from evaluation.focusers import gpnn_generator

    gpnn = gpnn_generator(settings.gpnn_params)
    device = getattr(classifier, "device", torch.device("cpu"))
    x = torch.from_numpy(np.ascontiguousarray(image)).to(device)
    side = max(gpnn.coarsest, gpnn.patch_size)
    gpnn.generate(x[:, :side, :side], 1, seed=settings.seed)
    start = time.perf_counter()
    classifier.predict(gpnn.generate(x, 1, seed=settings.seed).cpu().numpy())
    return (time.perf_counter() - start) * settings.gpnn_variations


def report_gpnn_cost(run: MetricRun, classifier: Any, image: np.ndarray, maps_left: int) -> None:
    """Say on stderr about how long the GPNN-CAM maps the run still computes (``maps_left``) take: one
    variation of ``image`` timed now (:func:`gpnn_seconds_per_map`)."""
    if maps_left == 0:
        return
    per_map = gpnn_seconds_per_map(classifier, image, run.settings())
    faster = "fewer --gpnn-variations" + ("" if run.gpnn == "reduced" else " or --gpnn reduced")
    print(
        f"gpnn-cam: about {_duration(per_map)} per image at {image.shape[-2]}x{image.shape[-1]} px "
        f"({run.gpnn_variations} variations), about {_duration(per_map * maps_left)} for the {maps_left} "
        f"maps this run computes; {faster} makes it faster",
        file=sys.stderr,
    )
