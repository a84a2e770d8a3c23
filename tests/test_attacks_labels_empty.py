"""The labels ``y`` of every attack and search (checked once, by focused_attacks.inputs.check_labels) and
empty batches (N = 0: an empty result of the right shape everywhere)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import art_classifier
from torch import nn

import saliency
from focused_attacks import FocusedCarliniL2, FocusedFGSM, FocusedPGD, maps_to_mask, minimal_area, minimal_eps
from focused_attacks.base import TARGETS_REQUIRED
from focused_attacks.inputs import check_labels
from saliency import masks

N, SIZE, CLASSES = 6, 8, 10

ATTACKS = {
    "fgsm": lambda clf: FocusedFGSM(clf, eps=0.1),
    "pgd": lambda clf: FocusedPGD(clf, eps=0.1, eps_step=0.05, max_iter=2, verbose=False),
    "cw": lambda clf: FocusedCarliniL2(clf, binary_search_steps=1, max_iter=2, verbose=False),
}


def _maps(x: np.ndarray) -> np.ndarray:
    return np.random.default_rng(2).random((len(x), *x.shape[2:])).astype(np.float32)


#: Every entry point that takes labels: the attacks' generate and the searches.
RUNS = {
    **{name: lambda clf, x, y, make=make: make(clf).generate(x, y=y) for name, make in ATTACKS.items()},
    "minimal_eps-fgsm": lambda clf, x, y: minimal_eps(FocusedFGSM(clf, eps=0.1), x, y=y, steps=1),
    "minimal_eps-pgd": lambda clf, x, y: minimal_eps(ATTACKS["pgd"](clf), x, y=y, steps=1),
    "minimal_area": lambda clf, x, y: minimal_area(ATTACKS["pgd"](clf), x, y=y, areas=(0.5,), maps=_maps(x)),
}


@pytest.fixture
def clf():
    torch.manual_seed(0)
    return art_classifier(nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, CLASSES)), size=SIZE)


@pytest.fixture
def x() -> np.ndarray:
    return np.random.default_rng(1).random((N, 3, SIZE, SIZE), dtype=np.float32)


Y = np.array([0, 1, 2, 3, 4, 9])
INDICES = "y must hold integer class indices"
ONE_HOT = r"y: one-hot labels \(N, 10\) must hold one 1"

BAD_Y = {
    "negative": (np.array([0, 1, 2, 3, 4, -1]), ValueError, INDICES + r" in \[0, 10\), got \[-1\]"),
    "n_classes": (np.array([0, 1, 2, 3, 4, 10]), ValueError, INDICES + r" in \[0, 10\), got \[10\]"),
    "short": (Y[:4], ValueError, r"y must be class indices \(N,\) = \(6,\).*got shape \(4,\)"),
    "long-list": ([0] * 7, ValueError, r"y must be class indices \(N,\) = \(6,\).*got shape \(7,\)"),
    "float": (Y + 0.5, ValueError, INDICES + r".*\[0.5, "),
    "nan": (np.where(Y == 9, np.nan, Y), ValueError, "y contains NaN or infinite values"),
    "two-hot": (np.eye(10)[Y] + np.eye(10)[Y[::-1]], ValueError, ONE_HOT),
    "soft": (np.full((N, 10), 0.1), ValueError, ONE_HOT),
    "one-hot-width": (np.eye(5)[Y % 5], ValueError, r"\(N, nb_classes\) = \(6, 10\), got shape \(6, 5\)"),
    "3-d": (np.eye(10)[Y][:, None], ValueError, r"y must be class indices.*got shape \(6, 1, 10\)"),
    "scalar": (np.int64(3), TypeError, r"y must be a numpy array, list or torch tensor.*got int64"),
    "0-d": (np.array(3), ValueError, r"y must be class indices.*got shape \(\)"),
    "strings": (np.array(list("abcdef")), TypeError, r"y must be class.*numeric dtype, got dtype <U1"),
    "bool-indices": (Y > 2, TypeError, "y must be class indices.*got bool class indices"),
    "dict": ({0: 1}, TypeError, "y must be a numpy array, list or torch tensor of class indices.*got dict"),
    "ragged": ([[0, 1], [1]] * 3, ValueError, r"y must be class indices.*inhomogeneous"),
}


@pytest.mark.parametrize("bad", BAD_Y)
@pytest.mark.parametrize("run", RUNS)
def test_bad_y_is_refused_by_every_attack_and_search(clf, x, run, bad):
    y, error, match = BAD_Y[bad]
    with pytest.raises(error, match=match):
        RUNS[run](clf, x, y)


GOOD_Y = {
    "list": Y.tolist(),
    "tuple": tuple(Y.tolist()),
    "tensor": torch.from_numpy(Y),
    "int32": Y.astype(np.int32),
    "uint8": Y.astype(np.uint8),
    "integral-float": Y.astype(np.float64),
    "column": Y[:, None],
    "one-hot": np.eye(10)[Y],
    "one-hot-bool": np.eye(10, dtype=bool)[Y],
    "one-hot-int": np.eye(10, dtype=np.int64)[Y],
}


@pytest.mark.parametrize("form", GOOD_Y)
@pytest.mark.parametrize("attack", ATTACKS)
def test_label_forms_give_the_same_attack(clf, x, attack, form):
    """Indices as a list, tuple, tensor or of any integer dtype, (N,1) columns and one-hot rows: one y."""
    expected = ATTACKS[attack](clf).generate(x, y=Y)
    np.testing.assert_array_equal(ATTACKS[attack](clf).generate(x, y=GOOD_Y[form]), expected)


def test_check_labels_returns_float32_one_hot():
    labels = check_labels([2, 0], 2, 3)
    assert labels.dtype == np.float32
    np.testing.assert_array_equal(labels, [[0, 0, 1], [1, 0, 0]])
    assert check_labels(np.zeros(0, np.int64), 0, 3).shape == (0, 3)


# --- empty batches
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"y": np.zeros(0, np.int64)},
        {"y": []},
        {"y": np.zeros((0, CLASSES))},
        {"maps": np.zeros((0, SIZE, SIZE), np.float32)},
        {"mask": np.ones((SIZE, SIZE), np.float32)},
        {"mask": np.ones((0, 1, SIZE, SIZE), np.float32)},
    ],
    ids=["no-y", "y", "y-list", "y-one-hot", "maps", "mask-hw", "mask-n1hw"],
)
@pytest.mark.parametrize("attack", ATTACKS)
def test_empty_batch_gives_an_empty_result(clf, x, attack, kwargs, dtype):
    empty = x[:0].astype(dtype)
    instance = ATTACKS[attack](clf)
    x_adv = instance.generate(empty, **kwargs)
    assert x_adv.shape == (0, 3, SIZE, SIZE) and x_adv.dtype == dtype
    assert instance.last_mask_.shape == (0, 1, SIZE, SIZE)
    if attack == "pgd":
        assert instance.last_iterations_.shape == (0,)


@pytest.mark.parametrize("attack", ATTACKS)
def test_empty_batch_with_a_saliency_method_and_clip_values_none(attack):
    """The saliency path (no saliency call), and C&W without clip_values (no range to take from x)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    clf = art_classifier(model, size=SIZE)
    empty = np.zeros((0, 3, SIZE, SIZE), np.float32)
    instance = ATTACKS[attack](clf)
    instance.saliency = saliency.GradCAM(clf, "0")
    assert instance.generate(empty).shape == (0, 3, SIZE, SIZE)
    clf._clip_values = None
    assert ATTACKS[attack](clf).generate(empty).shape == (0, 3, SIZE, SIZE)


@pytest.mark.parametrize("attack", ATTACKS)
def test_empty_batch_still_checks_its_arguments(clf, x, attack):
    empty = x[:0]
    with pytest.raises(ValueError, match=r"y must be class indices \(N,\) = \(0,\)"):
        ATTACKS[attack](clf).generate(empty, y=[1])
    with pytest.raises(ValueError, match="maps must have shape"):
        ATTACKS[attack](clf).generate(empty, maps=np.zeros((1, SIZE, SIZE), np.float32))
    instance = ATTACKS[attack](clf)
    instance.set_params(targeted=True)
    with pytest.raises(ValueError, match=TARGETS_REQUIRED):
        instance.generate(empty)


@pytest.mark.parametrize("run", [name for name in RUNS if not name.startswith(tuple(ATTACKS))])
@pytest.mark.parametrize("y", [None, np.zeros(0, np.int64)])
def test_empty_batch_in_the_searches(clf, x, run, y):
    result = RUNS[run](clf, x[:0], y)
    assert result.x_adv.shape == (0, 3, SIZE, SIZE)
    assert result.area.shape == result.success.shape == (0,)


def test_empty_batch_in_the_searches_with_a_mask(clf, x):
    result = minimal_eps(FocusedFGSM(clf, eps=0.1), x[:0], mask=np.ones((SIZE, SIZE), np.float32))
    assert result.x_adv.shape == (0, 3, SIZE, SIZE) and result.eps.shape == (0,)


@pytest.mark.parametrize("as_numpy", [True, False])
@pytest.mark.parametrize(
    "to_mask",
    [
        lambda m: masks.top_k(m, 0.25),
        lambda m: masks.threshold(m, 0.5),
        lambda m: masks.soft(m),
        lambda m: maps_to_mask(m, "topk", 0.25),
        lambda m: maps_to_mask(m, "soft", 0.25),
    ],
    ids=["top_k", "threshold", "soft", "maps_to_mask-topk", "maps_to_mask-soft"],
)
def test_empty_maps_give_empty_masks(to_mask, as_numpy):
    maps = np.zeros((0, 4, 5), np.float32)
    mask = to_mask(maps if as_numpy else torch.from_numpy(maps))
    assert tuple(mask.shape) == (0, 1, 4, 5)
