"""FocusedPGD / FocusedFGSM: equality with ART's PGD and FGM under the same mask, hard-mask invariants,
soft focus and the CAMERAS penalty."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent
from art.estimators.classification import PyTorchClassifier
from conftest import art_classifier, calibrate_head
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from focused_attacks import FocusedFGSM, FocusedPGD, normalize_mask
from focused_attacks.steps import ROUND_OFF_MARGIN


def random_mask(shape: tuple[int, ...], density: float, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) < density).astype(np.float32)


@pytest.fixture
def clf(small_cnn) -> PyTorchClassifier:
    return art_classifier(calibrate_head(small_cnn))


@pytest.fixture(scope="module")
def resnet_clf() -> PyTorchClassifier:
    torch.manual_seed(0)
    return art_classifier(torchvision.models.resnet18(weights=None, num_classes=10).eval())


@pytest.fixture
def x(images) -> np.ndarray:
    return images.numpy()


ATTACK_SETTINGS = [(np.inf, 0.03, 0.01), (2, 0.5, 0.2)]


@pytest.mark.parametrize("norm, eps, eps_step", ATTACK_SETTINGS)
@pytest.mark.parametrize("targeted", [False, True])
def test_pgd_equals_art_with_same_mask(clf, x, norm, eps, eps_step, targeted):
    y = np.array([3, 1, 4, 1, 5]) if targeted else None
    mask = random_mask((len(x), 1, 32, 32), 0.3, seed=0)
    kwargs = dict(norm=norm, eps=eps, eps_step=eps_step, max_iter=5, targeted=targeted, verbose=False)
    expected = ProjectedGradientDescent(clf, batch_size=2, **kwargs).generate(x, y, mask=mask)
    got = FocusedPGD(clf, batch_size=2, **kwargs).generate(x, y, mask=mask)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert np.abs(got - x).max() > 0


@pytest.mark.parametrize("norm, eps, eps_step", ATTACK_SETTINGS)
@pytest.mark.parametrize("targeted", [False, True])
def test_fgsm_equals_art_with_same_mask(clf, x, norm, eps, eps_step, targeted):
    y = np.array([3, 1, 4, 1, 5]) if targeted else None
    mask = random_mask((len(x), 1, 32, 32), 0.3, seed=1)
    expected = FastGradientMethod(clf, norm=norm, eps=eps, targeted=targeted).generate(x, y, mask=mask)
    got = FocusedFGSM(clf, norm=norm, eps=eps, targeted=targeted).generate(x, y, mask=mask)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("norm, eps, eps_step", ATTACK_SETTINGS)
def test_resnet18_equals_art(resnet_clf, norm, eps, eps_step):
    x = np.random.default_rng(2).random((3, 3, 32, 32), dtype=np.float32)
    mask = random_mask((32, 32), 0.2, seed=2)  # (H,W): ours normalises it, ART's PyTorch PGD needs (N,1,H,W)
    full = normalize_mask(mask, x.shape)
    kwargs = dict(norm=norm, eps=eps, eps_step=eps_step, max_iter=2, verbose=False)
    expected = ProjectedGradientDescent(resnet_clf, **kwargs).generate(x, mask=full)
    np.testing.assert_allclose(FocusedPGD(resnet_clf, **kwargs).generate(x, mask=mask), expected, atol=1e-5)
    expected = FastGradientMethod(resnet_clf, norm=norm, eps=eps).generate(x, mask=full)
    np.testing.assert_allclose(
        FocusedFGSM(resnet_clf, norm=norm, eps=eps).generate(x, mask=mask), expected, atol=1e-5
    )


def test_plain_attack_equals_art_without_mask(clf, x):
    kwargs = dict(eps=0.05, eps_step=0.01, max_iter=4, verbose=False)
    attack = FocusedPGD(clf, **kwargs)
    np.testing.assert_allclose(
        attack.generate(x), ProjectedGradientDescent(clf, **kwargs).generate(x), atol=1e-5
    )
    np.testing.assert_array_equal(attack.last_mask_, np.ones((len(x), 1, 32, 32), np.float32))
    expected = FastGradientMethod(clf, norm=2, eps=0.5).generate(x)
    np.testing.assert_allclose(FocusedFGSM(clf, norm=2, eps=0.5).generate(x), expected, atol=1e-5)


MASK_SHAPES = st.sampled_from(["hw", "1hw", "n1hw", "nchw", "chw"])


def _shaped_mask(kind: str, n: int, c: int, h: int, w: int, density: float, seed: int) -> np.ndarray:
    shape = {"hw": (h, w), "1hw": (1, h, w), "n1hw": (n, 1, h, w), "nchw": (n, c, h, w), "chw": (c, h, w)}[
        kind
    ]
    return random_mask(shape, density, seed)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kind=MASK_SHAPES,
    density=st.floats(0.0, 1.0),
    eps=st.floats(0.0, 0.5),
    norm=st.sampled_from([np.inf, 2, 1]),
    use_pgd=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_hard_mask_invariants(clf, x, kind, density, eps, norm, use_pgd, seed):
    mask = _shaped_mask(kind, *x.shape, density, seed)
    if use_pgd:
        attack = FocusedPGD(clf, eps=eps, eps_step=max(eps / 3, 1e-3), max_iter=3, norm=norm, verbose=False)
    else:
        attack = FocusedFGSM(clf, eps=eps, norm=norm)
    before = x.copy()
    x_adv = attack.generate(x, mask=mask)
    np.testing.assert_array_equal(x, before)  # input untouched
    assert x_adv.dtype == x.dtype and x_adv.shape == x.shape
    outside = np.broadcast_to(mask, x.shape) == 0
    np.testing.assert_array_equal(x_adv[outside], x[outside])
    delta = (x_adv - x).reshape(len(x), -1)
    assert np.linalg.norm(delta, ord=norm if norm != 1 else 1, axis=1).max() <= eps * (1 + 1e-5) + 1e-6
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert attack.last_mask_.shape in {(len(x), 1, 32, 32), x.shape}


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(area=st.floats(0.01, 1.0), eps=st.floats(0.01, 0.3), seed=st.integers(0, 100))
def test_topk_maps_invariants(clf, x, area, eps, seed):
    maps = np.random.default_rng(seed).random((len(x), 32, 32), dtype=np.float32)
    attack = FocusedPGD(clf, area=area, eps=eps, eps_step=eps / 2, max_iter=2, verbose=False)
    x_adv = attack.generate(x, maps=maps)
    k = round(area * 32 * 32)
    np.testing.assert_array_equal(attack.last_mask_.reshape(len(x), -1).sum(1), k)
    changed = (x_adv != x).any(axis=1).reshape(len(x), -1).sum(1)
    assert (changed <= k).all()
    assert np.abs(x_adv - x).max() <= eps + 1e-6


def test_soft_focus_scales_the_step(clf, x):
    maps = np.random.default_rng(3).random((len(x), 32, 32), dtype=np.float32)
    maps[:, :8] = 0.0
    eps = 0.1
    x_adv = FocusedFGSM(clf, focus="soft", eps=eps).generate(x, maps=maps)
    delta = np.abs(x_adv - x)
    assert (delta[:, :, :8] == 0).all()
    # |delta| = eps * map per pixel (unless clipped to [0,1]), so never above it
    assert (delta <= eps * maps[:, None] + 1e-6).all()
    np.testing.assert_allclose(delta.max(axis=(1, 2, 3)), eps, atol=1e-2)

    pgd = FocusedPGD(clf, focus="soft", eps=eps, eps_step=0.02, max_iter=3, verbose=False)
    delta = np.abs(pgd.generate(x, maps=maps) - x)
    assert (delta <= 3 * 0.02 * maps[:, None] + 1e-6).all()


def test_penalty_focus(clf, x):
    maps = np.zeros((len(x), 32, 32), np.float32)
    maps[:, 8:24, 8:24] = 1.0
    kwargs = dict(focus="penalty", eps=0.05, eps_step=0.01, max_iter=5, verbose=False)
    # beta = 0: the per-sample CE gives the same sign as ART's mean loss -> plain PGD
    plain = ProjectedGradientDescent(clf, eps=0.05, eps_step=0.01, max_iter=5, verbose=False).generate(x)
    np.testing.assert_allclose(FocusedPGD(clf, beta=0.0, **kwargs).generate(x, maps=maps), plain, atol=1e-5)
    outside = np.broadcast_to((1 - maps)[:, None], x.shape)

    def outside_norm(x_adv: np.ndarray) -> np.ndarray:
        return np.linalg.norm(((x_adv - x) * outside).reshape(len(x), -1), axis=1)

    attack = FocusedPGD(clf, beta=50.0, **kwargs)
    focused = attack.generate(x, maps=maps)
    assert (outside_norm(focused) < outside_norm(plain)).all()
    np.testing.assert_array_equal(attack.last_mask_[:, 0], maps)
    assert np.abs(focused - x).max() <= 0.05 + 1e-6 and focused.min() >= 0 and focused.max() <= 1


def test_random_init_stays_in_mask_and_ball(clf, x):
    mask = random_mask((len(x), 1, 32, 32), 0.2, seed=4)
    attack = FocusedPGD(clf, eps=0.05, eps_step=0.01, max_iter=2, num_random_init=2, verbose=False)
    x_adv = attack.generate(x, mask=mask)
    outside = np.broadcast_to(mask, x.shape) == 0
    np.testing.assert_array_equal(x_adv[outside], x[outside])
    assert np.abs(x_adv - x).max() <= 0.05 + 1e-6


def test_targeted_reaches_target_untargeted_leaves_class(clf, x):
    clean = clf.predict(x).argmax(1)
    target = (clean + 1) % 10
    kwargs = dict(eps=0.1, eps_step=0.02, max_iter=20, verbose=False)
    adv = FocusedPGD(clf, targeted=True, **kwargs).generate(x, target, mask=np.ones((32, 32), np.float32))
    assert (clf.predict(adv).argmax(1) == target).mean() >= 0.8
    adv = FocusedPGD(clf, **kwargs).generate(x)
    assert (clf.predict(adv).argmax(1) != clean).mean() >= 0.8


def test_targeted_without_y_raises_arts_message(clf, x):
    for attack in (FocusedPGD(clf, targeted=True, verbose=False), FocusedFGSM(clf, targeted=True)):
        with pytest.raises(ValueError, match="Target labels `y` need to be provided for a targeted attack."):
            attack.generate(x)


def test_random_init_without_iterations_returns_x(clf, x):
    """As ART's PGD: max_iter=0 returns x, also with random starts."""
    kwargs = dict(eps=0.05, max_iter=0, num_random_init=2, verbose=False)
    np.testing.assert_array_equal(ProjectedGradientDescent(clf, **kwargs).generate(x), x)
    np.testing.assert_array_equal(FocusedPGD(clf, **kwargs).generate(x), x)


def test_random_restarts_equal_art_with_clean_labels(clf, x):
    """A later start replaces the samples it fools; with y=None (the clean prediction) as ART's."""
    kwargs = dict(eps=0.03, eps_step=0.01, max_iter=2, num_random_init=2, batch_size=3)
    np.random.seed(0)  # noqa: NPY002 -- both draw their starts from NumPy's global generator (random_sphere)
    expected = ProjectedGradientDescent(clf, verbose=False, **kwargs).generate(x)
    np.random.seed(0)  # noqa: NPY002
    got = FocusedPGD(clf, verbose=False, **kwargs).generate(x)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def _probs(clf: PyTorchClassifier, x: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.from_numpy(clf.predict(x)), dim=1).numpy()


@pytest.mark.parametrize("focus", ["topk", "penalty"])
def test_stop_confidence_stops_each_sample_once_reached(clf, x, focus):
    """A sample stops stepping at the first point where the target's probability reaches the threshold:
    its x_adv equals the one of a run with exactly that many steps, and fewer steps never reach it."""
    target = _probs(clf, x).argmin(axis=1)
    maps = np.ones((len(x), 32, 32), np.float32)
    kwargs = dict(focus=focus, area=1.0, eps=0.5, eps_step=0.01, targeted=True, verbose=False)
    threshold = 0.5
    attack = FocusedPGD(clf, max_iter=60, stop_confidence=threshold, **kwargs)
    x_adv = attack.generate(x, y=target, maps=maps)
    steps = attack.last_iterations_
    assert steps.shape == (len(x),) and (steps >= 1).all() and (steps < 60).any()
    reached = _probs(clf, x_adv)[np.arange(len(x)), target] >= threshold
    with_margin = 1 - (1 - threshold) * (1 - ROUND_OFF_MARGIN)
    for k in np.unique(steps):
        rows = steps == k
        inputs = dict(x=x[rows], y=target[rows], maps=maps[rows])
        fixed = FocusedPGD(clf, max_iter=int(k), **kwargs).generate(**inputs)
        np.testing.assert_allclose(x_adv[rows], fixed, atol=1e-6)
        before = FocusedPGD(clf, max_iter=int(k) - 1, **kwargs).generate(**inputs)
        assert (_probs(clf, before)[np.arange(rows.sum()), target[rows]] < with_margin).all()
    # those that stopped before max_iter reached the threshold
    assert reached[steps < 60].all()


def test_stop_confidence_none_runs_every_step(clf, x):
    attack = FocusedPGD(clf, eps=0.05, eps_step=0.01, max_iter=7, verbose=False)
    attack.generate(x)
    np.testing.assert_array_equal(attack.last_iterations_, np.full(len(x), 7))


@pytest.mark.parametrize("value", [0.0, 1.5, -0.1, float("nan"), "0.9", True])
def test_stop_confidence_is_checked(clf, value):
    with pytest.raises(ValueError, match="stop_confidence"):
        FocusedPGD(clf, stop_confidence=value)


def test_penalty_keeps_the_confidence_and_never_grows_the_norm(clf, x):
    """With a map, focus="penalty" keeps the threshold: its first feasible iterate is the plain attack's
    stopping point, so the returned (smallest-L2 feasible) perturbation is at or above the threshold and
    never larger in L2 than the plain one."""
    target = _probs(clf, x).argmin(axis=1)
    maps = np.zeros((len(x), 32, 32), np.float32)
    maps[:, 8:24, 8:24] = 1.0
    kwargs = dict(eps=1.0, eps_step=0.01, max_iter=40, targeted=True, stop_confidence=0.5, verbose=False)
    plain = FocusedPGD(clf, **kwargs)
    x_plain = plain.generate(x, y=target)
    focused = FocusedPGD(clf, focus="penalty", beta=50.0, **kwargs)
    x_focused = focused.generate(x, y=target, maps=maps)
    reached = plain.last_iterations_ < 40
    assert reached.any()
    probs = _probs(clf, x_focused)[np.arange(len(x)), target]
    assert (probs[reached] >= 0.5 - 1e-5).all()
    size = lambda a: np.linalg.norm((a - x).reshape(len(x), -1), axis=1)  # noqa: E731
    assert (size(x_focused)[reached] <= size(x_plain)[reached] + 1e-5).all()
    assert (size(x_focused)[reached] < size(x_plain)[reached] - 1e-3).any()  # the penalty does shrink it
