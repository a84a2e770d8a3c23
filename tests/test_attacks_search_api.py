"""The protected API the searches drive an attack with, the mask each search result carries, and the
module layout of focused_attacks (FGSM does not import PGD)."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from art.estimators.classification import PyTorchClassifier
from torch import nn

from focused_attacks import FocusedFGSM, FocusedPGD, maps_to_mask, minimal_area, minimal_eps
from focused_attacks.masks import keep_outside
from focused_attacks.steps import StepSettings

PACKAGE = Path(__file__).resolve().parents[1] / "focused_attacks"


@pytest.fixture
def model_and_x() -> tuple[PyTorchClassifier, np.ndarray, np.ndarray]:
    """A linear classifier on (3,8,8) images in [0,1], six images and random saliency maps."""
    rng = np.random.default_rng(3)
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    clf = PyTorchClassifier(
        model, nn.CrossEntropyLoss(), input_shape=(3, 8, 8), nb_classes=10, clip_values=(0.0, 1.0)
    )
    x = rng.random((6, 3, 8, 8), dtype=np.float32)
    maps = rng.random((6, 8, 8), dtype=np.float32)
    return clf, x, maps


def test_minimal_eps_result_carries_the_mask(model_and_x):
    clf, x, maps = model_and_x
    attack = FocusedPGD(clf, area=0.25, eps=0.5, eps_step=0.1, max_iter=3, verbose=False)
    unfocused = minimal_eps(attack, x, steps=2)
    np.testing.assert_array_equal(unfocused.mask, np.ones((len(x), 1, 8, 8), np.float32))
    focused = minimal_eps(attack, x, steps=2, maps=maps)
    np.testing.assert_array_equal(focused.mask, maps_to_mask(maps, "topk", 0.25))
    np.testing.assert_array_equal(focused.mask, attack.last_mask_)


def test_minimal_area_result_carries_the_mask_of_the_found_area(model_and_x):
    clf, x, maps = model_and_x
    areas = (0.05, 0.25, 1.0)
    result = minimal_area(FocusedFGSM(clf, eps=0.05), x, areas=areas, maps=maps)
    assert result.success.any() and not result.success.all()
    for i in range(len(x)):
        area = result.area[i] if result.success[i] else max(areas)
        np.testing.assert_array_equal(result.mask[i : i + 1], maps_to_mask(maps[i : i + 1], "topk", area))


@pytest.mark.parametrize(
    "make_attack",
    [
        lambda clf: FocusedFGSM(clf, area=0.25, eps=0.1),
        lambda clf: FocusedPGD(clf, area=0.25, eps=0.1, eps_step=0.03, max_iter=4, verbose=False),
    ],
    ids=["fgsm", "pgd"],
)
def test_perturb_at_the_attacks_eps_equals_generate(model_and_x, make_attack):
    clf, x, maps = model_and_x
    attack = make_attack(clf)
    expected = attack.generate(x, maps=maps)
    x32, labels = attack._prepare(x, None)
    mask = attack._resolve_mask(x32, labels, maps=maps)
    np.testing.assert_array_equal(attack.last_mask_, mask)
    for eps in (None, np.full(len(x), attack.eps)):
        adv = attack._perturb_at(x32, labels, eps, mask)
        np.testing.assert_array_equal(keep_outside(x, adv, mask), expected)


def test_resolve_mask_keeps_all_ones_for_the_whole_image(model_and_x):
    clf, x, _ = model_and_x
    attack = FocusedFGSM(clf, eps=0.1)
    x32, labels = attack._prepare(x, None)
    assert attack._resolve_mask(x32, labels) is None
    np.testing.assert_array_equal(attack.last_mask_, np.ones((len(x), 1, 8, 8), np.float32))


def test_pgd_step_keeps_its_ratio_to_eps(model_and_x):
    clf, _, _ = model_and_x
    attack = FocusedPGD(clf, eps=0.4, eps_step=0.1, verbose=False)
    np.testing.assert_allclose(attack._eps_step_at(np.array([0.4, 0.2, 0.0], np.float32)), [0.1, 0.05, 0.0])
    attack.set_params(eps=0.0)
    np.testing.assert_array_equal(attack._eps_step_at(np.array([0.2], np.float32)), np.float32([0.1]))


def test_step_settings_are_frozen():
    settings = StepSettings(max_iter=1, norm=np.inf, targeted=False, clip_values=None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.max_iter = 2


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize("module", ["base", "fgsm", "steps", "masks", "gradients", "inputs"])
def test_fgsm_and_the_shared_modules_do_not_import_pgd(module):
    assert "focused_attacks.pgd" not in _imported_modules(PACKAGE / f"{module}.py")
