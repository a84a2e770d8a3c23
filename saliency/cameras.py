"""CAMERAS (Jalwana, Akhtar, Bennamoun, Mian, CVPR 2021): multi-scale accumulation of activations and
per-pixel gradients, fused at the input resolution.

Follows the official PyTorch code where paper and code differ (reference/cameras_eval.md, 1.4):
bicubic up-sampling of the input, bilinear resize of activations and gradients to the input size,
gradients of the class *logit*. Ours: the paper's prediction-consistency gate (``same_label``: a
resolution counts only if it predicts K(I), the class predicted at the input resolution) applies whether
or not a class is given (the official code gates only when none is given), and the min-max division is
guarded.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from saliency.base import (
    LayerGradients,
    SaliencyMethod,
    Targets,
    check_images,
    class_scores,
    gradients_of,
    model_in_eval,
    normalize_maps,
    resize,
    resolve_layer,
    resolve_targets,
)

#: The official default schedule for a 224 input: 224, 324, ..., 924 (1x to ~4.1x).
REFERENCE_SIZE = 224
REFERENCE_RESOLUTIONS = tuple(range(224, 1000, 100))
#: Floats per (N, chunk, H, W) tensor when fusing at the input size (64 MiB in float32).
_FUSE_BUDGET = 1 << 24


def default_resolutions(short_side: int) -> list[int]:
    """The official schedule scaled to an input whose short side is ``short_side`` pixels."""
    return [round(short_side * r / REFERENCE_SIZE) for r in REFERENCE_RESOLUTIONS]


class CAMERAS(SaliencyMethod):
    """High-resolution CAM from several up-sampled copies of the input.

    :param model: ``nn.Module`` returning logits, or an ART ``PyTorchClassifier``.
    :param target_layer: module path (``"layer4"``) or module.
    :param resolutions: short-side sizes in pixels to up-sample the input to (aspect ratio kept);
        ``None`` scales the official 224..924 schedule to the input (1x .. ~4.1x).
    :param same_label: keep only resolutions whose top-1 prediction equals the prediction at the input
        resolution (the paper's gate), also when another target class is given; the input resolution,
        when listed, always counts (an image that no listed resolution keeps gets a zero map and a
        warning).

    ``maps = CAMERAS(model, "layer4")(x, targets)``: x (N,C,H,W) float, maps (N,H,W) float32 in [0,1].
    All N images go through each resolution together; the forward pass runs without a graph up to the
    target layer, so the backward pass starts at the logits and stops at the layer. Memory: each
    resolution's activations and gradients are kept at the smaller of the layer's and the input's
    resolution (never as running sums at input size, which for ResNet ``layer4`` would be 2 x 512 x H x W
    floats per image). They are fused at the input size either in factored form (late, small layers:
    no channel is ever up-sampled) or a chunk of channels at a time.
    """

    def __init__(
        self,
        model: object,
        target_layer: str | nn.Module,
        resolutions: Sequence[int] | None = None,
        same_label: bool = True,
    ):
        super().__init__(model)
        self.target_layer_name, self.target_layer = resolve_layer(self.model, target_layer)
        if resolutions is not None:
            resolutions = list(resolutions)
            if not resolutions:
                raise ValueError("resolutions must be a non-empty list of sizes in pixels, got []")
            if any(not isinstance(r, int) or isinstance(r, bool) or r < 1 for r in resolutions):
                raise ValueError(f"resolutions must be positive ints (pixels), got {resolutions}")
        self.resolutions = resolutions
        self.same_label = bool(same_label)

    def sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """(H, W) of every resolution for an input of ``height`` x ``width`` pixels."""
        short = min(height, width)
        resolutions = self.resolutions if self.resolutions is not None else default_resolutions(short)
        return [(round(height * r / short), round(width * r / short)) for r in resolutions]

    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(self.preprocess(x)).argmax(dim=1)

    def __call__(self, x: torch.Tensor, targets: Targets = None) -> torch.Tensor:
        x = check_images(x).detach()
        size = (x.shape[2], x.shape[3])
        stored: list[tuple[torch.Tensor, torch.Tensor]] = []  # (A, G) per resolution, masked by `keep`
        counts = torch.zeros(x.shape[0], device=x.device)
        sizes = self.sizes(*size)
        t = None  # the target classes
        with model_in_eval(self.model):
            # K(I), the classes predicted at the input resolution: from the first pass when that is the
            # input resolution, else from a pass of its own (outside the hooks of the recorded passes)
            predicted = None if sizes[0] == size else self._predict(x)
            for resolution in sizes:
                is_input = resolution == size
                with LayerGradients([self.target_layer]) as rec:
                    with torch.no_grad():
                        x_scaled = x if is_input else resize(x, resolution, mode="bicubic")
                        logits = self.model(self.preprocess(x_scaled))
                    if predicted is None:  # the first pass, at the input resolution
                        predicted = logits.argmax(dim=1)
                    if t is None:  # the class: given, else K(I)
                        t = resolve_targets(targets if targets is not None else predicted, logits)
                    (activations,) = rec.feature_maps([self.target_layer_name])
                    (grads,) = gradients_of(class_scores(logits, t), activations)
                keep = torch.ones_like(counts)
                if self.same_label and not is_input:
                    keep = (logits.argmax(dim=1) == predicted).float()
                counts += keep
                stored.append(
                    (self._compact(activations.detach(), keep, size), self._compact(grads, keep, size))
                )
                del rec, logits, grads, activations
        if (counts == 0).any():
            unkept = torch.nonzero(counts == 0).flatten().tolist()
            warnings.warn(
                f"CAMERAS: images {unkept} keep their predicted class at "
                f"none of the resolutions {sizes}; their maps are all zero (list the input size "
                f"{size[0]}x{size[1]}, which always counts, or set same_label=False)",
                stacklevel=2,
            )
        return normalize_maps(self._fuse(stored, counts, size))

    @staticmethod
    def _compact(t: torch.Tensor, keep: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Zero the rejected images and store at the smaller of the layer's and the input's resolution."""
        t = t * keep[:, None, None, None]
        return resize(t, size) if t.shape[2] * t.shape[3] > size[0] * size[1] else t

    @staticmethod
    def _fuse(stored: list[tuple[torch.Tensor, torch.Tensor]], counts: torch.Tensor, size: tuple[int, int]):
        """ReLU(sum_k mean_r(up(A_r,k)) * mean_r(up(G_r,k))) at the input size (N,H,W)."""
        rows = sum(a.shape[2] for a, _ in stored)
        if rows < min(size):
            cam = _fuse_factored(stored, size)
        else:
            cam = _fuse_chunked(stored, size)
        return torch.relu(cam / counts.clamp(min=1)[:, None, None] ** 2)


def interpolation_matrix(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    """(n_out, n_in) weights of 1-D bilinear resizing with align_corners=False, as ``F.interpolate``."""
    eye = torch.eye(n_in, device=device)[None, None]
    return F.interpolate(eye, size=(n_out, n_in), mode="bilinear", align_corners=False)[0, 0]


def _fuse_chunked(stored: list[tuple[torch.Tensor, torch.Tensor]], size: tuple[int, int]) -> torch.Tensor:
    """sum_k (sum_r up(A_r,k)) * (sum_r up(G_r,k)), a chunk of channels at a time, so that only
    (N, chunk, H, W) tensors are ever materialised at the input size."""
    n, channels = stored[0][0].shape[:2]
    chunk = max(1, _FUSE_BUDGET // (n * size[0] * size[1]))
    cam = torch.zeros(n, *size, device=stored[0][0].device)
    for k in range(0, channels, chunk):
        sum_a = sum(resize(a[:, k : k + chunk], size) for a, _ in stored)
        sum_g = sum(resize(g[:, k : k + chunk], size) for _, g in stored)
        cam += (sum_a * sum_g).sum(dim=1)
    return cam


def _fuse_factored(stored: list[tuple[torch.Tensor, torch.Tensor]], size: tuple[int, int]) -> torch.Tensor:
    """The same sum without up-sampling any channel to the input size, for late (small) layers.

    Bilinear resizing is separable, up(A_r) = Ry_r A_r Rx_r^T. Stacking the resolutions' rows, the summed
    activations are Ry B with Ry = [Ry_1 .. Ry_R] (H,K) and B = [A_1 Rx_1^T; ..; A_R Rx_R^T] (K,W), likewise
    Ry D for the gradients, so sum_k (Ry B_k)(Ry D_k) at (y,x) = sum_ab Ry[y,a] Ry[y,b] E[x,a,b] with
    E[x,a,b] = sum_k B_k[a,x] D_k[b,x]: O(N W K^2 C) work instead of O(N C H W R); used when K < min(H,W).
    """
    height, width = size
    device = stored[0][0].device
    ry = torch.cat([interpolation_matrix(a.shape[2], height, device) for a, _ in stored], dim=1)
    rx = [interpolation_matrix(a.shape[3], width, device).T for a, _ in stored]
    cams = []
    for i in range(stored[0][0].shape[0]):  # one image at a time keeps the (W,K,C) factors small
        b = torch.cat([a[i] @ m for (a, _), m in zip(stored, rx)], dim=1).permute(2, 1, 0)  # (W,K,C)
        d = torch.cat([g[i] @ m for (_, g), m in zip(stored, rx)], dim=1).permute(2, 0, 1)  # (W,C,K)
        e = b @ d  # (W,K,K)
        cams.append(((ry @ e) * ry).sum(dim=-1).T)  # (H,W): sum_ab Ry[y,a] E[x,a,b] Ry[y,b]
    return torch.stack(cams)
