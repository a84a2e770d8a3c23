"""``benchmarks/demo_time.py``: the demo's map computations are timed per method and size, and restored."""

from __future__ import annotations

import json

import numpy as np

from benchmarks import demo_time
from evaluation import experiment, focusers, paper_protocol


def _fake_demo(argv):
    """Stands in for the CLI: one map call from each of the demo's two callers."""
    assert argv[:2] == ["demo", "--quiet"]
    layers, x = ["conv"], np.zeros((3, 3, 8, 8), dtype=np.float32)
    experiment.compute_maps("random", None, x, np.zeros(3), [0, 1, 2], layers)
    paper_protocol.compute_maps("random", None, x[:2], np.zeros(2), [0, 1], layers)
    return 0


def test_maps_are_timed_per_method_and_size_then_restored(monkeypatch, capsys):
    monkeypatch.setattr("evaluation.cli.main", _fake_demo)
    assert demo_time.main(["--out", "unused"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == 0
    assert list(result["maps"]) == ["random@8"]
    assert result["maps"]["random@8"]["images"] == 5
    assert 0 <= result["maps"]["random@8"]["seconds"] <= result["seconds"]
    assert result["rest"] >= 0
    assert experiment.compute_maps is focusers.compute_maps
    assert paper_protocol.compute_maps is focusers.compute_maps
