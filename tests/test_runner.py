"""The experiment runner: crash-safe record log, config pinning, merge, and resume of a real tiny run."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evaluation import experiment, focusers, loading, run_folder
from evaluation.attacks import DEFAULT_ATTACK_PARAMS
from evaluation.configs import ExperimentConfig
from evaluation.errors import ConfigMismatchError
from evaluation.records import load_examples, load_records, merge_records, record_key, unique_records
from evaluation.run_folder import RecordLog, check_config


def _rec(image: int, attack: str = "pgd", focuser: str = "none", area: float = 1.0, l2: float = 1.0) -> dict:
    return {"image": image, "attack": attack, "focuser": focuser, "area": area, "l2": l2}


# ----------------------------------------------------------------------------------------- record log
def test_append_then_read_round_trips(tmp_path):
    log = RecordLog(tmp_path / "r.jsonl", record_key)
    assert log.read() == []
    first, second = [_rec(0), _rec(1)], [_rec(2, l2=0.1 + 0.2)]
    log.append(first)
    log.append(second)
    log.append([])
    assert log.read() == first + second  # floats round-trip exactly through JSON
    assert (tmp_path / "r.jsonl").read_text().count("\n") == 3


@pytest.mark.parametrize("cut", [1, 5, 17])
def test_truncated_last_line_is_ignored_and_repaired(tmp_path, cut):
    log = RecordLog(tmp_path / "r.jsonl", record_key)
    log.append([_rec(0), _rec(1)])
    good = log.path.read_bytes()
    partial = (json.dumps(_rec(2)) + "\n").encode()[:cut]
    log.path.write_bytes(good + partial)
    assert [r["image"] for r in log.read()] == [0, 1]
    assert log.path.read_bytes() == good + partial  # read without repair leaves the file alone
    assert [r["image"] for r in log.read(repair=True)] == [0, 1]
    assert log.path.read_bytes() == good
    log.append([_rec(3)])
    assert [r["image"] for r in log.read()] == [0, 1, 3]


def test_complete_but_unterminated_last_line_counts_as_truncated(tmp_path):
    log = RecordLog(tmp_path / "r.jsonl", record_key)
    log.append([_rec(0)])
    log.path.write_bytes(log.path.read_bytes() + json.dumps(_rec(1)).encode())
    assert [r["image"] for r in log.read(repair=True)] == [0]
    log.append([_rec(1)])
    assert [r["image"] for r in log.read()] == [0, 1]


def test_append_new_writes_only_unseen_keys_and_counts_them(tmp_path):
    log = RecordLog(tmp_path / "r.jsonl", record_key)
    done = {record_key(_rec(0))}
    assert log.append_new([_rec(0), _rec(1), _rec(2)], done) == 2
    assert [r["image"] for r in log.read()] == [1, 2]
    assert done == {record_key(_rec(i)) for i in range(3)}
    assert log.append_new([_rec(1)], done) == 0 and len(log.read()) == 2


def test_corrupt_middle_line_raises_naming_the_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(_rec(0)) + "\n{not json\n" + json.dumps(_rec(1)) + "\n")
    with pytest.raises(ValueError, match="line 2"):
        RecordLog(path, record_key).read()


records_strategy = st.lists(
    st.builds(
        _rec,
        image=st.integers(0, 5),
        attack=st.sampled_from(["pgd", "cw"]),
        focuser=st.sampled_from(["none", "cameras"]),
        area=st.sampled_from([0.1, 1.0]),
    ),
    max_size=30,
)


@given(records_strategy)
@settings(max_examples=50, deadline=None)
def test_unique_records_keeps_each_key_once_sorted(records):
    unique = unique_records(records)
    keys = [record_key(r) for r in unique]
    assert keys == sorted(set(record_key(r) for r in records))
    first = {}
    for r in records:
        first.setdefault(record_key(r), r)
    assert unique == [first[k] for k in keys]


def test_merge_records_unions_rank_files_without_duplicates(tmp_path):
    RecordLog(tmp_path / "records.jsonl", record_key).append([_rec(0), _rec(1)])
    RecordLog(tmp_path / "records.rank0.jsonl", record_key).append([_rec(1), _rec(2)])
    RecordLog(tmp_path / "records.rank1.jsonl", record_key).append([_rec(3), _rec(0, "cw")])
    RecordLog(tmp_path / "records.rank10.jsonl", record_key).append([_rec(4)])
    assert len(load_records(tmp_path)) == 6
    merged = merge_records(tmp_path)
    assert [record_key(r) for r in merged] == sorted(
        [(i, "pgd", "none", 1.0) for i in range(5)] + [(0, "cw", "none", 1.0)]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["records.jsonl"]
    assert RecordLog(tmp_path / "records.jsonl", record_key).read() == merged
    assert merge_records(tmp_path) == merged  # idempotent


# --------------------------------------------------------------------------------------------- config
def test_config_is_stored_and_a_different_one_is_refused(tmp_path):
    config = ExperimentConfig(n=4, attacks=("fgsm",), focusers=("random",), areas=(0.1,))
    check_config(tmp_path, config)
    stored = json.loads((tmp_path / "config.json").read_text())
    assert ExperimentConfig.from_dict(stored) == config
    check_config(tmp_path, ExperimentConfig.from_dict(stored))  # same arguments: fine
    other = ExperimentConfig(n=5, attacks=("fgsm",), focusers=("random",), areas=(0.1,))
    with pytest.raises(ConfigMismatchError, match=r"n: stored 4, now 5"):
        check_config(tmp_path, other)


def test_config_fills_attack_defaults_and_lists_jobs():
    config = ExperimentConfig(attacks=("pgd", "cw"), focusers=("gradcam",), areas=(0.05, 0.2))
    assert config.attack_params["pgd"] == DEFAULT_ATTACK_PARAMS["pgd"]
    assert set(config.attack_params) == {"pgd", "cw"}
    assert config.jobs() == [
        ("pgd", "none", 1.0),
        ("pgd", "gradcam", 0.05),
        ("pgd", "gradcam", 0.2),
        ("cw", "none", 1.0),
        ("cw", "gradcam", 0.05),
        ("cw", "gradcam", 0.2),
    ]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 0}, "n must"),
        ({"attacks": ("deepfool",)}, "unknown attack 'deepfool'"),
        ({"areas": (0.0,)}, "areas"),
        ({"areas": (1.5,)}, "areas"),
        ({"focusers": ("none",)}, "always run"),
        ({"batch_size": 0}, "batch_size"),
        (
            {"attack_params": {"pgd": {"eps_min": 1.0}}},
            r"pgd's eps_min must lie in \(0, eps_max = 1.0\), got 1.0",
        ),
        ({"attack_params": {"fgsm": {"eps_min": 0.0}}}, "fgsm's eps_min must lie in"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ExperimentConfig(**kwargs)


def test_random_maps_depend_only_on_seed_and_image():
    a = focusers.random_maps([3, 7], (8, 8), seed=1)
    b = focusers.random_maps([7], (8, 8), seed=1)
    assert a.shape == (2, 8, 8) and a.dtype == np.float32
    np.testing.assert_array_equal(a[1], b[0])
    assert not np.array_equal(a[0], a[1])
    assert not np.array_equal(focusers.random_maps([3], (8, 8), seed=2)[0], a[0])


# ------------------------------------------------------------------------------- resume of a real run
TINY = {"n": 4, "batch_size": 2, "attacks": ("fgsm",), "focusers": ("gradcam", "random"), "areas": (0.1,)}


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    result = experiment.run_experiment(ExperimentConfig(**TINY), out, verbose=False, report=False)
    return out, result


def test_tiny_run_records_every_cell_once(reference_run):
    out, result = reference_run
    config = ExperimentConfig(**TINY)
    keys = [record_key(r) for r in _lines(out / "records.jsonl")]
    assert len(keys) == len(set(keys)) == config.n * len(config.jobs()) == result.computed
    assert keys == sorted(keys)
    attacked = [r for r in result.records if r["correct"]]
    assert len(attacked) > len(result.records) // 2
    for r in result.records:
        assert r["success"] == (r["correct"] and r["adv_pred"] != r["label"])
        if not r["correct"]:  # not attacked
            assert r["l2"] is None and r["mask_area"] is None
        if not r["success"]:  # a failed attack has no norm, never a zero one
            assert all(r[k] is None for k in ("l0", "l0_pixels", "l1", "l2", "linf"))
    for r in (r for r in attacked if r["success"]):
        assert r["linf"] <= 1.0 + 1e-6 and r["l2"] >= r["linf"] - 1e-6
        if r["focuser"] == "none":
            assert r["mask_area"] == 1.0
        else:
            assert r["mask_area"] == pytest.approx(0.1, abs=0.5 / (64 * 64))
            assert r["l0_pixels"] <= round(0.1 * 64 * 64)  # the attack only changes pixels inside the mask


def test_rerun_computes_nothing_and_changes_nothing(reference_run):
    out, _ = reference_run
    before = (out / "records.jsonl").read_bytes()
    result = experiment.run_experiment(ExperimentConfig(**TINY), out, verbose=False, report=False)
    assert result.computed == 0
    assert (out / "records.jsonl").read_bytes() == before


def test_resume_after_interrupt_and_truncated_line_loses_and_duplicates_nothing(
    reference_run, tmp_path, monkeypatch
):
    ref_out, ref = reference_run
    real_attack, calls = experiment.run_attack, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # Ctrl-C in the middle of the second batch
            raise KeyboardInterrupt
        return real_attack(*args, **kwargs)

    monkeypatch.setattr(experiment, "run_attack", interrupted)
    with pytest.raises(KeyboardInterrupt):
        experiment.run_experiment(ExperimentConfig(**TINY), tmp_path, verbose=False, report=False)
    partial = _lines(tmp_path / "records.jsonl")  # every line is valid JSON
    assert len(partial) == 3 * 2  # 3 cells x 2 images of the first batch
    # A crash during a write leaves half a line behind.
    with open(tmp_path / "records.jsonl", "a") as f:
        f.write(json.dumps(ref.records[-1])[:40])
    monkeypatch.setattr(experiment, "run_attack", real_attack)
    result = experiment.run_experiment(ExperimentConfig(**TINY), tmp_path, verbose=False, report=False)
    assert result.computed == len(ref.records) - len(partial)
    assert _lines(tmp_path / "records.jsonl") == _lines(ref_out / "records.jsonl")


def test_resume_inside_batch_0_keeps_the_example_figure_whole(reference_run, tmp_path, monkeypatch):
    """The figure's arrays come from batch 0: a crash after its first cell used to leave them out for
    good (the resumed run skipped the recorded cells), dropping rows of the figure silently."""
    ref_out, _ = reference_run
    real_attack, calls = experiment.run_attack, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # Ctrl-C in batch 0's second cell
            raise KeyboardInterrupt
        return real_attack(*args, **kwargs)

    monkeypatch.setattr(experiment, "run_attack", interrupted)
    with pytest.raises(KeyboardInterrupt):
        experiment.run_experiment(ExperimentConfig(**TINY), tmp_path, verbose=False, report=False)
    assert len(_lines(tmp_path / "records.jsonl")) == 2  # the first cell, for batch 0's 2 images
    monkeypatch.setattr(experiment, "run_attack", real_attack)
    result = experiment.run_experiment(ExperimentConfig(**TINY), tmp_path, verbose=False, report=False)
    assert result.computed == len(result.records) - 2
    resumed, reference = load_examples(tmp_path), load_examples(ref_out)
    assert sorted(resumed) == sorted(reference)
    for key in reference:
        np.testing.assert_array_equal(resumed[key], reference[key])
    assert _lines(tmp_path / "records.jsonl") == _lines(ref_out / "records.jsonl")


def test_resume_into_folder_of_other_arguments_is_refused(reference_run):
    out, _ = reference_run
    with pytest.raises(ConfigMismatchError, match="areas"):
        experiment.run_experiment(
            ExperimentConfig(**{**TINY, "areas": (0.2,)}), out, verbose=False, report=False
        )


def test_resume_refuses_a_dataset_whose_images_moved(reference_run, tmp_path):
    """Records are keyed by dataset index: if an index now names another image (files added to a
    folder), resuming would pair records of different images, so it is refused."""
    out, _ = reference_run
    shutil.copytree(out, tmp_path / "run")
    records = _lines(tmp_path / "run" / "records.jsonl")
    records[0]["name"] = "another-image"
    (tmp_path / "run" / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(ConfigMismatchError, match="changed since this run started: image 0"):
        experiment.run_experiment(ExperimentConfig(**TINY), tmp_path / "run", verbose=False, report=False)


def test_resume_refuses_other_pixels_and_folders_without_a_digest(reference_run, tmp_path, monkeypatch):
    """An image edited in place (or loaded by another version) keeps its name, so only the pixels'
    digest tells; a folder with records but no digest (an older version's) cannot be checked."""
    out, _ = reference_run
    assert (out / "data.sha256").read_text().strip() == run_folder.data_digest(
        [loading.load_dataset("digits", TINY["n"], 64).x]
    )
    shutil.copytree(out, tmp_path / "run")
    load = loading.load_dataset

    def edited(*args, **kwargs):
        data = load(*args, **kwargs)
        data.x[1, :, 0, 0] = 1.0 - data.x[1, :, 0, 0]
        return data

    monkeypatch.setattr(loading, "load_dataset", edited)
    with pytest.raises(ConfigMismatchError, match="other data than --data gives now"):
        experiment.run_experiment(ExperimentConfig(**TINY), tmp_path / "run", verbose=False, report=False)
    monkeypatch.setattr(loading, "load_dataset", load)
    (tmp_path / "run" / "data.sha256").unlink()
    with pytest.raises(ConfigMismatchError, match="holds results but no data.sha256"):
        experiment.run_experiment(ExperimentConfig(**TINY), tmp_path / "run", verbose=False, report=False)


def test_data_digest_sees_values_shapes_and_order():
    a, b = np.zeros((2, 3), np.float32), np.ones((3,), np.float32)
    digests = {
        run_folder.data_digest([a, b]),
        run_folder.data_digest([b, a]),
        run_folder.data_digest([a.reshape(3, 2), b]),
        run_folder.data_digest([a.astype(np.float64), b]),
        run_folder.data_digest([a, b * 2]),
    }
    assert len(digests) == 5
    assert run_folder.data_digest([a, b]) == run_folder.data_digest([a.copy(), np.asfortranarray(b)])


def test_records_store_counts_as_ints(reference_run):
    out, _ = reference_run
    for r in (r for r in _lines(out / "records.jsonl") if r["success"]):
        assert isinstance(r["l0"], int) and isinstance(r["l0_pixels"], int) and isinstance(r["l2"], float)


def test_log_eps_search_brackets_the_threshold():
    """The runner's search (minimal_eps, scale="log"): the found eps fools the model, eps / r (the
    bracket's lower end, r = the final ratio) does not."""
    from evaluation import zoo
    from evaluation.datasets import cluttered_digits
    from focused_attacks import FocusedFGSM, minimal_eps

    classifier = zoo.classifier("digits-cnn", device="cpu")
    x, y, _ = cluttered_digits(6, "test", seed=3)
    keep = classifier.predict(x).argmax(axis=1) == y
    x, y = x[keep], y[keep]
    maps = focusers.random_maps(range(len(x)), (64, 64), seed=0)
    attack = FocusedFGSM(classifier, area=0.2, eps=1.0)
    eps_min, eps_max, steps = 1 / 256, 1.0, 5
    result = minimal_eps(attack, x, y, low=eps_min, high=eps_max, steps=steps, maps=maps, scale="log")
    x_adv, eps = result.x_adv, result.eps
    ratio = (eps_max / eps_min) ** (2.0**-steps)
    found = np.isfinite(eps)
    assert found.any()
    assert np.all(classifier.predict(x_adv[found]).argmax(axis=1) != y[found])
    np.testing.assert_array_equal(x_adv[~found], x[~found])
    # Each found eps lies on the log grid eps_max * ratio**-k and equals one FGSM step at that eps.
    k = np.log(eps_max / eps[found]) / np.log(ratio)
    np.testing.assert_allclose(k, np.round(k), atol=1e-6)
    one_hot = np.eye(10, dtype=np.float32)[y[found]]
    fgsm = FocusedFGSM(classifier, area=0.2, eps=1.0)
    again = fgsm._attack(x[found], one_hot, attack.last_mask_[found], eps[found])
    np.testing.assert_allclose(again, x_adv[found], atol=1e-6)
    lower = eps[found] / ratio
    tested = lower > eps_min * (1 + 1e-9)
    below = fgsm._attack(x[found][tested], one_hot[tested], attack.last_mask_[found][tested], lower[tested])
    assert np.all(classifier.predict(below).argmax(axis=1) == y[found][tested])


@pytest.mark.parametrize(
    "kwargs", [{"layers": ("no_such_layer",)}, {"size": 8}], ids=["bad layer", "size too small"]
)
def test_a_failed_start_does_not_pin_the_folder(tmp_path, kwargs):
    config = ExperimentConfig(n=2, attacks=("fgsm",), focusers=("gradcam",), areas=(0.1,), batch_size=2)
    with pytest.raises(ValueError):
        experiment.run_experiment(ExperimentConfig(**{**config.to_dict(), **kwargs}), tmp_path, verbose=False)
    assert not (tmp_path / run_folder.CONFIG_FILE).exists()
    check_config(tmp_path, config)  # the corrected arguments are accepted
