"""Datasets for the evaluation: the embedded cluttered-digits benchmark, image folders and Pascal VOC boxes.

``cluttered_digits`` needs no download: it composes scikit-learn's bundled 8x8 handwritten digits
(1797 sources) into colour images with a known object box: the pointing game and attacks run offline.
"""

from __future__ import annotations

import functools
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from evaluation.errors import InputError
from evaluation.photos import PHOTOS
from saliency.base import is_int

#: A pixel belongs to the digit's ink when the digit's opacity exceeds this value (opacity is in [0,1]).
INK_THRESHOLD = 0.1
#: Share of the 1797 source digits of each class that goes to the test split (fixed, seed 0).
TEST_FRACTION = 0.3
#: Side lengths (pixels) of the up-scaled digit patch (an 8x8 digit plus a 1-pixel blank border).
DIGIT_SIZES = tuple(range(20, 29))
#: Number of clutter fragments per image, inclusive range.
N_FRAGMENTS = (3, 6)
#: Side lengths of the square clutter fragments, inclusive range.
FRAGMENT_SIZES = (6, 10)

#: Resampling filters of :func:`resize_crop` (PIL's, as torchvision's and timm's transforms use).
INTERPOLATIONS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
_SPLITS = ("train", "test")


@functools.lru_cache(maxsize=1)
def _sources() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """sklearn digits as opacity in [0,1] (1797,8,8), labels, and the fixed stratified source split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)
    rng = np.random.default_rng(0)
    test = []
    for c in range(10):
        members = rng.permutation(np.flatnonzero(labels == c))
        test.append(members[: round(TEST_FRACTION * len(members))])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    return images, labels, {"train": train_idx, "test": test_idx}


@functools.lru_cache(maxsize=len(DIGIT_SIZES))
def _upscaled(side: int) -> np.ndarray:
    """All sources padded to 10x10, resized (bicubic) to side x side, clipped to [0,1]: (1797,side,side)."""
    images, _, _ = _sources()
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1)))
    out = np.empty((len(images), side, side), dtype=np.float32)
    for i, img in enumerate(padded):
        out[i] = np.asarray(Image.fromarray(img).resize((side, side), Image.Resampling.BICUBIC))
    return np.clip(out, 0.0, 1.0)


def source_indices(split: str) -> np.ndarray:
    """Indices into ``sklearn.datasets.load_digits()`` of the source digits used by ``split``."""
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    return _sources()[2][split].copy()


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _compose(
    n: int, split: str, size: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Render the benchmark; also returns the digit's opacity (n,size,size) and the source index per image."""
    if not is_int(n) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    if not is_int(size) or size < 32:
        raise ValueError(f"size must be an integer >= 32, got {size!r}")
    if not is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    _, labels, splits = _sources()
    pool = splits[split]
    x = np.empty((n, 3, size, size), dtype=np.float32)
    ink = np.zeros((n, size, size), dtype=np.float32)
    boxes = np.empty((n, 4), dtype=np.int64)
    sources = np.empty(n, dtype=np.int64)
    for i in range(n):
        # image i depends on (seed, split, i) only: every n is a prefix of a larger one
        rng = np.random.default_rng([int(seed), _SPLITS.index(split), i])
        src = sources[i] = rng.choice(pool)
        background = rng.uniform(0.0, 0.3, size=3).astype(np.float32)
        canvas = np.broadcast_to(background[:, None, None], (3, size, size)).copy()

        side = int(rng.choice(DIGIT_SIZES))
        digit = _upscaled(side)[src]
        top, left = (int(v) for v in rng.integers(0, size - side + 1, size=2))
        ink[i, top : top + side, left : left + side] = digit
        rows = np.flatnonzero((digit > INK_THRESHOLD).any(axis=1))
        cols = np.flatnonzero((digit > INK_THRESHOLD).any(axis=0))
        box = (top + rows[0], left + cols[0], top + rows[-1] + 1, left + cols[-1] + 1)
        boxes[i] = box

        # Clutter: square crops of other digits of the same split, kept outside the digit's box.
        for _ in range(int(rng.integers(N_FRAGMENTS[0], N_FRAGMENTS[1] + 1))):
            other = _upscaled(int(rng.choice(DIGIT_SIZES)))[rng.choice(pool)]
            f = int(rng.integers(FRAGMENT_SIZES[0], FRAGMENT_SIZES[1] + 1))
            cy, cx = (int(v) for v in rng.integers(0, other.shape[0] - f + 1, size=2))
            fy, fx = (int(v) for v in rng.integers(0, size - f + 1, size=2))
            colour = rng.uniform(0.6, 1.0, size=3).astype(np.float32)
            if _overlaps((fy, fx, fy + f, fx + f), box):
                continue
            alpha = other[cy : cy + f, cx : cx + f]
            region = canvas[:, fy : fy + f, fx : fx + f]
            canvas[:, fy : fy + f, fx : fx + f] = region * (1 - alpha) + colour[:, None, None] * alpha

        colour = rng.uniform(0.6, 1.0, size=3).astype(np.float32)
        alpha = ink[i]
        canvas = canvas * (1 - alpha) + colour[:, None, None] * alpha
        noise = rng.normal(0.0, 0.02, size=canvas.shape).astype(np.float32)
        x[i] = np.clip(canvas + noise, 0.0, 1.0)
    return x, labels[sources].copy(), boxes, ink, sources


def cluttered_digits(
    n: int, split: str = "test", size: int = 64, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The embedded benchmark: one handwritten digit per image among fragments of other digits.

    Each image has a random dark background colour, one sklearn digit up-scaled (bicubic) to 20..28 px in
    a random bright colour at a random position, 3..6 square fragments (6..10 px crops) of other digits in
    random bright colours that never overlap the digit's box, and Gaussian noise (sigma 0.02). Train and
    test draw from disjoint sources (a fixed, class-stratified split of the 1797 digits, see
    :func:`source_indices`). Image i depends only on (i, split, size, seed), so the first n images of a
    larger n are the same: ``cluttered_digits(50)`` is the start of ``cluttered_digits(200)``.

    Returns:
        x: float32 (n,3,size,size) in [0,1].
        y: int64 (n,) labels 0..9.
        boxes: int64 (n,4) ``y0, x0, y1, x1`` (y1, x1 exclusive): the tight box of the digit's ink, i.e.
            of the pixels where the digit's opacity exceeds :data:`INK_THRESHOLD`.
    """
    x, y, boxes, _, _ = _compose(n, split, size, seed)
    return x, y, boxes


class ImageFolder(NamedTuple):
    """Images loaded by :func:`image_folder` (a named tuple, so ``x, paths = data[:2]`` also works).

    Attributes:
        x: float32 (N,3,size,size) in [0,1].
        paths: the N image files, in order.
        y: int64 (N,) class indices (sorted class-folder names) or None for a flat folder.
        classes: sorted class-folder names (index = label) or None.
    """

    x: np.ndarray
    paths: list[Path]
    y: np.ndarray | None
    classes: list[str] | None


def to_rgb(img: Image.Image) -> Image.Image:
    """A PIL image upright (its EXIF orientation applied) in RGB; 16-bit and 32-bit integer modes
    (``I;16*``, ``I``) are scaled from [0, 65535] to [0, 255] instead of being clipped to white."""
    img = ImageOps.exif_transpose(img)
    if img.mode.startswith("I"):
        array = np.asarray(img, dtype=np.float64) / 65535.0
        img = Image.fromarray(np.round(np.clip(array, 0.0, 1.0) * 255).astype(np.uint8), "L")
    return img.convert("RGB")


def _read_rgb(path: Path) -> Image.Image:
    """The image file as an upright RGB PIL image (:func:`to_rgb`); a ValueError naming the file if it
    cannot be read."""
    try:
        with Image.open(path) as img:
            return to_rgb(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise InputError(f"image file {path} could not be read: {err}") from err


def _array(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0


def resize_crop(
    img: Image.Image, size: int, resize: int | None = None, interpolation: str = "bilinear"
) -> np.ndarray:
    """An RGB PIL image -> shorter side resized to ``resize`` (default ``size``; see
    :func:`_resize_shorter`) -> the centre ``size`` x ``size`` crop: float32 (3,size,size) in [0,1], the
    same pixels as torchvision's weights' transforms before normalisation, which use ``resize`` > ``size``
    (e.g. 256 then 224, see :func:`evaluation.zoo.resize_size`). ``interpolation``: ``"bilinear"``
    (torchvision's weights) or ``"bicubic"`` (EfficientNet-Lite's, see
    :func:`evaluation.zoo.resize_interpolation`), PIL's filters as in torchvision's ``Resize``."""
    x = _resize_shorter(img, max(size, resize or size), interpolation)
    # torchvision's CenterCrop: offsets int(round(excess / 2)), Python's round (half to even)
    top, left = (int(round((side - size) / 2.0)) for side in x.shape[1:])
    return np.ascontiguousarray(x[:, top : top + size, left : left + size])


def _check_interpolation(interpolation: str) -> None:
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {tuple(INTERPOLATIONS)}, got {interpolation!r}")


def _resize_shorter(img: Image.Image, size: int, interpolation: str = "bilinear") -> np.ndarray:
    """torchvision's ``Resize(size)`` on a PIL image (as TorchRay's input and the weights' transforms):
    the shorter side to ``size``, the longer to ``int(size * longer / shorter)``, PIL bilinear (or
    ``interpolation``, see :data:`INTERPOLATIONS`), no crop: (3,h,w) float32 in [0,1]."""
    _check_interpolation(interpolation)
    w, h = img.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    return _array(img.resize((new_w, new_h), INTERPOLATIONS[interpolation]))


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def image_folder_files(path: str | Path) -> tuple[list[Path], list[int] | None, list[str] | None]:
    """The files :func:`image_folder` reads, in order, without decoding them: ``(files, labels, classes)``.

    Either image files directly in ``path`` (labels and classes None) or class subfolders holding image
    files directly (``path/<class>/<image>``). Raises FileNotFoundError for a missing folder and ValueError
    for a folder without images at either level or mixing both layouts (images beside class folders).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    files = _image_files(folder)
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and _image_files(p))
    if files and subfolders:
        raise InputError(
            f"image folder {folder} mixes images ({files[0].name}, ...) with class subfolders "
            f"({subfolders[0].name}, ...); keep either the images or the class subfolders"
        )
    if files:
        return files, None, None
    if not subfolders:
        raise InputError(
            f"image folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}) directly or in class "
            "subfolders (deeper folders are not read)"
        )
    labels: list[int] = []
    for label, sub in enumerate(subfolders):
        class_files = _image_files(sub)
        files.extend(class_files)
        labels.extend([label] * len(class_files))
    return files, labels, [p.name for p in subfolders]


def image_folder(
    path: str | Path,
    size: int = 224,
    n: int | None = None,
    resize: int | None = None,
    *,
    interpolation: str = "bilinear",
) -> ImageFolder:
    """Load an image folder: image files directly in ``path`` (labels None), or ImageNet-style class
    subfolders ``path/<class>/<image>`` (labels = index of the sorted class names); see
    :func:`image_folder_files`.

    Files are taken in sorted order and only the first ``n`` (None: all) are decoded. Each image is
    made upright and RGB (:func:`to_rgb`) and resized (``interpolation``: ``"bilinear"`` or
    ``"bicubic"``) and centre-cropped by :func:`resize_crop`.

    Raises:
        FileNotFoundError: ``path`` is not a folder. ValueError: no images in it, a mixed layout, or an
        unreadable image among the first ``n`` (the message names the file).
    """
    if not is_int(size) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    if n is not None and (not is_int(n) or n < 1):
        raise ValueError(f"n must be None or an integer >= 1, got {n!r}")
    _check_interpolation(interpolation)
    files, labels, classes = image_folder_files(path)
    files = files[:n]
    x = np.stack([resize_crop(_read_rgb(f), size, resize, interpolation) for f in files])
    y = np.asarray(labels[: len(files)], dtype=np.int64) if labels is not None else None
    return ImageFolder(x=x, paths=files, y=y, classes=classes)


def sample_photos(
    size: int = 224, resize: int | None = None, interpolation: str = "bicubic"
) -> tuple[np.ndarray, list[str]]:
    """The natural photographs bundled with scikit-image, scikit-learn and matplotlib
    (:data:`evaluation.photos.PHOTOS`; sources and licences in :mod:`evaluation.photos`), made RGB and
    resized and centre-cropped by :func:`resize_crop` as the ImageNet weights expect.

    Args:
        size: side of the centre crop.
        resize: the shorter side before the crop; None: ``round(size / 0.875)`` (256 for 224).
        interpolation: ``"bicubic"`` (EfficientNet-Lite's weights) or ``"bilinear"`` (torchvision's).

    Returns:
        x: float32 (N,3,size,size) in [0,1]. names: the N photo names (``"skimage-chelsea"``, ...).
    """
    if not is_int(size) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    if resize is not None and (not is_int(resize) or resize < 1):
        raise ValueError(f"resize must be None or a positive integer, got {resize!r}")
    _check_interpolation(interpolation)
    resize = round(size / 0.875) if resize is None else resize
    x = np.stack([resize_crop(to_rgb(photo.loader()), size, resize, interpolation) for photo in PHOTOS])
    return x, [photo.name for photo in PHOTOS]


class VOCObject(NamedTuple):
    """One annotated object (a named tuple): class name, box ``y0, x0, y1, x1`` (0-based, y1/x1
    exclusive), difficult flag."""

    name: str
    box: tuple[int, int, int, int]
    difficult: bool


def _parse_voc(path: Path) -> tuple[str, list[VOCObject]]:
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as err:
        raise InputError(f"VOC annotation {path} could not be parsed: {err}") from err
    filename = root.findtext("filename") or path.stem
    objects = []
    for i, obj in enumerate(root.iter("object")):
        name = obj.findtext("name")
        bndbox = obj.find("bndbox")
        if name is None or bndbox is None:
            raise InputError(f"VOC annotation {path}: object {i} lacks <name> or <bndbox>")
        try:
            # VOC corners are 1-based and inclusive: pixels xmin..xmax -> 0-based [xmin-1, xmax).
            xmin, ymin, xmax, ymax = (
                round(float(bndbox.findtext(tag))) for tag in ("xmin", "ymin", "xmax", "ymax")
            )
        except (TypeError, ValueError) as err:
            raise InputError(f"VOC annotation {path}: object {i} has a malformed <bndbox>") from err
        difficult = (obj.findtext("difficult") or "0").strip() == "1"
        objects.append(VOCObject(name.strip(), (ymin - 1, xmin - 1, ymax, xmax), difficult))
    return filename, objects


def voc_boxes(path: str | Path) -> dict[str, list[VOCObject]]:
    """Parse Pascal VOC XML annotation(s): one ``.xml`` file or a folder of them (sorted).

    Returns ``{image filename (from <filename>, else the XML stem): [VOCObject, ...]}``; boxes are
    converted from VOC's 1-based inclusive corners to 0-based ``y0, x0, y1, x1`` with y1/x1 exclusive.

    Raises:
        FileNotFoundError: missing path. ValueError: a folder without XML files, or a malformed file
        (the message names it).
    """
    path = Path(path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".xml")
        if not files:
            raise InputError(f"annotation folder {path} holds no .xml files")
    else:
        raise FileNotFoundError(f"VOC annotation path not found: {path}")
    return dict(_parse_voc(f) for f in files)


#: Pascal VOC class names; the index is the class id used by :func:`voc_dataset`.
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car",
    "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike",
    "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


class VOCItems(NamedTuple):
    """Pointing-game items of :func:`voc_dataset` (a named tuple), one per (image, class present).

    Attributes:
        images: per image, float32 (3,h,w) in [0,1]: the shorter side resized to ``size``, no crop.
        sizes: int64 (I,2) original (height, width) of each image, where the maps are scored.
        image: int64 (M,) index into ``images`` of each item; an image's items are consecutive.
        classes: int64 (M,) indices into :data:`VOC_CLASSES`.
        boxes: M int64 (k,4) arrays ``y0, x0, y1, x1`` (exclusive) in original image pixels.
    """

    images: list[np.ndarray]
    sizes: np.ndarray
    image: np.ndarray
    classes: np.ndarray
    boxes: list[np.ndarray]


def voc_dataset(path: str | Path, size: int = 224, n: int | None = None) -> VOCItems:
    """Pointing-game items from a Pascal VOC folder, prepared as TorchRay's benchmark does.

    ``path`` holds ``Annotations/*.xml`` and ``JPEGImages/`` (VOCdevkit layout), or the XML files and
    images side by side. Each image's shorter side is resized to ``size`` (bilinear, no crop, see
    :func:`_resize_shorter`); the boxes stay in original pixels, where TorchRay scores maps up-sampled
    to the original size. As in TorchRay, a class whose boxes are all "difficult" is skipped and an
    item keeps all boxes of its class. Items follow the sorted annotation files, then the class id;
    ``n`` keeps the first n.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"VOC folder not found: {root}")
    if not is_int(size) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    if n is not None and (not is_int(n) or n < 1):
        raise ValueError(f"n must be None or an integer >= 1, got {n!r}")
    annotations = root / "Annotations" if (root / "Annotations").is_dir() else root
    images_dir = root / "JPEGImages" if (root / "JPEGImages").is_dir() else root
    images: list[np.ndarray] = []
    sizes: list[tuple[int, int]] = []
    image_index: list[int] = []
    classes: list[int] = []
    boxes: list[np.ndarray] = []
    for filename, objects in voc_boxes(annotations).items():
        if n is not None and len(classes) >= n:
            break
        unknown = sorted({o.name for o in objects} - set(VOC_CLASSES))
        if unknown:
            raise InputError(f"VOC annotation for {filename}: unknown class names {unknown}")
        names = sorted({o.name for o in objects if not o.difficult}, key=VOC_CLASSES.index)
        if not names:
            continue
        img = _read_rgb(images_dir / filename)
        images.append(_resize_shorter(img, size))
        sizes.append((img.height, img.width))
        for name in names[: None if n is None else n - len(classes)]:
            image_index.append(len(images) - 1)
            classes.append(VOC_CLASSES.index(name))
            boxes.append(np.asarray([o.box for o in objects if o.name == name], dtype=np.int64))
    if not classes:
        raise InputError(f"VOC folder {root} gave no (image, class) items with a non-difficult box")
    return VOCItems(
        images,
        np.asarray(sizes, dtype=np.int64),
        np.asarray(image_index, dtype=np.int64),
        np.asarray(classes, dtype=np.int64),
        boxes,
    )
