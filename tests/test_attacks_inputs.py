"""Parameter checks, mask normalisation, the saliency path, the generic (non-PyTorch) estimator path and
the minimal area / eps searches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from art.attacks.evasion import CarliniL2Method, ProjectedGradientDescent
from art.defences.preprocessor import Preprocessor
from art.estimators.classification.classifier import ClassGradientsMixin, ClassifierMixin
from art.estimators.estimator import BaseEstimator, LossGradientsMixin
from art.exceptions import EstimatorError
from conftest import art_classifier, calibrate_head
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import saliency
from focused_attacks import (
    FocusedCarliniL2,
    FocusedFGSM,
    FocusedPGD,
    minimal_area,
    minimal_eps,
    normalize_mask,
)
from focused_attacks.base import is_torch_estimator
from saliency import masks

ATTACKS = (FocusedFGSM, FocusedPGD, FocusedCarliniL2)


@pytest.fixture
def clf(small_cnn):
    return art_classifier(calibrate_head(small_cnn))


@pytest.fixture
def x(images) -> np.ndarray:
    return images.numpy()


# --- parameters
@pytest.mark.parametrize("attack_class", ATTACKS)
@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"area": 0.0}, "area"),
        ({"area": 1.5}, "area"),
        ({"area": -0.1}, "area"),
        ({"focus": "blur"}, "focus"),
        ({"batch_size": 0}, "batch_size"),
        ({"saliency": "cameras"}, "saliency"),
    ],
)
def test_bad_common_params(clf, attack_class, kwargs, name):
    with pytest.raises((ValueError, TypeError), match=name):
        attack_class(clf, **kwargs)


@pytest.mark.parametrize(
    "attack_class, kwargs, name",
    [
        (FocusedPGD, {"eps": -0.1}, "eps"),
        (FocusedFGSM, {"eps": -1}, "eps"),
        (FocusedPGD, {"eps_step": 0}, "eps_step"),
        (FocusedPGD, {"max_iter": -1}, "max_iter"),
        (FocusedPGD, {"norm": 0.5}, "norm"),
        (FocusedPGD, {"beta": -1.0}, "beta"),
        (FocusedPGD, {"num_random_init": 1.5}, "num_random_init"),
        (FocusedPGD, {"norm": 1.5, "num_random_init": 1}, "norm must be 1, 2 or inf"),
        (FocusedFGSM, {"focus": "penalty"}, "focus"),
        (FocusedCarliniL2, {"learning_rate": 0}, "learning_rate"),
        (FocusedCarliniL2, {"binary_search_steps": -1}, "binary_search_steps"),
        (FocusedCarliniL2, {"focus": "penalty"}, "focus"),
    ],
)
def test_bad_specific_params(clf, attack_class, kwargs, name):
    with pytest.raises(ValueError, match=name):
        attack_class(clf, **kwargs)


class PredictOnlyClassifier(ClassifierMixin, BaseEstimator):
    """An ART classifier with predictions but no gradients."""

    estimator_params = BaseEstimator.estimator_params + ClassifierMixin.estimator_params

    def __init__(self):
        super().__init__(model=None, clip_values=(0.0, 1.0))
        self.nb_classes = 10

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (3, 32, 32)

    def predict(self, x, batch_size=128, **kwargs):
        return np.zeros((len(x), 10), np.float32)

    def fit(self, x, y, **kwargs):
        raise NotImplementedError


@pytest.mark.parametrize("attack_class", ATTACKS)
def test_estimator_without_gradients(attack_class, small_cnn):
    for estimator in (small_cnn, PredictOnlyClassifier()):
        with pytest.raises(EstimatorError):
            attack_class(estimator)


def test_set_params_validates(clf):
    attack = FocusedPGD(clf, verbose=False)
    attack.set_params(area=0.3, focus="soft", eps=0.1)
    assert (attack.area, attack.focus, attack.eps) == (0.3, "soft", 0.1)
    with pytest.raises(ValueError, match="area"):
        attack.set_params(area=2.0)
    with pytest.raises(ValueError):
        attack.set_params(not_a_param=1)


@pytest.mark.parametrize(
    "mask, match",
    [
        (-np.ones((32, 32), np.float32), r"mask values must lie in \[0, 1\]"),
        (np.full((32, 32), 1.5, np.float32), r"mask values must lie in \[0, 1\]"),
        (np.ones((5, 32, 32), np.float32), r"ambiguous.*\(N,1,H,W\)"),
        (np.ones((7, 32), np.float32), "broadcastable"),
        (np.ones((5, 2, 32, 32), np.float32), "broadcastable"),
        (np.ones(32, np.float32), "broadcastable"),
        (np.ones((32, 32), np.int64), "dtype"),
    ],
)
def test_bad_masks(clf, x, mask, match):
    with pytest.raises((ValueError, TypeError), match=match):
        FocusedPGD(clf, verbose=False).generate(x, mask=mask)


def test_per_image_3d_mask_is_refused():
    """An (N,H,W) mask (e.g. maps > t) is not read as a per-channel (C,H,W) one when N == C."""
    mask = np.arange(3 * 4 * 4).reshape(3, 4, 4) % 3 == 0
    with pytest.raises(ValueError, match=r"ambiguous.*\(N,1,H,W\).*\(1,C,H,W\)"):
        normalize_mask(mask, (3, 3, 4, 4))
    per_channel = normalize_mask(mask, (2, 3, 4, 4))  # (C,H,W) with N != C
    np.testing.assert_array_equal(per_channel[1], mask)


def test_bad_maps_shape(clf, x):
    with pytest.raises(ValueError, match="maps"):
        FocusedPGD(clf, verbose=False).generate(x, maps=np.ones((5, 16, 16), np.float32))


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 4),
    c=st.sampled_from([1, 3]),
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    kind=st.sampled_from(["hw", "1hw", "chw", "n1hw", "1chw", "nchw"]),
    as_bool=st.booleans(),
)
def test_normalize_mask_shapes(n, c, h, w, kind, as_bool):
    shape = {
        "hw": (h, w),
        "1hw": (1, h, w),
        "chw": (c, h, w),
        "n1hw": (n, 1, h, w),
        "1chw": (1, c, h, w),
        "nchw": (n, c, h, w),
    }[kind]
    raw = np.random.default_rng(n * 100 + h * 10 + w).random(shape) > 0.5
    mask = raw if as_bool else raw.astype(np.float64)
    if kind == "chw" and c == n > 1:  # ambiguous with a per-image (N,H,W) mask
        with pytest.raises(ValueError, match="ambiguous"):
            normalize_mask(mask, (n, c, h, w))
        return
    out = normalize_mask(mask, (n, c, h, w))
    assert out.dtype == np.float32 and out.flags.writeable
    assert out.shape in {(n, 1, h, w), (n, c, h, w)}
    np.testing.assert_array_equal(np.broadcast_to(out, (n, c, h, w)), np.broadcast_to(raw, (n, c, h, w)))


# --- inputs x
@pytest.mark.parametrize(
    "make_x, error, match",
    [
        (lambda x: x * 1.2, ValueError, r"x must lie within the estimator's clip_values \(0.0, 1.0\)"),
        (lambda x: x - 0.1, ValueError, r"x must lie within the estimator's clip_values \(0.0, 1.0\)"),
        (lambda x: np.where(x > 0.9, np.nan, x), ValueError, "x contains NaN"),
        (lambda x: (x > 0.5).astype(np.uint8), TypeError, "x must have a floating dtype"),
    ],
)
def test_bad_x(linear_pair, make_x, error, match):
    _, torch_clf, x = linear_pair
    for attack_class in ATTACKS:
        with pytest.raises(error, match=match):
            attack_class(torch_clf).generate(make_x(x))
    with pytest.raises(error, match=match):
        minimal_eps(FocusedFGSM(torch_clf), make_x(x))


def test_x_within_clip_tolerance_is_accepted(linear_pair):
    _, torch_clf, x = linear_pair
    x_adv = FocusedFGSM(torch_clf, eps=0.1).generate(np.clip(x + 0.5, 0, 1) + 1e-7)
    assert x_adv.max() <= 1.0 + 1e-6


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
@pytest.mark.parametrize(
    "make_attack",
    [
        lambda clf: FocusedFGSM(clf, eps=0.1),
        lambda clf: FocusedPGD(clf, eps=0.1, eps_step=0.05, max_iter=3, num_random_init=1, verbose=False),
        lambda clf: FocusedCarliniL2(
            clf, binary_search_steps=2, max_iter=3, initial_const=1.0, verbose=False
        ),
    ],
    ids=["fgsm", "pgd", "cw"],
)
def test_other_float_dtypes(linear_pair, make_attack, dtype):
    """float64/float16 x: computed in float32 (y=None predicts on it), returned in x's dtype with the pixels
    outside the mask exactly x."""
    _, torch_clf, x = linear_pair
    x = np.random.default_rng(3).random(x.shape).astype(dtype)  # float64: off the float32 grid
    mask = np.zeros((8, 8), np.float32)
    mask[:, :4] = 1
    x_adv = make_attack(torch_clf).generate(x, mask=mask)
    assert x_adv.dtype == dtype
    np.testing.assert_array_equal(x_adv[..., 4:], x[..., 4:])
    assert (x_adv[..., :4] != x[..., :4]).any()


def test_searches_keep_float64_pixels(linear_pair):
    _, torch_clf, x = linear_pair
    x = np.random.default_rng(3).random(x.shape)
    maps = np.random.default_rng(4).random((len(x), 8, 8))
    attack = FocusedPGD(torch_clf, area=0.25, eps=0.05, eps_step=0.02, max_iter=3, verbose=False)
    mask = np.broadcast_to(masks.top_k(maps, 0.25), x.shape)
    for result in (
        minimal_eps(attack, x, maps=maps, steps=2),
        minimal_area(attack, x, maps=maps, areas=(0.25,)),
    ):
        assert result.x_adv.dtype == np.float64 and result.success.any() and not result.success.all()
        kept = (mask == 0) | ~result.success[:, None, None, None]
        np.testing.assert_array_equal(result.x_adv[kept], x[kept])


# --- saliency path
def test_cameras_end_to_end(clf, x):
    attack = FocusedPGD(
        clf, saliency=saliency.CAMERAS(clf, "features.5"), area=0.1, max_iter=3, verbose=False
    )
    attack.set_params(eps=0.05, eps_step=0.02)
    x_adv = attack.generate(x)
    np.testing.assert_array_equal(attack.last_mask_.reshape(len(x), -1).sum(1), round(0.1 * 32 * 32))
    outside = np.broadcast_to(attack.last_mask_, x.shape) == 0
    np.testing.assert_array_equal(x_adv[outside], x[outside])
    assert np.abs(x_adv - x).max() > 0


class RecordingSaliency:
    """Saliency stand-in that records the classes it is asked for and returns a fixed gradient map."""

    def __init__(self):
        self.targets: list[np.ndarray] = []

    def __call__(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        self.targets.append(np.asarray(targets.cpu()))
        ramp = torch.linspace(0, 1, x.shape[-1])
        return ramp.expand(x.shape[0], x.shape[-2], x.shape[-1]).clone()


def test_saliency_gets_the_attacked_class(clf, x):
    clean = clf.predict(x).argmax(1)
    y_true = (clean + 3) % 10
    cases = [(False, None, clean), (False, y_true, y_true), (True, (clean + 1) % 10, clean)]
    for targeted, y, expected in cases:
        recorder = RecordingSaliency()
        attack = FocusedFGSM(clf, saliency=recorder, area=0.25, eps=0.05, targeted=targeted, batch_size=2)
        attack.generate(x, y)
        np.testing.assert_array_equal(np.concatenate(recorder.targets), expected)
        # the top 25 % of a left-to-right ramp are the 8 right-most columns
        assert (attack.last_mask_[:, 0, :, 24:] == 1).all() and attack.last_mask_[:, 0, :, :24].sum() == 0


def test_saliency_gets_a_copy_of_x(clf, x):
    """A saliency method that writes into its input changes neither the caller's x nor the attacked images."""

    def overwriting(xb: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        maps = RecordingSaliency()(xb, targets)
        xb.zero_()
        return maps

    before = x.copy()
    got = FocusedFGSM(clf, saliency=overwriting, area=0.25, eps=0.05).generate(x)
    np.testing.assert_array_equal(x, before)
    expected = FocusedFGSM(clf, saliency=RecordingSaliency(), area=0.25, eps=0.05).generate(x)
    np.testing.assert_array_equal(got, expected)


def test_explicit_mask_beats_maps_and_saliency(clf, x):
    recorder = RecordingSaliency()
    mask = np.zeros((32, 32), np.float32)
    mask[:4] = 1
    attack = FocusedFGSM(clf, saliency=recorder, eps=0.05)
    attack.generate(x, mask=mask, maps=np.ones((5, 32, 32), np.float32))
    assert recorder.targets == []
    np.testing.assert_array_equal(attack.last_mask_, normalize_mask(mask, x.shape))


# --- generic estimator
class NumpyLinearClassifier(ClassGradientsMixin, ClassifierMixin, LossGradientsMixin, BaseEstimator):
    """Softmax-linear ART classifier in pure numpy (no PyTorch): loss = mean cross-entropy."""

    estimator_params = BaseEstimator.estimator_params + ClassifierMixin.estimator_params

    def __init__(self, weights: np.ndarray, bias: np.ndarray, input_shape: tuple[int, ...]):
        super().__init__(model=None, clip_values=(0.0, 1.0))
        self.weights, self.bias, self._input_shape = weights, bias, input_shape
        self.nb_classes = weights.shape[0]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self._input_shape

    def predict(self, x, batch_size=128, **kwargs):
        return (x.reshape(len(x), -1) @ self.weights.T + self.bias).astype(np.float32)

    def fit(self, x, y, **kwargs):
        raise NotImplementedError

    def loss_gradient(self, x, y, **kwargs):
        z = self.predict(x)
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        return (((p - y) @ self.weights) / len(x)).reshape(x.shape).astype(np.float32)

    def class_gradient(self, x, label=None, **kwargs):
        rows = np.broadcast_to(self.weights[np.asarray(label)], (len(x), self.weights.shape[1]))
        return rows.reshape(len(x), 1, *x.shape[1:]).astype(np.float32)


@pytest.fixture
def linear_pair():
    """The same linear model as a numpy-only ART classifier and as a PyTorchClassifier."""
    rng = np.random.default_rng(7)
    weights = rng.normal(0, 0.3, (10, 3 * 8 * 8)).astype(np.float32)
    bias = rng.normal(0, 0.1, 10).astype(np.float32)
    numpy_clf = NumpyLinearClassifier(weights, bias, (3, 8, 8))
    layer = nn.Linear(3 * 8 * 8, 10)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(weights))
        layer.bias.copy_(torch.from_numpy(bias))
    torch_clf = art_classifier(nn.Sequential(nn.Flatten(), layer), size=8)
    x = rng.random((6, 3, 8, 8), dtype=np.float32)
    return numpy_clf, torch_clf, x


@pytest.mark.parametrize("norm, eps, eps_step", [(np.inf, 0.05, 0.02), (2, 0.4, 0.15)])
def test_generic_path_equals_art_and_torch_path(linear_pair, norm, eps, eps_step):
    numpy_clf, torch_clf, x = linear_pair
    mask = (np.random.default_rng(8).random((8, 8)) < 0.4).astype(np.float32)
    kwargs = dict(norm=norm, eps=eps, eps_step=eps_step, max_iter=4, verbose=False)
    generic = FocusedPGD(numpy_clf, **kwargs).generate(x, mask=mask)
    expected = ProjectedGradientDescent(numpy_clf, **kwargs).generate(x, mask=normalize_mask(mask, x.shape))
    np.testing.assert_allclose(generic, expected, atol=1e-5)
    np.testing.assert_allclose(FocusedPGD(torch_clf, **kwargs).generate(x, mask=mask), generic, atol=1e-5)
    maps = np.random.default_rng(9).random((len(x), 8, 8), dtype=np.float32)
    np.testing.assert_allclose(
        FocusedFGSM(numpy_clf, eps=eps, norm=norm).generate(x, maps=maps),
        FocusedFGSM(torch_clf, eps=eps, norm=norm).generate(x, maps=maps),
        atol=1e-5,
    )


def test_generic_cw_equals_art(linear_pair):
    numpy_clf, _, x = linear_pair
    settings_ = dict(binary_search_steps=3, max_iter=4, batch_size=6, verbose=False)
    expected = CarliniL2Method(numpy_clf, **settings_).generate(x)
    np.testing.assert_allclose(FocusedCarliniL2(numpy_clf, **settings_).generate(x), expected, atol=1e-5)
    masked = FocusedCarliniL2(numpy_clf, area=0.25, **settings_).generate(
        x, maps=np.random.default_rng(1).random((6, 8, 8), dtype=np.float32)
    )
    assert ((masked != x).any(axis=1).reshape(6, -1).sum(1) <= 16).all()


class IdentityDefence(Preprocessor):
    """A numpy preprocessing step that changes nothing; it sends a PyTorchClassifier down the generic path."""

    def __init__(self):
        super().__init__(is_fitted=True, apply_fit=False, apply_predict=True)

    def __call__(self, x, y=None):
        return x, y

    def estimate_gradient(self, x, grad):
        return grad


def test_penalty_is_per_sample_on_the_generic_path(linear_pair):
    """focus="penalty" needs each sample's own loss gradient: on ART's generic path it does not depend on
    the batch size and equals the torch path, with a "mean" loss and with an unknown reduction."""
    numpy_clf, torch_clf, x = linear_pair
    generic_torch = art_classifier(torch_clf.model, size=8, preprocessing_defences=[IdentityDefence()])
    assert not is_torch_estimator(generic_torch) and generic_torch.loss.reduction == "mean"
    maps = np.random.default_rng(2).random((len(x), 8, 8), dtype=np.float32)
    kwargs = dict(focus="penalty", eps=0.1, eps_step=0.01, max_iter=5, verbose=False)
    expected = FocusedPGD(torch_clf, batch_size=6, **kwargs).generate(x, maps=maps)
    for estimator in (generic_torch, numpy_clf):
        for batch_size in (1, 6):
            got = FocusedPGD(estimator, batch_size=batch_size, **kwargs).generate(x, maps=maps)
            np.testing.assert_allclose(got, expected, atol=1e-6)


def test_saliency_callable_needs_torch(linear_pair):
    numpy_clf, _, _ = linear_pair
    with pytest.raises(TypeError, match="saliency"):
        FocusedPGD(numpy_clf, saliency=RecordingSaliency())


# --- searches
def test_minimal_area(clf, x):
    maps = np.random.default_rng(5).random((len(x), 32, 32), dtype=np.float32)
    attack = FocusedPGD(clf, eps=0.05, eps_step=0.02, max_iter=3, verbose=False)
    areas = (0.01, 0.05, 0.2, 1.0)
    result = minimal_area(attack, x, areas=areas, maps=maps)
    clean = clf.predict(x).argmax(1)
    assert result.success.any()
    np.testing.assert_array_equal(result.success, ~np.isnan(result.area))
    fooled = clf.predict(result.x_adv).argmax(1) != clean
    np.testing.assert_array_equal(fooled, result.success)
    for i in np.flatnonzero(result.success):
        k = round(result.area[i] * 32 * 32)
        assert (result.x_adv[i] != x[i]).any(axis=0).sum() <= k
        smaller = [a for a in areas if a < result.area[i]]
        if smaller:  # the next smaller area fails
            attack.set_params(area=smaller[-1])
            adv = attack.generate(x[i : i + 1], clean[i : i + 1], maps=maps[i : i + 1])
            assert clf.predict(adv).argmax(1)[0] == clean[i]
    np.testing.assert_array_equal(result.x_adv[~result.success], x[~result.success])


def test_minimal_area_uses_saliency_once(clf, x):
    recorder = RecordingSaliency()
    attack = FocusedFGSM(clf, saliency=recorder, eps=0.1)
    result = minimal_area(attack, x, areas=(0.05, 0.5, 1.0))
    assert len(recorder.targets) == 1  # one batch of 5 images, computed once for all areas
    assert result.area.shape == (len(x),) and result.x_adv.shape == x.shape


def test_minimal_eps(clf, x):
    attack = FocusedPGD(clf, eps=0.2, eps_step=0.05, max_iter=3, verbose=False)
    mask = np.ones((32, 32), np.float32)
    result = minimal_eps(attack, x, mask=mask, steps=4)
    clean = clf.predict(x).argmax(1)
    assert result.success.all()
    assert (clf.predict(result.x_adv).argmax(1) != clean).all()
    linf = np.abs(result.x_adv - x).reshape(len(x), -1).max(1)
    assert (linf <= result.eps + 1e-6).all() and (result.eps <= 0.2).all()
    assert (result.eps < 0.2).any()  # bisection moved below the upper bound
    fgsm = minimal_eps(FocusedFGSM(clf, eps=0.3), x, steps=3)
    fooled = clf.predict(fgsm.x_adv).argmax(1) != clean
    np.testing.assert_array_equal(fooled, fgsm.success)


def test_minimal_eps_already_fooled_image_gets_low(linear_pair):
    _, torch_clf, x = linear_pair
    y = torch_clf.predict(x).argmax(1)
    y[0] = (y[0] + 1) % 10  # image 0 is misclassified w.r.t. y before any attack
    attack = FocusedPGD(torch_clf, eps=0.3, eps_step=0.1, max_iter=3, verbose=False)
    result = minimal_eps(attack, x, y, steps=3)
    assert result.success[0] and result.eps[0] == 0.0
    np.testing.assert_array_equal(result.x_adv[0], x[0])
    result = minimal_eps(attack, x, y, low=1e-3, steps=3, scale="log")
    assert result.success[0] and result.eps[0] == pytest.approx(1e-3, rel=1e-9)
    assert np.abs(result.x_adv[0] - x[0]).max() <= 1e-3 + 1e-7
    assert (result.eps[1:][result.success[1:]] > 1e-3 * (1 + 1e-9)).all()


def _log_bisection(attack, x, y, maps, low, high, steps):
    """Direct per-image log-space bisection of eps (the computation the runner's search must equal)."""
    from focused_attacks.base import success_mask

    x, labels = attack._prepare(x, y)
    mask = attack._resolve_mask(x, labels, None, maps)

    def run(eps, rows):
        adv = attack._perturb_at(x[rows], labels[rows], eps, None if mask is None else mask[rows])
        return adv, success_mask(attack.estimator, adv, labels[rows], False, attack.batch_size)

    n = len(x)
    log_high, log_low = np.full(n, np.log(high)), np.full(n, np.log(low))
    x_adv = x.copy()
    adv, ok = run(np.exp(log_high), np.arange(n))
    x_adv[ok] = adv[ok]
    rows = np.flatnonzero(ok)
    for _ in range(steps):
        if rows.size == 0:
            break
        middle = (log_low[rows] + log_high[rows]) / 2
        adv, hit = run(np.exp(middle), rows)
        log_high[rows[hit]] = middle[hit]
        x_adv[rows[hit]] = adv[hit]
        log_low[rows[~hit]] = middle[~hit]
    return x_adv, np.where(ok, np.exp(log_high), np.nan), mask


@pytest.mark.parametrize("focused", [False, True])
@pytest.mark.parametrize(
    "make_attack",
    [
        lambda clf: FocusedFGSM(clf, area=0.2, eps=1.0, batch_size=2),
        lambda clf: FocusedPGD(
            clf, area=0.2, eps=0.5, eps_step=0.125, max_iter=3, batch_size=2, verbose=False
        ),
    ],
    ids=["fgsm", "pgd"],
)
def test_minimal_eps_log_equals_direct_bisection(clf, x, make_attack, focused):
    """scale="log" (the runner's search) is bit-identical to a direct log-space bisection."""
    y = clf.predict(x).argmax(1)
    maps = np.random.default_rng(7).random((len(x), 32, 32), dtype=np.float32) if focused else None
    attack = make_attack(clf)
    low, high, steps = 1 / 512, float(attack.eps), 6
    result = minimal_eps(attack, x, y, low=low, high=high, steps=steps, maps=maps, scale="log")
    x_adv, eps, mask = _log_bisection(make_attack(clf), x, y, maps, low, high, steps)
    assert result.success.any()
    np.testing.assert_array_equal(result.eps, eps)
    np.testing.assert_array_equal(result.x_adv, x_adv)
    np.testing.assert_array_equal(result.success, np.isfinite(eps))
    expected_mask = np.ones((len(x), 1, 32, 32), np.float32) if mask is None else mask
    np.testing.assert_array_equal(attack.last_mask_, expected_mask)
    # Every found eps lies on the log grid high * ratio**-k.
    ratio = (high / low) ** (2.0**-steps)
    k = np.log(high / eps[result.success]) / np.log(ratio)
    np.testing.assert_allclose(k, np.round(k), atol=1e-6)


def test_search_argument_errors(clf, x):
    with pytest.raises(ValueError, match="focus"):
        minimal_area(FocusedPGD(clf, focus="soft", verbose=False), x, maps=np.ones((5, 32, 32), np.float32))
    with pytest.raises(ValueError, match="saliency"):
        minimal_area(FocusedPGD(clf, verbose=False), x)
    with pytest.raises(ValueError, match=r"fraction \(area\) 0.0001 of a 32x32 map rounds to 0 pixels"):
        minimal_area(
            FocusedPGD(clf, verbose=False), x, areas=(1e-4, 0.5), maps=np.ones((5, 32, 32), np.float32)
        )
    with pytest.raises(TypeError, match="attack"):
        minimal_eps(FocusedCarliniL2(clf, verbose=False), x)
    with pytest.raises(ValueError, match="low and high"):
        minimal_eps(FocusedFGSM(clf, eps=0.1), x, low=0.2)
    with pytest.raises(ValueError, match="scale"):
        minimal_eps(FocusedFGSM(clf, eps=0.1), x, scale="exp")
    with pytest.raises(ValueError, match="low must be > 0"):
        minimal_eps(FocusedFGSM(clf, eps=0.1), x, scale="log")
