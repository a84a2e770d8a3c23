"""The embedded cluttered-digits benchmark, image folders and Pascal VOC boxes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_digits

from evaluation import datasets
from evaluation.datasets import INK_THRESHOLD, cluttered_digits, source_indices


@pytest.fixture(scope="module")
def test_set():
    return datasets._compose(200, "test", 64, 0)


def test_shapes_dtypes_ranges(test_set):
    x, y, boxes, ink, _ = test_set
    assert x.shape == (200, 3, 64, 64) and x.dtype == np.float32
    assert y.shape == (200,) and y.dtype == np.int64
    assert boxes.shape == (200, 4) and boxes.dtype == np.int64
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert set(np.unique(y)) <= set(range(10))
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 64).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()


def test_public_function_returns_the_composed_images(test_set):
    x, y, boxes = cluttered_digits(200, "test", seed=0)
    np.testing.assert_array_equal(x, test_set[0])
    np.testing.assert_array_equal(y, test_set[1])
    np.testing.assert_array_equal(boxes, test_set[2])


def test_box_is_the_tight_box_of_the_ink(test_set):
    _, _, boxes, ink, _ = test_set
    for b, alpha in zip(boxes, ink):
        y0, x0, y1, x1 = b
        mask = alpha > INK_THRESHOLD
        inside = np.zeros_like(mask)
        inside[y0:y1, x0:x1] = True
        assert not (mask & ~inside).any()  # all ink inside the box
        # tight: every border row/column of the box carries ink
        assert mask[y0].any() and mask[y1 - 1].any() and mask[:, x0].any() and mask[:, x1 - 1].any()


def test_digit_is_drawn_in_its_box(test_set):
    """The image differs from its background where the digit's ink is opaque."""
    x, _, boxes, ink, _ = test_set
    for img, b, alpha in zip(x[:20], boxes[:20], ink[:20]):
        strong = alpha > 0.9
        background = np.median(img[:, : b[0] if b[0] > 2 else -1, :].reshape(3, -1), axis=1)
        assert np.abs(img[:, strong] - background[:, None]).max(axis=0).min() > 0.2


def test_labels_match_sources_and_are_balanced(test_set):
    _, y, _, _, sources = test_set
    np.testing.assert_array_equal(y, load_digits().target[sources])
    counts = np.bincount(cluttered_digits(1000, "train", seed=3)[1], minlength=10)
    assert counts.min() > 60 and counts.max() < 140


def test_train_and_test_sources_are_disjoint():
    train, test = source_indices("train"), source_indices("test")
    assert not set(train) & set(test)
    assert len(train) + len(test) == 1797
    _, _, _, _, src_train = datasets._compose(300, "train", 64, 0)
    _, _, _, _, src_test = datasets._compose(300, "test", 64, 0)
    assert set(src_train) <= set(train) and set(src_test) <= set(test)


def test_deterministic_and_seed_split_dependent():
    a = cluttered_digits(5, "test", seed=1)
    b = cluttered_digits(5, "test", seed=1)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0], cluttered_digits(5, "test", seed=2)[0])
    assert not np.array_equal(a[0], cluttered_digits(5, "train", seed=1)[0])


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(1, 12),
    extra=st.integers(1, 12),
    seed=st.integers(0, 3),
    split=st.sampled_from(["train", "test"]),
)
def test_every_n_is_a_prefix_of_a_larger_one(n, extra, seed, split):
    small = cluttered_digits(n, split, seed=seed)
    large = cluttered_digits(n + extra, split, seed=seed)
    for u, v in zip(small, large):  # images, labels and boxes: "digits-00003" names one image for every n
        np.testing.assert_array_equal(u, v[:n])


def test_other_sizes():
    x, _, boxes = cluttered_digits(3, size=40, seed=0)
    assert x.shape == (3, 3, 40, 40) and (boxes[:, 2:] <= 40).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 0}, "n must"),
        ({"n": 2.5}, "n must"),
        ({"n": 2, "split": "val"}, "split must"),
        ({"n": 2, "size": 31}, "size must"),
        ({"n": 2, "seed": -1}, "seed must"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        cluttered_digits(**kwargs)


# ---------------------------------------------------------------- image folders and VOC annotations


def _save_image(path, w: int, h: int, colour: tuple[int, int, int]) -> None:
    from PIL import Image

    Image.new("RGB", (w, h), colour).save(path)


def test_image_folder_flat_resize_and_centre_crop(tmp_path):
    from PIL import Image

    # a 40x20 (w x h) image: left half black, right half white -> after resize to 16 high, crop centre 16x16
    img = np.zeros((20, 40, 3), dtype=np.uint8)
    img[:, 20:] = 255
    Image.fromarray(img).save(tmp_path / "b.png")
    _save_image(tmp_path / "a.jpg", 30, 30, (255, 0, 0))
    (tmp_path / "notes.txt").write_text("not an image")
    data = datasets.image_folder(tmp_path, size=16)
    assert [p.name for p in data.paths] == ["a.jpg", "b.png"]
    assert data.y is None and data.classes is None
    assert data.x.shape == (2, 3, 16, 16) and data.x.dtype == np.float32
    assert data.x.min() >= 0 and data.x.max() <= 1
    np.testing.assert_allclose(data.x[0, 0], 1.0, atol=0.02)  # red (JPEG round-off)
    np.testing.assert_allclose(data.x[0, 1:], 0.0, atol=0.02)
    # resized to 32x16; centre crop keeps columns 8..23: left 8 black, right 8 white
    np.testing.assert_allclose(data.x[1, :, :, :7], 0.0, atol=1e-6)
    np.testing.assert_allclose(data.x[1, :, :, 9:], 1.0, atol=1e-6)


def test_image_folder_with_class_subfolders(tmp_path):
    for cls, n in (("dog", 2), ("cat", 1)):
        (tmp_path / cls).mkdir()
        for i in range(n):
            _save_image(tmp_path / cls / f"{i}.png", 10, 12, (0, 0, 255))
    data = datasets.image_folder(tmp_path, size=8)
    assert data.classes == ["cat", "dog"]
    assert data.y.tolist() == [0, 1, 1] and data.y.dtype == np.int64
    assert [p.parent.name for p in data.paths] == ["cat", "dog", "dog"]
    np.testing.assert_allclose(data.x[:, 2], 1.0)


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        datasets.image_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match=str(tmp_path)):
        datasets.image_folder(tmp_path)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png"):
        datasets.image_folder(tmp_path)


VOC_XML = """<annotation>
  <filename>000001.jpg</filename>
  <size><width>353</width><height>500</height><depth>3</depth></size>
  <object><name>dog</name><difficult>0</difficult>
    <bndbox><xmin>48</xmin><ymin>240</ymin><xmax>195</xmax><ymax>371</ymax></bndbox></object>
  <object><name>person</name><difficult>1</difficult>
    <bndbox><xmin>8</xmin><ymin>12</ymin><xmax>352</xmax><ymax>498</ymax></bndbox></object>
</annotation>
"""


def test_voc_boxes_file_and_folder(tmp_path):
    (tmp_path / "000001.xml").write_text(VOC_XML)
    (tmp_path / "000002.xml").write_text(
        "<annotation><object><name>cat</name>"
        "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>1</xmax><ymax>2</ymax>"
        "</bndbox></object></annotation>"
    )
    single = datasets.voc_boxes(tmp_path / "000001.xml")
    assert list(single) == ["000001.jpg"]
    dog, person = single["000001.jpg"]
    # 1-based inclusive VOC corners -> 0-based exclusive (y0, x0, y1, x1)
    assert dog == ("dog", (239, 47, 371, 195), False)
    assert person.name == "person" and person.box == (11, 7, 498, 352) and person.difficult
    both = datasets.voc_boxes(tmp_path)
    assert list(both) == ["000001.jpg", "000002"]
    (cat,) = both["000002"]
    assert cat.box == (0, 0, 2, 1) and not cat.difficult  # a 1-pixel-wide, 2-pixel-high box


def test_voc_boxes_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        datasets.voc_boxes(tmp_path / "nope.xml")
    with pytest.raises(ValueError, match="no .xml"):
        datasets.voc_boxes(tmp_path)
    (tmp_path / "bad.xml").write_text("<annotation><object>")
    with pytest.raises(ValueError, match="bad.xml"):
        datasets.voc_boxes(tmp_path)
    (tmp_path / "bad.xml").write_text(
        "<annotation><object><name>x</name><bndbox><xmin>a</xmin></bndbox></object></annotation>"
    )
    with pytest.raises(ValueError, match="malformed"):
        datasets.voc_boxes(tmp_path / "bad.xml")


def _voc_xml(filename: str, objects: list[tuple[str, tuple[int, int, int, int], int]]) -> str:
    body = "".join(
        f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x0}</xmin>"
        f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for name, (x0, y0, x1, y1), difficult in objects
    )
    return f"<annotation><filename>{filename}</filename>{body}</annotation>"


def test_voc_dataset_torchray_resize_and_original_boxes(tmp_path):
    """TorchRay's preparation: shorter side to ``size`` (longer side truncated), no crop; boxes stay in
    original pixels, so a box near the edge (which a centre crop would cut away) is kept."""
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "JPEGImages").mkdir()
    _save_image(tmp_path / "JPEGImages" / "a.jpg", 40, 20, (0, 255, 0))  # w=40, h=20
    _save_image(tmp_path / "JPEGImages" / "b.jpg", 20, 20, (0, 0, 255))
    _save_image(tmp_path / "JPEGImages" / "c.jpg", 15, 25, (255, 0, 0))  # portrait
    # a: dog at VOC x 21..30, y 1..10; person only difficult -> skipped; cat in the left margin -> kept
    (tmp_path / "Annotations" / "a.xml").write_text(
        _voc_xml(
            "a.jpg",
            [("dog", (21, 1, 30, 10), 0), ("person", (1, 1, 5, 5), 1), ("cat", (1, 1, 4, 4), 0)],
        )
    )
    (tmp_path / "Annotations" / "b.xml").write_text(
        _voc_xml(
            "b.jpg", [("person", (1, 1, 20, 20), 0), ("bird", (3, 5, 4, 6), 1), ("bird", (2, 2, 3, 3), 0)]
        )
    )
    (tmp_path / "Annotations" / "c.xml").write_text(_voc_xml("c.jpg", [("car", (1, 1, 15, 25), 0)]))
    voc = datasets.voc_dataset(tmp_path, size=10)
    assert [datasets.VOC_CLASSES[c] for c in voc.classes] == ["cat", "dog", "bird", "person", "car"]
    assert voc.classes.dtype == np.int64 and voc.image.tolist() == [0, 0, 1, 1, 2]
    assert voc.sizes.tolist() == [[20, 40], [20, 20], [25, 15]]
    # 40x20 -> 20x10; 20x20 -> 10x10; 15x25 -> 10 x int(10 * 25 / 15) = 16 (torchvision's Resize)
    assert [im.shape for im in voc.images] == [(3, 10, 20), (3, 10, 10), (3, 16, 10)]
    assert all(im.dtype == np.float32 for im in voc.images)
    np.testing.assert_allclose(voc.images[0][1], 1.0, atol=0.02)  # green image a
    np.testing.assert_allclose(voc.images[1][2], 1.0, atol=0.02)  # blue image b
    # original pixels, 0-based exclusive; bird keeps its difficult box too (TorchRay's class mask)
    assert [b.tolist() for b in voc.boxes] == [
        [[0, 0, 4, 4]],
        [[0, 20, 10, 30]],
        [[4, 2, 6, 4], [1, 1, 3, 3]],
        [[0, 0, 20, 20]],
        [[0, 0, 25, 15]],
    ]
    first = datasets.voc_dataset(tmp_path, size=10, n=3)
    assert first.classes.tolist() == voc.classes[:3].tolist() and first.image.tolist() == [0, 0, 1]
    assert len(first.images) == 2 and len(first.boxes) == 3


def test_voc_dataset_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="VOC folder"):
        datasets.voc_dataset(tmp_path / "none")
    (tmp_path / "a.xml").write_text(_voc_xml("a.jpg", [("unicorn", (1, 1, 2, 2), 0)]))
    with pytest.raises(ValueError, match="unicorn"):
        datasets.voc_dataset(tmp_path)
    (tmp_path / "a.xml").write_text(_voc_xml("a.jpg", [("dog", (1, 1, 2, 2), 0)]))
    with pytest.raises(ValueError, match="a.jpg"):  # the image file is missing
        datasets.voc_dataset(tmp_path)
    with pytest.raises(ValueError, match="size must"):
        datasets.voc_dataset(tmp_path, size=0)
    (tmp_path / "a.xml").write_text(_voc_xml("a.jpg", [("dog", (1, 1, 2, 2), 1)]))
    with pytest.raises(ValueError, match=r"no \(image, class\) items"):  # only difficult boxes
        datasets.voc_dataset(tmp_path)


def test_image_folder_decodes_only_the_first_n_files(tmp_path):
    _save_image(tmp_path / "a.png", 8, 8, (255, 0, 0))
    (tmp_path / "z.png").write_bytes(b"corrupt, but beyond n")
    data = datasets.image_folder(tmp_path, size=8, n=1)
    assert [p.name for p in data.paths] == ["a.png"] and data.x.shape == (1, 3, 8, 8)


def test_image_folder_scales_16_bit_images(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I")
    np.testing.assert_allclose(datasets.image_folder(tmp_path, size=8).x, 128 / 255, atol=1e-6)


def test_image_folder_applies_exif_orientation(tmp_path):
    from PIL import Image

    img = Image.new("RGB", (80, 40), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 80, 20))  # stored top half blue; Orientation 6 shows it on the right
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(tmp_path / "rot.jpg", exif=exif.tobytes())
    x = datasets.image_folder(tmp_path, size=4).x[0]
    assert (x[0, :, 0] > 0.8).all() and (x[2, :, -1] > 0.8).all()  # left red, right blue


def test_image_folder_refuses_mixed_and_too_deep_layouts(tmp_path):
    (tmp_path / "mixed" / "cls").mkdir(parents=True)
    _save_image(tmp_path / "mixed" / "top.png", 8, 8, (0, 0, 0))
    _save_image(tmp_path / "mixed" / "cls" / "inner.png", 8, 8, (0, 0, 0))
    with pytest.raises(ValueError, match="mixes images"):
        datasets.image_folder(tmp_path / "mixed", size=8)
    (tmp_path / "deep" / "cls" / "sub").mkdir(parents=True)
    _save_image(tmp_path / "deep" / "cls" / "sub" / "x.png", 8, 8, (0, 0, 0))
    with pytest.raises(ValueError, match="deeper folders are not read"):
        datasets.image_folder_files(tmp_path / "deep")


def test_resize_crop_resizes_to_the_weights_resize_size_first():
    from PIL import Image

    img = np.zeros((64, 64, 3), dtype=np.uint8)
    img[:8] = 255  # a white band on top: kept by a plain 64 crop, cut away by resize 128 -> crop 64
    x = datasets.resize_crop(Image.fromarray(img), 64)
    assert x[:, :8].min() == 1.0
    assert datasets.resize_crop(Image.fromarray(img), 64, resize=128).max() == 0.0


@settings(max_examples=40, deadline=None)
@given(
    width=st.integers(8, 70),
    height=st.integers(8, 70),
    size=st.integers(4, 12),
    extra=st.integers(0, 6),
    seed=st.integers(0, 2**16),
)
def test_resize_crop_equals_the_torchvision_weights_transforms(width, height, size, extra, seed):
    """The pixels torchvision's ImageClassification preset (Resize then CenterCrop, PIL bilinear) gives
    before normalising: the longer side truncated, the crop offset rounded as CenterCrop does."""
    from PIL import Image
    from torchvision.transforms._presets import ImageClassification

    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    img = Image.fromarray(pixels)
    preset = ImageClassification(crop_size=size, resize_size=size + extra, mean=(0, 0, 0), std=(1, 1, 1))
    expected = preset(img).numpy()
    np.testing.assert_allclose(datasets.resize_crop(img, size, size + extra), expected, atol=1e-6)
