"""Image files as model inputs: upright RGB, the shorter side resized, the centre crop, float32 in [0,1]."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from evaluation.errors import InputError


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
    """Read an image file as float32 (3,size,size) in [0,1] (see :func:`resize_crop`).

    Raises:
        InputError: the file is missing or not an image PIL reads.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            return resize_crop(img, size, resize, interpolation)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise InputError(f"cannot read image {path}: {err}") from None


def save_map(stem: Path, image: np.ndarray, saliency_map: np.ndarray) -> None:
    """``stem.npy`` (the (H,W) float32 map) and ``stem.png`` (its overlay on ``image``)."""
    import io

    from evaluation.run_folder import save_image, write_atomic
    from saliency.plot import overlay

    buffer = io.BytesIO()
    np.save(buffer, saliency_map.astype(np.float32))
    write_atomic(stem.with_name(stem.name + ".npy"), buffer.getvalue())
    save_image(stem.with_name(stem.name + ".png"), overlay(image, saliency_map))
