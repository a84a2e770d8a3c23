"""End to end (slow): a run killed again and again during its saliency maps still advances and finishes
with the records of an uninterrupted run; the random-kill script agrees."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import fault_injection

ARGS = ["--n", "2", "--batch-size", "2", "--attacks", "fgsm", "--areas", "0.1", "--quiet"]
FOCUSERS = ("gradcam", "cameras", "layercam")


def _command(out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "evaluation.cli",
        "evaluate",
        *ARGS,
        "--methods",
        ",".join(FOCUSERS),
        "--out",
        str(out),
    ]


def _kill_after_next_map(out: Path) -> bool:
    """Start the run; kill it as soon as one more map file is saved (so during the next maps). False when
    the run finished instead."""
    before = len(list((out / "maps").glob("*.npz"))) if (out / "maps").is_dir() else 0
    proc = subprocess.Popen(_command(out), stdout=subprocess.DEVNULL)
    while proc.poll() is None:
        if (out / "maps").is_dir() and len(list((out / "maps").glob("*.npz"))) > before:
            proc.kill()
            proc.wait()
            return True
        time.sleep(0.02)
    assert proc.returncode == 0
    return False


@pytest.mark.slow
def test_a_run_killed_during_every_map_still_finishes(tmp_path):
    subprocess.run(_command(tmp_path / "reference"), check=True, stdout=subprocess.DEVNULL)
    kills = 0
    while _kill_after_next_map(tmp_path / "killed"):
        kills += 1
        assert kills < len(FOCUSERS) + 2, "a restart did not get past the maps saved before its kill"
    assert kills == len(FOCUSERS)  # once after each focuser's maps: each restart began with the next one
    records = [(tmp_path / d / "records.jsonl").read_bytes() for d in ("killed", "reference")]
    assert records[0] == records[1]


@pytest.mark.slow
def test_random_kills_leave_records_identical_to_an_uninterrupted_run(tmp_path):
    argv = ["--kills", "3", "--delay", "5", "12", "--n", "4", "--batch-size", "2", "--attacks", "fgsm"]
    assert fault_injection.main([*argv, "--methods", "gradcam,random", "--out", str(tmp_path)]) == 0
