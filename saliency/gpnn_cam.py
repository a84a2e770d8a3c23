"""GPNN-CAM (Singh & Namboodiri, "Image Attribution by Generating Images"): linear models fitted on GPNN
variations of the image, applied to the original image's activations (docs/gpnn.md).

Follows the authors' final ("gpnn-loadgen-mycam") pipeline:

* GPNN preset: noise std 3.0 on a zero initialisation, shared over channels; alpha 0.005; p 7; r 4/3;
  coarsest 14; 10 iterations per level; distance-weighted fold; 100 variations in batches of 10.
* Phase 1: ridge regression (intercept, penalty 0.01, sklearn's unscaled objective) of the target *logit*
  of the variations on their spatially summed top-layer activations, each channel standardised with its
  mean/std over the variations' batch and positions; map = ReLU(sum_c w_c X_c), bias dropped.
* Phase 2: per lower layer, per-pixel ridge (penalty 1e-4, intercept) of the standardised activations on
  the target prod_k sigmoid(M_hat_k - 0.5) of the layers above, M_hat = map / its global max over the
  batch; maps on the original image use the variations' mean/std; fusion by the product of
  sigmoid(M_hat - 0.5) at the finest layer grid; bilinear up-sampling; plain mean over the batches.
* A model returning spatial logits (N,K,h,w) has them averaged over space (as for the VOC models).

Ours (not in, or differing from, the authors' code):

* The default GPNN (:func:`gpnn_cam_preset`) uses the exact alpha-normalised NN with the per-variation
  column minimum, the paper's bilinear pyramid and bilinear up-sampling; the fold weights use exact
  distances. :meth:`GPNNCAM.authors` runs their pipeline instead (:meth:`saliency.GPNN.authors`: PCA-30,
  IVF, alpha unused, their pyramid, nearest up-sampling). Keys switch to the sharp source after
  iteration 0 in both (the authors' fork rebuilds its index at iterations 0-2, but from iteration 1 on
  over the sharp source). The coarsest level keeps the aspect ratio in ours (theirs: square; the same for
  square inputs).
* Each factor of a Phase 2 target is resized bilinearly to the layer's grid and then multiplied.
* Standard deviations are population std (ddof 0); a channel with std 0 gets std 1 (the authors), and so
  does one constant up to float32 round-off (std <= 1e-5 |mean|, ours, as sklearn's scaler does): its
  rounding noise would otherwise be scaled up to unit variance and could dominate the map.
* The closed-form ridge runs in float64 (dual form when samples < features, else primal normal
  equations), the maps at the end are min-max normalised, and the batches of variations have (nearly)
  equal sizes: ``n_variations // batch_variations`` of them.
* The GPNN seed of each (image, batch) derives from ``seed`` and the image's index in ``x``, so a map is
  reproducible for the same batch of images, not for the same image at another position. An image's
  batches are generated in one pass (:meth:`saliency.GPNN.generate_batches`), each with its own seed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from saliency.base import (
    CONSTANT_RTOL,
    ActivationRecorder,
    SaliencyMethod,
    Targets,
    empty_maps,
    is_int,
    model_images,
    model_in_eval,
    normalize_maps,
    resize,
    resolve_layer,
    resolve_targets,
)
from saliency.gpnn import GPNN


def gpnn_cam_preset(**overrides: object) -> GPNN:
    """GPNN as configured by GPNN-CAM (zero initialisation with noise std 3.0, distance-weighted fold)
    with the exact search, other settings default, ``overrides`` applied (e.g. ``search="faiss"``)."""
    return GPNN(**{"noise_sigma": 3.0, "init": "zeros", "fold": "distance", **overrides})


def ridge_regression(
    features: torch.Tensor, target: torch.Tensor, penalty: float
) -> tuple[torch.Tensor, float]:
    """Ridge with intercept: argmin ||y - b - X w||^2 + penalty ||w||^2 (sklearn ``Ridge``'s objective).

    features (n, C), target (n,) -> (w (C,) float64, intercept). Closed form on centred data in float64:
    the dual ``Xc^T (Xc Xc^T + penalty I)^-1 yc`` when n < C, else the primal normal equations
    ``(Xc^T Xc + penalty I)^-1 Xc^T yc``. A target constant up to :data:`CONSTANT_RTOL` (float32
    round-off, e.g. a bilinearly resized constant gate) gets w = 0: fitting its rounding noise would give
    a map of noise that max-normalisation then stretches to full contrast.
    """
    x = features.double()
    y = target.double()
    x_mean, y_mean = x.mean(0), y.mean()
    xc, yc = x - x_mean, y - y_mean
    n, c = xc.shape
    if yc.abs().max() <= CONSTANT_RTOL * y.abs().max():  # nothing to explain but round-off
        return torch.zeros(c, dtype=torch.float64, device=x.device), float(y_mean)
    if n < c:
        gram = xc @ xc.T
        gram.diagonal().add_(penalty)
        w = xc.T @ torch.linalg.solve(gram, yc)
    else:
        gram = xc.T @ xc
        gram.diagonal().add_(penalty)
        w = torch.linalg.solve(gram, xc.T @ yc)
    return w, float(y_mean - x_mean @ w)


def _standardise(acts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (ddof 0) over batch and positions of (B,C,h,w), shaped (1,C,1,1).

    A constant channel (std 0, or at most :data:`CONSTANT_RTOL` x |mean|: round-off) gets std 1, so its
    rounding noise is not scaled up to unit variance.
    """
    mean = acts.mean(dim=(0, 2, 3), keepdim=True)
    std = acts.std(dim=(0, 2, 3), keepdim=True, correction=0)
    constant = (std == 0) | (std <= CONSTANT_RTOL * mean.abs())
    return mean, torch.where(constant, torch.ones_like(std), std)


def _max_normalise(maps: torch.Tensor) -> torch.Tensor:
    """Divide (B,h,w) maps by their global max (all-zero maps stay zero)."""
    top = maps.max()
    return maps / top if top > 0 else maps


def _gate(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """sigmoid(M_hat - 0.5) of max-normalised maps (B,h,w), resized bilinearly to ``size``."""
    return resize(torch.sigmoid(maps - 0.5)[:, None], size)[:, 0]


class GPNNCAM(SaliencyMethod):
    """GPNN-CAM: attribution from linear models fitted on generated variations of each image.

    :param model: ``nn.Module`` returning logits, or an ART ``PyTorchClassifier``.
    :param target_layers: layer paths or modules, top first (ResNet-50: ``["layer4", "layer3", "layer2"]``).
    :param n_variations: GPNN variations per image (>= 2).
    :param batch_variations: nominal batch size (>= 2); one set of linear models is fitted per batch.
    :param gpnn: the variation generator (None: :func:`gpnn_cam_preset`).
    :param ridge_top: Phase 1 ridge penalty. :param ridge_lower: Phase 2 ridge penalty.
    :param seed: base seed of the GPNN noise (per image and batch seeds derive from it).
    :param verbose: tqdm bar over images x batches.

    ``maps = GPNNCAM(model, ["layer4", "layer3"])(x, targets)``: x (N,C,H,W) in **[0,1]** (GPNN needs
    [0,1] images; an ART classifier's own preprocessing is applied before the model), maps (N,H,W) float32
    in [0,1] on x's device. targets: None (predicted class of the original image), an int or N ints.
    """

    def __init__(
        self,
        model: object,
        target_layers: Sequence[str | nn.Module],
        n_variations: int = 100,
        batch_variations: int = 10,
        gpnn: GPNN | None = None,
        ridge_top: float = 0.01,
        ridge_lower: float = 1e-4,
        seed: int = 0,
        verbose: bool = False,
    ):
        super().__init__(model)
        if isinstance(target_layers, (str, nn.Module)) or len(target_layers) == 0:
            raise ValueError("target_layers must be a non-empty list of layers, top first")
        if not is_int(n_variations) or n_variations < 2:
            raise ValueError(f"n_variations must be an int >= 2, got {n_variations!r}")
        if not is_int(batch_variations) or not 2 <= batch_variations:
            raise ValueError(f"batch_variations must be an int >= 2, got {batch_variations!r}")
        if batch_variations > n_variations:
            raise ValueError(
                f"batch_variations ({batch_variations}) must be <= n_variations ({n_variations})"
            )
        if not (ridge_top > 0 and ridge_lower > 0):
            raise ValueError(f"ridge_top and ridge_lower must be > 0, got {ridge_top!r}, {ridge_lower!r}")
        if gpnn is not None and not isinstance(gpnn, GPNN):
            raise TypeError(f"gpnn must be a saliency.GPNN or None, got {type(gpnn).__name__}")
        resolved = [resolve_layer(self.model, layer) for layer in target_layers]
        self.target_layer_names = [name for name, _ in resolved]
        self.target_layers = [module for _, module in resolved]
        self.gpnn = gpnn if gpnn is not None else gpnn_cam_preset()
        n_variations, batch_variations = int(n_variations), int(batch_variations)
        self.batch_sizes = [
            len(b) for b in np.array_split(np.arange(n_variations), n_variations // batch_variations)
        ]
        self.n_variations = n_variations
        self.ridge_top = ridge_top
        self.ridge_lower = ridge_lower
        self.seed = seed
        self.verbose = verbose

    @classmethod
    def authors(cls, model: object, target_layers: Sequence[str | nn.Module], **kwargs: object) -> GPNNCAM:
        """GPNN-CAM as its authors ran it: 100 variations in batches of 10 from
        :meth:`saliency.GPNN.authors`; ``kwargs`` override the other arguments.

        Example:
            >>> from evaluation.zoo import default_layers, load
            >>> cam = GPNNCAM.authors(load("vgg16_bn"), default_layers("vgg16_bn"))  # features.41/31/21
        """
        settings = {"n_variations": 100, "batch_variations": 10, "gpnn": GPNN.authors(), **kwargs}
        return cls(model, target_layers, **settings)

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One no-grad forward pass: (logits (B,K), activations of every target layer)."""
        with torch.no_grad(), model_in_eval(self.model), ActivationRecorder(self.target_layers) as rec:
            logits = self.model(self.preprocess(x))
        if logits.ndim > 2:
            logits = logits.flatten(2).mean(-1)
        acts = rec.feature_maps(self.target_layer_names)
        return logits, [a.float() for a in acts]

    def fit_and_map(
        self,
        variation_acts: list[torch.Tensor],
        variation_scores: torch.Tensor,
        original_acts: list[torch.Tensor],
    ) -> torch.Tensor:
        """Fit Phase 1 and 2 on one batch of variations and return the fused map of the original image.

        variation_acts: per layer (B,C_l,h_l,w_l); variation_scores (B,) target logits; original_acts:
        per layer (1,C_l,h_l,w_l). Returns (h,w) at the finest layer grid, in [sigmoid(-0.5)^L,
        sigmoid(0.5)^L] for L layers.
        """
        grid = max((a.shape[-2:] for a in original_acts), key=lambda s: s[0] * s[1])
        variation_maps: list[torch.Tensor] = []  # max-normalised maps of the layers above, on the variations
        fused = torch.ones((1, *grid), dtype=torch.float32, device=variation_scores.device)
        for level, (acts, orig) in enumerate(zip(variation_acts, original_acts)):
            mean, std = _standardise(acts)
            feats = (acts - mean) / std  # (B,C,h,w)
            if level == 0:
                w, _ = ridge_regression(feats.sum(dim=(2, 3)), variation_scores, self.ridge_top)
            else:
                size = tuple(acts.shape[-2:])
                target = torch.stack([_gate(m, size) for m in variation_maps]).prod(dim=0)  # (B,h,w)
                samples = feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1])
                w, _ = ridge_regression(samples, target.reshape(-1), self.ridge_lower)
            w = w.to(feats.dtype)
            variation_maps.append(_max_normalise(torch.einsum("bchw,c->bhw", feats, w).relu()))
            orig_map = torch.einsum("bchw,c->bhw", (orig - mean) / std, w).relu()
            fused = fused * _gate(_max_normalise(orig_map), grid)
        return fused[0]

    def __call__(self, x: torch.Tensor, targets: Targets = None) -> torch.Tensor:
        x = self._checked_images(x)
        if x.shape[0] == 0:
            return empty_maps(x)
        maps = torch.zeros((x.shape[0], *x.shape[-2:]), dtype=torch.float32, device=x.device)
        for i, _, batch_map in self._batch_maps(x, targets):
            maps[i] += batch_map
        return normalize_maps(maps / len(self.batch_sizes))

    def batch_maps(self, x: torch.Tensor, targets: Targets = None) -> torch.Tensor:
        """The fused map of each batch of variations, before the mean over batches and normalisation.

        The GPNN-CAM map is ``normalize_maps(batch_maps(x, targets).mean(1))``. Batch b of an image uses
        the same seed whatever ``n_variations``, so when ``n_variations`` is a multiple of
        ``batch_variations`` (every batch of that size) the first k batches of a long run are those of a
        run of k batches: maps of several variation counts come from one run.

        Args:
            x: (N,C,H,W) images in [0,1].
            targets: as for ``__call__``.

        Returns:
            (N, n_batches, H, W) float32, each map in [sigmoid(-0.5)^L, sigmoid(0.5)^L] for L layers.

        Example:
            >>> from saliency.base import normalize_maps
            >>> cam = GPNNCAM(model, ["layer4", "layer3"], n_variations=40)
            >>> per_batch = cam.batch_maps(x)  # (N, 4, H, W)
            >>> map_of_20 = normalize_maps(per_batch[:, :2].mean(1))  # the map of a 20-variation run
        """
        x = self._checked_images(x)
        maps = torch.zeros((x.shape[0], len(self.batch_sizes), *x.shape[-2:]), device=x.device)
        if x.shape[0] == 0:
            return maps
        for i, b, batch_map in self._batch_maps(x, targets):
            maps[i, b] = batch_map
        return maps

    def _checked_images(self, x: torch.Tensor) -> torch.Tensor:
        x = model_images(x, self.model)
        if x.shape[0] == 0:
            return x
        if x.min() < 0 or x.max() > 1:
            raise ValueError("x must lie in [0,1]: GPNN-CAM generates variations of the [0,1] image")
        if min(x.shape[-2:]) < self.gpnn.coarsest:
            raise ValueError(
                f"x is {x.shape[-2]}x{x.shape[-1]}: its short side must be >= the GPNN coarsest size "
                f"({self.gpnn.coarsest}) and patch size ({self.gpnn.patch_size})"
            )
        return x

    def _batch_maps(self, x: torch.Tensor, targets: Targets) -> Iterator[tuple[int, int, torch.Tensor]]:
        """(image index, batch index, fused map resized to x's size) for every batch of every image."""
        logits, original_acts = self._forward(x)
        t = resolve_targets(targets, logits)
        seeds = [  # one GPNN seed per (image, batch), derived from self.seed
            [int(s.generate_state(1)[0]) for s in image_seq.spawn(len(self.batch_sizes))]
            for image_seq in np.random.SeedSequence(self.seed).spawn(x.shape[0])
        ]
        for i in tqdm(range(x.shape[0]), desc="GPNN-CAM", disable=not self.verbose):
            batches = self.gpnn.generate_batches(x[i], self.batch_sizes, seeds[i])
            for b, variations in enumerate(batches):
                var_logits, var_acts = self._forward(variations.to(x.device, x.dtype))
                fused = self.fit_and_map(
                    var_acts, var_logits[:, t[i]].float(), [a[i : i + 1] for a in original_acts]
                )
                yield i, b, resize(fused[None, None], tuple(x.shape[-2:]))[0, 0]
