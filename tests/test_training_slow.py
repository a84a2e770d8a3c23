"""End to end (slow): ``focused-attacks train digits-cnn`` reproduces the shipped model's accuracy."""

from __future__ import annotations

import pytest
import torch

from evaluation import zoo
from evaluation.cli import main
from evaluation.datasets import cluttered_digits
from evaluation.train import evaluate_accuracy


@pytest.mark.slow
def test_train_command_reproduces_shipped_accuracy(tmp_path, capsys):
    out = tmp_path / "digits_cnn.pt"
    assert main(["train", "digits-cnn", "--out", str(out), "--quiet"]) == 0
    assert "accuracy" in capsys.readouterr().out
    x, y, _ = cluttered_digits(1000, "test")
    retrained = evaluate_accuracy(zoo.load("digits-cnn", weights=str(out)), x, y)
    shipped = evaluate_accuracy(zoo.load("digits-cnn"), x, y)
    assert retrained >= 0.95 and abs(retrained - shipped) <= 0.02
    assert torch.load(out, weights_only=True).keys() == zoo.load("digits-cnn").state_dict().keys()
