"""Natural photographs bundled with the dependencies' wheels (no download), to check ImageNet classifiers.

:func:`evaluation.datasets.sample_photos` loads them resized and cropped as a model's weights expect.
Their sources and licences, as the packages state them (scikit-image: the ``skimage.data`` docstrings;
scikit-learn: ``sklearn/datasets/images/README.txt``; matplotlib states none in ``sample_data/README.txt``):

- ``skimage-chelsea``: Chelsea the cat, CC0 by the photographer (Stefan van der Walt).
- ``skimage-coffee``: a coffee cup, courtesy of Pikolo Espresso Bar, CC0 by the photographer (Rachel
  Michetti).
- ``skimage-astronaut``: astronaut Eileen Collins, from the NASA Great Images database; no known copyright
  restrictions, public domain.
- ``skimage-rocket``: the launch of DSCOVR on a Falcon 9, by SpaceX, released into the public domain.
- ``skimage-camera``: a grey-level photograph of a man with a camera, CC0 by the photographer (Lav
  Varshney); made RGB by repeating its channel.
- ``skimage-motorcycle_left``: the left image of the Middlebury 2014 stereo pair "Motorcycle" (Scharstein
  et al., GCPR 2014), down-sampled by 4; scikit-image states no licence for it.
- ``sklearn-china``: a Chinese temple, CC BY 2.0, attribution: danielbuechele (Flickr), retrieved by Robert
  Layton.
- ``sklearn-flower``: a flower, CC BY 2.0, attribution: vultilion (Flickr; the README's attribution line
  repeats danielbuechele but its links are vultilion's), retrieved by Robert Layton.
- ``matplotlib-grace_hopper``: a portrait of Grace Hopper; matplotlib states no source or licence. It is
  the U.S. Navy's official portrait of Commodore Grace M. Hopper, a work of the U.S. federal government
  and so in the public domain (the provenance is not stated in the package).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from PIL import Image


class Photo(NamedTuple):
    """One bundled photograph: its name, a loader returning a PIL image (RGB or grey), source, licence."""

    name: str
    loader: Callable[[], Image.Image]
    source: str
    licence: str


def _skimage(function: str, index: int | None = None) -> Callable[[], Image.Image]:
    """A loader of ``skimage.data.<function>()`` (its ``index``-th item when it returns a tuple)."""

    def load() -> Image.Image:
        from skimage import data

        image = getattr(data, function)()
        return Image.fromarray(image if index is None else image[index])

    return load


def _sklearn(filename: str) -> Callable[[], Image.Image]:
    """A loader of ``sklearn.datasets.load_sample_image(filename)``."""

    def load() -> Image.Image:
        from sklearn.datasets import load_sample_image

        return Image.fromarray(load_sample_image(filename))

    return load


def _grace_hopper() -> Image.Image:
    """matplotlib's ``sample_data/grace_hopper.jpg``, decoded."""
    from matplotlib import cbook

    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as img:
        return img.convert("RGB")


#: The photographs of :func:`evaluation.datasets.sample_photos`, in its order (see the module docstring).
PHOTOS = (
    Photo("skimage-chelsea", _skimage("chelsea"), "skimage.data.chelsea(), Stefan van der Walt", "CC0"),
    Photo("skimage-coffee", _skimage("coffee"), "skimage.data.coffee(), Rachel Michetti", "CC0"),
    Photo("skimage-astronaut", _skimage("astronaut"), "skimage.data.astronaut(), NASA", "public domain"),
    Photo("skimage-rocket", _skimage("rocket"), "skimage.data.rocket(), SpaceX", "public domain"),
    Photo("skimage-camera", _skimage("camera"), "skimage.data.camera(), Lav Varshney", "CC0"),
    Photo(
        "skimage-motorcycle_left",
        _skimage("stereo_motorcycle", 0),
        "skimage.data.stereo_motorcycle()[0], Middlebury 2014 stereo dataset",
        "not stated",
    ),
    Photo("sklearn-china", _sklearn("china.jpg"), "sklearn load_sample_image, danielbuechele", "CC BY 2.0"),
    Photo("sklearn-flower", _sklearn("flower.jpg"), "sklearn load_sample_image, vultilion", "CC BY 2.0"),
    Photo(
        "matplotlib-grace_hopper",
        _grace_hopper,
        "matplotlib sample_data grace_hopper.jpg, U.S. Navy portrait",
        "public domain (U.S. government work; not stated by matplotlib)",
    ),
)
