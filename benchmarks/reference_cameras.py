"""A faithful re-statement of the official CAMERAS algorithm (VisMIL/CAMERAS, ``CAMERAS.py``), used as the
reference for tests and for ``benchmarks/cameras_speed.py``.

As the reference code does: one image at a time; the input up-sampled bicubically to every resolution;
every resolution's activations and logit gradients kept (captured with hooks); then each is up-sampled
bilinearly to the input size, averaged over the accepted resolutions, multiplied, summed over channels,
ReLU, min-max. Ours only: a full backward hook instead of the deprecated module backward hook, the class
given explicitly, and the rule of ``saliency.CAMERAS`` for accepting resolutions (the paper's: a resolution
counts if it predicts K(I), the class predicted on the image itself, whatever the target class).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def reference_cameras_single(
    model: nn.Module,
    layer: nn.Module,
    image: torch.Tensor,
    target: int,
    sizes: list[tuple[int, int]],
    same_label: bool = True,
) -> torch.Tensor:
    """image (1,C,H,W), sizes [(h,w), ...] -> map (H,W) in [0,1]."""
    with torch.no_grad():
        predicted = int(model(image).argmax())  # K(I)
    saved: dict[str, list[torch.Tensor]] = {"acts": [], "grads": []}
    forward = layer.register_forward_hook(lambda m, i, o: saved["acts"].append(o.detach().clone()))
    backward = layer.register_full_backward_hook(
        lambda m, gi, go: saved["grads"].append(go[0].detach().clone())
    )
    height, width = image.shape[-2:]
    accepted = []
    try:
        for size in sizes:
            scaled = (
                image
                if size == (height, width)
                else F.interpolate(image, size=size, mode="bicubic", align_corners=False)
            )
            scaled = scaled.detach().requires_grad_(True)
            logits = model(scaled)
            one_hot = torch.zeros_like(logits)
            one_hot[0, target] = 1.0
            model.zero_grad()
            logits.backward(gradient=one_hot)
            is_input = size == (height, width)
            accepted.append(is_input or not same_label or int(logits.argmax()) == predicted)
    finally:
        forward.remove()
        backward.remove()
    acts = [F.interpolate(a, (height, width), mode="bilinear", align_corners=False) for a in saved["acts"]]
    grads = [F.interpolate(g, (height, width), mode="bilinear", align_corners=False) for g in saved["grads"]]
    keep = [i for i, ok in enumerate(accepted) if ok]
    mean_act = sum(acts[i] for i in keep) / max(len(keep), 1)
    mean_grad = sum(grads[i] for i in keep) / max(len(keep), 1)
    cam = F.relu((mean_act * mean_grad).sum(dim=1))[0]
    cam = cam - cam.min()
    return cam / cam.max() if cam.max() > 0 else cam


def reference_cameras(
    model: nn.Module,
    layer: nn.Module,
    images: torch.Tensor,
    targets: list[int],
    sizes: list[tuple[int, int]],
    same_label: bool = True,
) -> torch.Tensor:
    """One image at a time, as the official code: images (N,C,H,W) -> maps (N,H,W)."""
    return torch.stack(
        [
            reference_cameras_single(model, layer, images[i : i + 1], targets[i], sizes, same_label)
            for i in range(images.shape[0])
        ]
    )
