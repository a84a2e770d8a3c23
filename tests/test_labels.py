"""Real labels for image folders: class-index and WordNet-id subfolders, a CSV file, or none (then the
report says the predicted class was attacked and never "correctly classified")."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from evaluation.configs import ExperimentConfig
from evaluation.datasets import cluttered_digits
from evaluation.experiment import run_experiment
from evaluation.labels import PREDICTED_SOURCE, imagenet_wordnet_ids
from evaluation.loading import load_dataset
from evaluation.report import write_report


def _folder(root, layout: dict[str, int]):
    """``root/<sub>/img{i}.png`` digit images, ``layout[sub]`` of them per subfolder."""
    x, _, _ = cluttered_digits(sum(layout.values()), "test")
    images = iter((x.transpose(0, 2, 3, 1) * 255).astype(np.uint8))
    for sub, count in layout.items():
        (root / sub).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(next(images)).save(root / sub / f"img{i}.png")
    return root


def test_class_index_subfolders_are_the_labels_and_reach_the_records(tmp_path):
    data = _folder(tmp_path / "data", {"3": 1, "7": 2})
    loaded = load_dataset(str(data), 10, 64, nb_classes=10)
    assert loaded.y.tolist() == [3, 7, 7] and "class index" in loaded.label_source
    config = ExperimentConfig(data=str(data), n=3, size=64, attacks=("fgsm",), focusers=(), batch_size=3)
    result = run_experiment(config, tmp_path / "run", verbose=False)
    assert [r["label"] for r in result.records] == [3, 7, 7]
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Labels: class subfolders named by class index." in report and "correctly classified" in report
    assert json.loads((tmp_path / "run" / "results.json").read_text())["labels"] == loaded.label_source


def test_wordnet_id_subfolders_map_to_imagenet_class_indices(tmp_path):
    ids = imagenet_wordnet_ids()
    assert len(ids) == 1000 and ids[0] == "n01440764" and ids[281] == "n02123045"  # tench, tabby cat
    data = _folder(tmp_path / "data", {"n02123045": 1, "n01440764": 1})
    loaded = load_dataset(str(data), 10, 64)
    assert loaded.y.tolist() == [0, 281] and "WordNet id" in loaded.label_source
    with pytest.raises(
        ValueError, match="WordNet id 'n01440764' needs an ImageNet-1k model, this one has 10"
    ):
        load_dataset(str(data), 10, 64, nb_classes=10)


def test_other_subfolder_names_attack_the_prediction_and_say_why(tmp_path):
    data = _folder(tmp_path / "data", {"cat": 1, "cup": 1})
    loaded = load_dataset(str(data), 10, 64, nb_classes=10)
    assert loaded.y is None
    assert loaded.label_source.startswith(PREDICTED_SOURCE) and "cat/, cup/" in loaded.label_source


def test_a_csv_gives_the_labels_by_path_and_names_what_is_wrong(tmp_path):
    data = _folder(tmp_path / "data", {"cat": 2})
    table = tmp_path / "labels.csv"
    table.write_text("image,label\ncat/img0.png,4\ncat/img1,n01440764\n")
    loaded = load_dataset(str(data), 10, 64, labels=str(table))
    assert loaded.y.tolist() == [4, 0] and loaded.label_source == f"the CSV file {table}"
    table.write_text("image,label\ncat/img0.png,4\n")
    with pytest.raises(ValueError, match=r"has no row for 1 image\(s\), e.g. 'cat/img1'"):
        load_dataset(str(data), 10, 64, labels=str(table))
    table.write_text("image,label\ncat/img0.png,tabby\ncat/img1.png,1\n")
    with pytest.raises(ValueError, match="line 2: 'tabby' is neither a class index nor a WordNet id"):
        load_dataset(str(data), 10, 64, labels=str(table))
    assert load_dataset(str(data), 10, 64, labels="prediction").y is None


def test_other_labels_change_the_data_digest(tmp_path):
    data = _folder(tmp_path / "data", {"1": 1, "2": 1})
    table = tmp_path / "labels.csv"
    table.write_text("image,label\n1/img0,5\n2/img0,6\n")
    by_folder = load_dataset(str(data), 10, 64, nb_classes=10)
    by_csv = load_dataset(str(data), 10, 64, labels=str(table), nb_classes=10)
    assert by_folder.digest() != by_csv.digest()


def test_without_labels_the_report_says_the_predicted_class_was_attacked(tmp_path):
    record = {"image": 0, "attack": "fgsm", "focuser": "none", "area": 1.0, "label": 1, "clean_pred": 1}
    record |= {"adv_pred": 2, "correct": True, "success": True, "mask_area": 1.0, "eps": 0.1}
    record |= {"l0": 1.0, "l0_pixels": 1, "l1": 1.0, "l2": 1.0, "linf": 0.1, "adv_confidence": 0.9}
    write_report(tmp_path, [record], figures=False, labels=PREDICTED_SOURCE)
    report = (tmp_path / "report.md").read_text()
    assert "attacked the predicted class" in report and "correctly classified" not in report


def test_labels_outside_the_models_classes_are_refused_by_both_protocols(tmp_path):
    from evaluation.configs import PaperConfig
    from evaluation.loading import load_model_and_data

    data = _folder(tmp_path / "data", {"3": 1, "12": 1})
    grid = ExperimentConfig(model="digits-cnn", data=str(data), n=2, size=64, attacks=("fgsm",), focusers=())
    paper = PaperConfig(model="digits-cnn", data=str(data), n=2, size=64, focusers=("uniform",))
    for config in (grid, paper):
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\) for digits-cnn, got \[3, 12\]"):
            load_model_and_data(config)
