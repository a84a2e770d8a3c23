"""CAMERAS (Jalwana, Akhtar, Bennamoun, Mian, CVPR 2021): multi-scale accumulation of activations and
per-pixel gradients, fused at the input resolution.

Follows the official PyTorch code where paper and code differ (``docs/algorithms.md``, CAMERAS):
bicubic up-sampling of the input, bilinear resize of activations and gradients to the input size,
gradients of the class *logit*. Ours by default: the paper's prediction-consistency gate (a resolution
counts only if it predicts K(I), the class predicted at the input resolution) applies whether or not a
class is given; the official code gates only when none is given (``same_label="official"`` reproduces
that). The min-max division is guarded.
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
    class_scores,
    empty_maps,
    gradients_of,
    is_int,
    model_images,
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
#: The values of ``CAMERAS(same_label=...)`` (``True`` is an alias of ``"prediction"``).
SAME_LABEL_VALUES = ("prediction", "target", "official", False, True)


def default_resolutions(short_side: int) -> list[int]:
    """The official schedule scaled to an input whose short side is ``short_side`` pixels."""
    return [round(short_side * r / REFERENCE_SIZE) for r in REFERENCE_RESOLUTIONS]


def check_same_label(same_label: str | bool) -> str | bool:
    """``same_label`` as stored: ``"prediction"``, ``"target"``, ``"official"`` or ``False``."""
    if same_label is True:  # an alias of the paper's gate
        return "prediction"
    if same_label is False or (isinstance(same_label, str) and same_label in SAME_LABEL_VALUES):
        return same_label
    raise ValueError(f"same_label must be one of {SAME_LABEL_VALUES}, got {same_label!r}")


class CAMERAS(SaliencyMethod):
    """High-resolution CAM from several up-sampled copies of the input.

    All N images go through each resolution together; the forward pass runs without a graph up to the
    target layer, so the backward pass starts at the logits and stops at the layer. Memory: each
    resolution's activations and gradients are kept at the smaller of the layer's and the input's
    resolution (never as running sums at input size, which for ResNet ``layer4`` would be 2 x 512 x H x W
    floats per image). They are fused at the input size either in factored form (late, small layers:
    no channel is ever up-sampled) or a chunk of channels at a time.

    Args:
        model (nn.Module or PyTorchClassifier): a module returning logits, or an ART ``PyTorchClassifier``.
        target_layer (str or nn.Module): module path (``"layer4"``) or module.
        resolutions (sequence of int, optional): short-side sizes in pixels to up-sample the input to
            (aspect ratio kept). ``None`` scales the official 224..924 schedule to the input (1x .. ~4.1x).
            Default: ``None``.
        same_label (str or bool, optional): which resolutions count, per image:

            - ``"prediction"``: those whose top-1 prediction equals K(I), the class predicted at the input
              resolution, whatever target class is given (the paper's Algorithm 1). The input resolution,
              when listed, always counts. ``True`` is an alias.
            - ``"target"``: those whose top-1 prediction equals the image's target class (the input
              resolution included: it counts only if K(I) is the target). With ``targets=None`` the target
              is K(I), so this equals ``"prediction"``.
            - ``"official"``: the official PyTorch code (VisMIL/CAMERAS ``CAMERAS.py``), which keeps a scale
              if it predicts the first scale's class or ``classOfInterest`` and, when ``classOfInterest``
              is given, stores that class for every scale: no gate when ``targets`` is given (not
              ``None``), ``"prediction"`` when ``targets=None``. Its ``demo.py`` passes classes 243 and
              281 to a ResNet-18, so ``"official"`` (equivalently ``False``) reproduces the demo's maps;
              ``"prediction"`` matches them only where every scale predicts the 224 px top-1 class.
            - ``False``: no gate, every listed resolution counts.

            An image that no listed resolution keeps gets a zero map and a warning. Default:
            ``"prediction"``.

    Returns:
        ``CAMERAS(...)(x, targets)`` returns maps (N,H,W) float32 in [0,1] for images x (N,C,H,W) float;
        ``targets`` is ``None`` (each image's predicted class), one class for every image, or N classes.

    Example::

        >>> cameras = CAMERAS(model, "layer4", same_label="official")
        >>> maps = cameras(x, targets=243)  # the official demo's setting: every scale counts
    """

    def __init__(
        self,
        model: object,
        target_layer: str | nn.Module,
        resolutions: Sequence[int] | None = None,
        same_label: str | bool = "prediction",
    ):
        super().__init__(model)
        self.target_layer_name, self.target_layer = resolve_layer(self.model, target_layer)
        if resolutions is not None:
            resolutions = list(resolutions)
            if not resolutions:
                raise ValueError("resolutions must be a non-empty list of sizes in pixels, got []")
            if any(not is_int(r) or r < 1 for r in resolutions):
                raise ValueError(f"resolutions must be positive ints (pixels), got {resolutions}")
        self.resolutions = resolutions
        self.same_label = check_same_label(same_label)

    def sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """(H, W) of every resolution for an input of ``height`` x ``width`` pixels."""
        short = min(height, width)
        resolutions = self.resolutions if self.resolutions is not None else default_resolutions(short)
        return [(round(height * r / short), round(width * r / short)) for r in resolutions]

    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(self.preprocess(x)).argmax(dim=1)

    def __call__(self, x: torch.Tensor, targets: Targets = None) -> torch.Tensor:
        x = model_images(x, self.model).detach()
        if x.shape[0] == 0:
            return empty_maps(x)
        size = (x.shape[2], x.shape[3])
        stored: list[tuple[torch.Tensor, torch.Tensor]] = []  # (A, G) per resolution, masked by `keep`
        counts = torch.zeros(x.shape[0], device=x.device)
        sizes = self.sizes(*size)
        t = None  # the target classes
        gate = self._gate(targets)
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
                if gate is not None:  # the class each image needs at this resolution: K(I) or its target
                    label = predicted if is_input else logits.argmax(dim=1)
                    keep = (label == (predicted if gate == "prediction" else t)).float()
                counts += keep
                stored.append(
                    (self._compact(activations.detach(), keep, size), self._compact(grads, keep, size))
                )
                del rec, logits, grads, activations
        if (counts == 0).any():
            _warn_unkept(torch.nonzero(counts == 0).flatten().tolist(), gate, sizes, size)
        return normalize_maps(self._fuse(stored, counts, size))

    def _gate(self, targets: Targets) -> str | None:
        """The rule of this call: ``"prediction"``, ``"target"`` or ``None`` (every resolution counts)."""
        if self.same_label == "official":  # the official code gates only when no class is given
            return "prediction" if targets is None else None
        return self.same_label or None

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


def _warn_unkept(unkept: list[int], gate: str, sizes: list[tuple[int, int]], size: tuple[int, int]) -> None:
    """Warn that images ``unkept`` have all-zero maps: none of the resolutions ``sizes`` passed ``gate``."""
    if gate == "prediction":
        reason = "keep their predicted class"
        remedy = f"list the input size {size[0]}x{size[1]}, which always counts, or set same_label=False"
    else:
        reason = "predict their target class"
        remedy = 'set same_label="prediction" or False'
    warnings.warn(
        f"CAMERAS: images {unkept} {reason} at none of the resolutions {sizes}; their maps are all zero "
        f"({remedy})",
        stacklevel=3,
    )


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
