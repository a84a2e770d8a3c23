"""The run folder cannot be turned against the user: links refused, one writer, nothing pinned before every
check, derived files recomputable, maps saved per batch, and one clear line for each broken file."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from evaluation import experiment, run_folder
from evaluation.cli import main
from evaluation.configs import ExperimentConfig
from evaluation.records import EXAMPLES_FILE, record_key
from evaluation.run_folder import (
    ConfigMismatchError,
    FolderInUseError,
    RecordLog,
    RunFolderError,
    check_data,
    lock,
)

SMALL = {"n": 2, "batch_size": 2, "attacks": ("fgsm",), "focusers": ("gradcam",), "areas": (0.1,)}
#: Every name a run writes or reads in its folder, and what must happen when a link is planted there.
WRITTEN = (
    "records.jsonl",
    "config.json",
    "data.sha256",
    "run.lock",
    "examples.npz",
    "report.md",
    "results.json",
    "records.csv",
    "figures",
    "maps",
)
#: Fixed temporary names older versions wrote through; a link there must be left alone.
OLD_TEMPORARY = ("config.json.tmp", "records.jsonl.tmp", "data.sha256.tmp", "examples.npz.tmp")


def _run(out, **kwargs):
    return experiment.run_experiment(ExperimentConfig(**{**SMALL, **kwargs}), out, verbose=False)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("small")
    _run(out)
    return out


def _copy(run, out):
    """A copy of the finished run's files (not its folders) in ``out``."""
    out.mkdir()
    for path in run.iterdir():
        if path.is_file():
            (out / path.name).write_bytes(path.read_bytes())
    return out


# ------------------------------------------------------------------------------------------- links
@pytest.mark.parametrize("name", WRITTEN)
def test_a_link_at_any_name_the_run_writes_is_refused_and_its_target_untouched(tmp_path, name):
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "target"
    target.write_bytes(b"precious\n")
    out = tmp_path / "run"
    out.mkdir()
    (out / name).symlink_to(target if name not in ("figures", "maps") else outside)
    with pytest.raises(RunFolderError, match="symbolic link"):
        _run(out)
    assert target.read_bytes() == b"precious\n"
    assert sorted(p.name for p in outside.iterdir()) == ["target"]


def test_links_at_old_temporary_names_are_never_written_through(tmp_path):
    target = tmp_path / "target"
    target.write_bytes(b"precious\n")
    out = tmp_path / "run"
    out.mkdir()
    for name in OLD_TEMPORARY:
        (out / name).symlink_to(target)
    _run(out)
    assert target.read_bytes() == b"precious\n"
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp") and not p.is_symlink()]


def test_a_link_planted_in_a_finished_run_is_refused_on_resume(small_run, tmp_path):
    out = _copy(small_run, tmp_path / "copy")
    target = tmp_path / "target"
    target.write_bytes(b"precious\n")
    (out / "results.json").unlink()
    (out / "results.json").symlink_to(target)
    with pytest.raises(RunFolderError, match="results.json is a symbolic link"):
        _run(out)
    assert target.read_bytes() == b"precious\n"


def test_write_atomic_refuses_a_folder_and_leaves_no_temporary_file(tmp_path):
    (tmp_path / "report.md").mkdir()
    with pytest.raises(RunFolderError, match="not a regular file"):
        run_folder.write_atomic(tmp_path / "report.md", "text")
    run_folder.write_atomic(tmp_path / "a.txt", "one")
    run_folder.write_atomic(tmp_path / "a.txt", "two")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "report.md"]
    assert (tmp_path / "a.txt").read_text() == "two"


# -------------------------------------------------------------------------------------------- lock
def test_a_second_run_into_a_locked_folder_is_refused_naming_the_pid(tmp_path):
    with lock(tmp_path):
        with pytest.raises(FolderInUseError, match=rf"in use by pid {os.getpid()}"):
            _run(tmp_path)
    assert not (tmp_path / run_folder.CONFIG_FILE).exists()  # refused before anything was written


def test_a_killed_holder_leaves_the_folder_unlocked(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from evaluation.run_folder import lock\n"
            "with lock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(600)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderInUseError, match=rf"in use by pid {holder.pid}"):
            with lock(tmp_path):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with lock(tmp_path):  # the operating system released it with the process
        assert (tmp_path / run_folder.LOCK_FILE).read_text().strip() == str(os.getpid())


@pytest.mark.parametrize("command", ["evaluate", "sanity", "pointing-game", "saliency"])
def test_every_command_refuses_a_folder_in_use(tmp_path, capsys, command):
    args = {
        "evaluate": ["evaluate", "--n", "2", "--attacks", "fgsm", "--methods", "gradcam"],
        "sanity": ["sanity", "--n", "2", "--method", "gradcam"],
        "pointing-game": ["pointing-game", "--n", "2", "--methods", "gradcam"],
        "saliency": ["saliency", "--model", "digits-cnn", "--method", "gradcam", str(_digit_png(tmp_path))],
    }[command]
    out = tmp_path / "out"
    with lock(out):
        assert main([*args, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"focused-attacks {command}: error: --out: ") and "in use by pid" in err[-1]


def _digit_png(folder):
    from PIL import Image

    from evaluation.datasets import cluttered_digits

    x, _, _ = cluttered_digits(1, "test")
    path = folder / "digit.png"
    Image.fromarray((x[0].transpose(1, 2, 0) * 255).astype(np.uint8)).save(path)
    return path


# ------------------------------------------------------------------------------- before the first write
def test_an_area_of_zero_pixels_is_refused_before_the_folder_is_pinned(tmp_path):
    with pytest.raises(ValueError, match=r"areas: fraction \(area\) 1e-09 of a 64x64 map rounds to 0 pixels"):
        _run(tmp_path, areas=(1e-9,))
    assert list(tmp_path.iterdir()) == []
    _run(tmp_path)  # the corrected run is accepted into the same folder


@pytest.mark.parametrize("command", ["evaluate", "demo", "saliency", "pointing-game", "sanity"])
@pytest.mark.parametrize("where", ["under a file", "in /proc"])
def test_an_out_that_cannot_be_made_is_one_line_naming_out(tmp_path, capsys, command, where):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    out = a_file / "run" if where == "under a file" else "/proc/self/no_such_folder/run"
    images = [str(_digit_png(tmp_path))] if command == "saliency" else []
    assert main([command, *images, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"focused-attacks {command}: error: --out: ")


# ----------------------------------------------------------------------------- recomputable side files
def test_a_truncated_examples_file_is_recomputed(small_run, tmp_path):
    out = _copy(small_run, tmp_path / "copy")
    with np.load(out / EXAMPLES_FILE) as npz:
        whole = dict(npz)
    data = (out / EXAMPLES_FILE).read_bytes()
    (out / EXAMPLES_FILE).write_bytes(data[: len(data) // 2])
    records = (out / "records.jsonl").read_bytes()
    with pytest.warns(UserWarning, match="examples.npz cannot be read"):
        _run(out)
    with np.load(out / EXAMPLES_FILE) as again:
        assert sorted(again.files) == sorted(whole)
        for key in whole:
            np.testing.assert_array_equal(again[key], whole[key])
    assert (out / "records.jsonl").read_bytes() == records


def test_maps_saved_before_a_kill_are_not_recomputed(tmp_path, monkeypatch):
    calls = []
    real = experiment.compute_maps

    def counting(method, *args, **kwargs):
        calls.append(method)
        return real(method, *args, **kwargs)

    real_attack = experiment.run_attack

    def killed(name, classifier, x, y, maps, *args):
        if maps is not None:  # the run dies in the batch's first focused attack, after its first maps
            raise KeyboardInterrupt
        return real_attack(name, classifier, x, y, maps, *args)

    monkeypatch.setattr(experiment, "compute_maps", counting)
    monkeypatch.setattr(experiment, "run_attack", killed)
    focusers = ("gradcam", "cameras")
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, focusers=focusers, attacks=("fgsm",))
    assert calls == ["gradcam"] and (tmp_path / "maps").is_dir()
    monkeypatch.undo()
    monkeypatch.setattr(experiment, "compute_maps", counting)
    result = _run(tmp_path, focusers=focusers)
    assert calls == ["gradcam", "cameras"]  # gradcam's maps were read back, not recomputed
    assert result.computed == 2 * 2 and not list((tmp_path / "maps").iterdir())  # cleared when recorded
    reference = _run(tmp_path / "reference", focusers=focusers)
    assert result.records == reference.records


# ----------------------------------------------------------------------------------- broken record files
def test_a_blank_line_in_the_records_is_skipped(tmp_path):
    log = RecordLog(tmp_path / "r.jsonl", record_key)
    rec = {"image": 0, "attack": "pgd", "focuser": "none", "area": 1.0}
    (tmp_path / "r.jsonl").write_text(json.dumps(rec) + "\n\n" + json.dumps({**rec, "image": 1}) + "\n")
    assert [r["image"] for r in log.read(repair=True)] == [0, 1]


def test_a_nan_in_a_record_names_the_field():
    log = RecordLog("unused.jsonl", record_key)
    with pytest.raises(ValueError, match=r"record field 'l2' is nan \(JSON has no NaN"):
        log.append([{"image": 0, "attack": "pgd", "focuser": "none", "area": 1.0, "l2": float("nan")}])
    assert not os.path.exists("unused.jsonl")


def test_a_bad_middle_line_names_the_file_the_line_and_what_to_do(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text('{"image": 0, "attack": "pgd", "focuser": "none", "area": 1.0}\n{"image":\n\n')
    with pytest.raises(ValueError, match=rf"{path}: line 2 is not a valid record .*delete that line"):
        RecordLog(path, record_key).read()


@pytest.mark.parametrize("content", [b"", b"\n", b"not a digest\n"])
def test_an_empty_or_broken_digest_says_what_it_is(tmp_path, content):
    (tmp_path / run_folder.DATA_DIGEST_FILE).write_bytes(content)
    with pytest.raises(ConfigMismatchError, match=r"data.sha256 does not hold a SHA-256 digest"):
        check_data(tmp_path, "0" * 64, has_results=False)


def test_two_runs_started_together_never_both_compute(tmp_path):
    """Three CLI runs into one folder at once: one computes, the others are refused; records whole."""
    cmd = [sys.executable, "-m", "evaluation.cli", "evaluate", "--n", "2", "--attacks", "fgsm"]
    cmd += ["--methods", "gradcam", "--areas", "0.1", "--out", str(tmp_path / "run"), "--quiet"]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)
    ]
    results = [(*p.communicate(timeout=300), p.returncode) for p in procs]
    assert all(code == 0 or (code == 2 and "in use by pid" in err) for _, err, code in results), results
    computed = [
        int(re.search(r"\((\d+) computed now\)", out).group(1)) for out, _, code in results if code == 0
    ]
    assert sum(computed) == 2 * 2  # every record computed once, by one run
    keys = [record_key(json.loads(line)) for line in (tmp_path / "run" / "records.jsonl").open()]
    assert len(keys) == len(set(keys)) == 2 * 2


def test_files_written_whole_get_the_usual_permissions(tmp_path):
    previous = os.umask(0o022)
    try:
        path = run_folder.write_atomic(tmp_path / "report.md", "text")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o666 & ~run_folder._UMASK
