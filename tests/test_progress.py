"""Progress in a person's units: the bar names the batch and the cell; one log line per finished batch."""

from __future__ import annotations

import logging

import pytest

from evaluation import progress as progress_module
from evaluation.configs import ExperimentConfig
from evaluation.experiment import run_experiment
from evaluation.progress import Progress, _duration


def test_the_bar_names_the_batch_and_the_cell():
    progress = Progress("attacks", batches=4, cells=7, verbose=False)
    progress.cell(2, "pgd x cameras x 10%")
    assert progress.bar.desc == "attacks batch 2/4: pgd x cameras x 10%"
    progress.close()


def test_each_computed_batch_logs_its_time_and_an_estimate(caplog, monkeypatch):
    clock = iter([100.0, 110.0, 130.0])  # start, after batch 1, after batch 3 (batch 2 was resumed)
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: next(clock))
    progress = Progress("attacks", batches=4, cells=1, verbose=False)
    with caplog.at_level(logging.INFO, logger="evaluation"):
        progress.batch_done(1, computed=True)
        progress.batch_done(2, computed=False)
        progress.batch_done(3, computed=True)
    assert caplog.messages == [
        "attacks: batch 1/4 done, 10 s so far, about 30 s left",  # 10 s per computed batch, 3 left
        "attacks: batch 3/4 done, 30 s so far, about 15 s left",  # 15 s per computed batch, 1 left
    ]


def test_the_estimate_counts_images_so_a_short_last_batch_costs_less(caplog, monkeypatch):
    clock = iter([0.0, 80.0])
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: next(clock))
    progress = Progress("cameras-paper", batches=2, cells=1, verbose=False, sizes=[8, 1])
    with caplog.at_level(logging.INFO, logger="evaluation"):
        progress.batch_done(1, computed=True)
    assert caplog.messages == ["cameras-paper: batch 1/2 done, 1 min 20 s so far, about 10 s left"]


@pytest.mark.parametrize(("seconds", "text"), [(42.4, "42 s"), (185, "3 min 05 s"), (7620, "2 h 07 min")])
def test_durations_read_like_a_person_would_say_them(seconds, text):
    assert _duration(seconds) == text


def test_a_quiet_run_still_logs_one_line_per_batch(tmp_path, caplog):
    config = ExperimentConfig(n=4, batch_size=2, attacks=("fgsm",), focusers=("gradcam",), areas=(0.1,))
    with caplog.at_level(logging.INFO, logger="evaluation"):
        run_experiment(config, tmp_path, verbose=False, report=False)
    lines = [m for m in caplog.messages if m.startswith("attacks: batch")]
    assert [line.split(" done")[0] for line in lines] == ["attacks: batch 1/2", "attacks: batch 2/2"]


def test_the_cli_prints_one_line_per_batch_with_quiet(tmp_path, capsys):
    from evaluation.cli import main

    argv = ["evaluate", "--n", "4", "--batch-size", "2", "--attacks", "fgsm", "--methods", "gradcam"]
    assert main([*argv, "--areas", "0.1", "--out", str(tmp_path), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert (
        "focused-attacks: attacks: batch 1/2 done" in err
        and "focused-attacks: attacks: batch 2/2 done" in err
    )
