"""The CAMERAS paper protocol: least-likely targets, the confidence stop, the controls, resume, report."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from evaluation import zoo
from evaluation.configs import PaperConfig
from evaluation.errors import ConfigMismatchError
from evaluation.focusers import shuffled_maps, uniform_maps
from evaluation.loading import load_dataset
from evaluation.paper_protocol import least_likely, run_paper_protocol
from evaluation.paper_report import paired_reductions, summarize_paper

#: A tiny run on the digits: a threshold digits-cnn reaches in a few steps with a mild penalty.
TINY = dict(
    model="digits-cnn",
    data="digits",
    n=6,
    focusers=("uniform", "shuffled", "cameras"),
    batch_size=4,
    beta=0.5,
    confidence=0.9,
    eps=1.0,
    eps_step=4 / 255,
    max_iter=40,
    n_figures=2,
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("paper") / "run"
    return run_paper_protocol(PaperConfig(**TINY), out, device="cpu", verbose=False)


def test_least_likely_is_the_argmin_of_the_logits():
    logits = np.array([[3.0, -1.0, 0.5], [0.0, 0.0, -2.0], [1.0, 1.0, 1.0]])
    np.testing.assert_array_equal(least_likely(logits), [1, 2, 0])


def test_targets_are_the_least_likely_class_of_the_clean_image(tiny_run):
    data = load_dataset("digits", TINY["n"], 64)
    logits = zoo.classifier("digits-cnn", device="cpu").predict(data.x)
    for r in tiny_run.records:
        assert r["target"] == int(np.argmin(logits[r["image"]]))
        assert r["target"] != r["clean_pred"]


def test_confidence_stop_and_success(tiny_run):
    attacked = [r for r in tiny_run.records if r["attacked"]]
    assert attacked and any(r["success"] for r in attacked)
    for r in attacked:
        # success is the target's probability reaching the threshold, never below it
        assert r["success"] == (r["target_confidence"] >= TINY["confidence"])
        assert 0 <= r["iterations"] <= TINY["max_iter"]
        if r["iterations"] < TINY["max_iter"]:  # stopped early: it had reached the threshold
            assert r["success"]
        if not r["success"]:
            assert r["l2"] is None and r["linf"] is None and r["l2_255"] is None
        else:
            assert r["l2_255"] == pytest.approx(255 * r["l2"]) and r["linf"] > 0


def test_uniform_control_has_the_cameras_mean(tiny_run):
    by_key = {(r["image"], r["focuser"]): r for r in tiny_run.records if r["attacked"]}
    for (image, focuser), r in by_key.items():
        if focuser in ("uniform", "shuffled"):
            assert r["map_mean"] == pytest.approx(by_key[(image, "cameras")]["map_mean"], rel=1e-5)


@settings(max_examples=30, deadline=None)
@given(
    arrays(
        np.float32,
        st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(1, 6)),
        elements=st.floats(0, 1, width=32),
    ),
    st.integers(0, 2**16),
)
def test_controls_keep_the_mean_and_the_values(maps, seed):
    ids = list(range(len(maps)))
    uniform = uniform_maps(maps)
    shuffled = shuffled_maps(maps, ids, seed)
    for j in ids:
        assert np.all(uniform[j] == uniform[j].flat[0])
        assert uniform[j].flat[0] == pytest.approx(float(maps[j].astype(np.float64).mean()), abs=1e-7)
        np.testing.assert_array_equal(np.sort(shuffled[j], axis=None), np.sort(maps[j], axis=None))
    np.testing.assert_array_equal(shuffled, shuffled_maps(maps, ids, seed))  # fixed per (seed, image)


def test_resume_recomputes_only_what_is_missing(tiny_run, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    for name in ("config.json", "data.sha256"):
        (out / name).write_bytes((tiny_run.out_dir / name).read_bytes())
    lines = (tiny_run.out_dir / "records.jsonl").read_bytes().splitlines(keepends=True)
    (out / "records.jsonl").write_bytes(b"".join(lines[:5]) + lines[5][:20])  # a crash mid-line
    again = run_paper_protocol(PaperConfig(**TINY), out, device="cpu", verbose=False)
    assert again.computed == len(lines) - 5
    strip = lambda rs: sorted(json.dumps(r, sort_keys=True) for r in rs)  # noqa: E731
    assert strip(again.records) == strip(tiny_run.records)
    with pytest.raises(ConfigMismatchError, match="beta"):
        run_paper_protocol(PaperConfig(**{**TINY, "beta": 1.0}), out, device="cpu", verbose=False)


def test_report_rows_and_figures(tiny_run):
    rows = summarize_paper(tiny_run.records, TINY["focusers"])
    assert [r["focuser"] for r in rows] == ["none", *TINY["focusers"]]
    assert rows[0]["reduction"] is None and rows[1]["reduction_vs_uniform"] is None
    report = (tiny_run.out_dir / "report.md").read_text()
    assert "least-likely" in report and "| cameras |" in report
    assert len(list((tiny_run.out_dir / "figures").glob("0*.png"))) == TINY["n_figures"]  # one per image
    assert (tiny_run.out_dir / "figures" / "paired_l2.png").exists()


def test_paired_reductions_use_only_pairs_both_fooled():
    ok = lambda l2: {"success": True, "l2": l2}  # noqa: E731
    focused = {0: ok(1.0), 1: ok(3.0), 2: {"success": False, "l2": None}}
    reference = {0: ok(2.0), 1: ok(2.0), 2: ok(2.0), 3: ok(1.0)}
    np.testing.assert_allclose(paired_reductions(focused, reference), [0.5, -0.5])


@pytest.mark.parametrize(
    "change, match",
    [
        ({"focusers": ("none",)}, "focusers"),
        ({"focusers": ("nope",)}, "nope"),
        ({"confidence": 0.0}, "confidence"),
        ({"norm": "1"}, "norm"),
        ({"max_iter": 0}, "max_iter"),
        ({"eps_step": 0.0}, "eps_step"),
    ],
)
def test_bad_config_is_refused(change, match):
    with pytest.raises(ValueError, match=match):
        PaperConfig(**{**TINY, **change})


def test_results_record_their_provenance(tiny_run):
    results = json.loads((tiny_run.out_dir / "results.json").read_text())
    run = results["provenance"]
    assert run["versions"]["torch"] and run["versions"]["numpy"] and run["python"]
    assert run["device"] == "cpu" and run["threads"] >= 1 and run["seconds"] > 0
    assert run["layers"] == ["features.13", "features.9", "features.5"]
    assert "## Provenance" in (tiny_run.out_dir / "report.md").read_text()
