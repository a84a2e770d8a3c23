"""GPNN's image pyramid and the resizing between its levels.

Two pyramids (:data:`PYRAMIDS`), both with ``N = ceil(log(min(H, W) / coarsest) / log r)`` levels (10 for
224 px; a short side below ``coarsest * r`` gives one level, the input itself):

* ``"bilinear"`` (the paper's re-implementation): the input and its antialiased bilinear down-sizings to
  ``round(H / r**n), round(W / r**n)`` for n < N-1, then the coarsest level with a short side of exactly
  ``coarsest`` pixels (aspect ratio kept).
* ``"pyrdown"`` (the GPNN-CAM authors' fork): level n < N-1 is the input blurred once by the 5 x 5
  binomial kernel (reflect padding) and resized bilinearly (corners aligned) to
  ``floor(H / r**n), floor(W / r**n)``, i.e. a Gaussian pyramid step by the factor r**n straight from the
  input; the coarsest level is level N-2 resized by nearest neighbour to ``coarsest x coarsest`` (square).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: Pyramid kinds and up-sampling modes between levels.
PYRAMIDS = ("bilinear", "pyrdown")
UPSAMPLING = ("bilinear", "nearest")
#: The 1-D binomial kernel of the 5 x 5 Gaussian pyramid filter.
BINOMIAL_5 = (1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16)


def pyramid_sizes(
    height: int, width: int, coarsest: int, scale_factor: float, pyramid: str = "bilinear"
) -> list[tuple[int, int]]:
    """Level sizes from finest (the input) to coarsest: N levels (see the module docstring)."""
    short = min(height, width)
    n_levels = max(1, math.ceil(math.log(short / coarsest) / math.log(scale_factor) - 1e-9))
    if n_levels == 1:
        return [(height, width)]
    if pyramid == "pyrdown":
        sizes = [(int(height / scale_factor**n), int(width / scale_factor**n)) for n in range(n_levels - 1)]
        return [*sizes, (coarsest, coarsest)]
    sizes = [(round(height / scale_factor**n), round(width / scale_factor**n)) for n in range(n_levels - 1)]
    scale = coarsest / short
    return [*sizes, (max(coarsest, round(height * scale)), max(coarsest, round(width * scale)))]


def resize(images: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """(B,C,h,w) -> (B,C,*size): bilinear (align_corners=False) or nearest; the input itself if same size."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    if mode == "nearest":
        return F.interpolate(images, size=size, mode="nearest")
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False)


def pyrdown(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """5 x 5 binomial blur (reflect padding), then a bilinear resize with aligned corners to ``size``."""
    kernel_1d = torch.tensor(BINOMIAL_5, dtype=images.dtype, device=images.device)
    channels = images.shape[1]
    kernel = (kernel_1d[:, None] * kernel_1d[None, :]).expand(channels, 1, 5, 5)
    blurred = F.conv2d(F.pad(images, (2, 2, 2, 2), mode="reflect"), kernel, groups=channels)
    return F.interpolate(blurred, size=size, mode="bilinear", align_corners=True)


def build_pyramid(source: torch.Tensor, sizes: list[tuple[int, int]], pyramid: str) -> list[torch.Tensor]:
    """The levels of ``source`` (1,C,H,W) at ``sizes`` (from :func:`pyramid_sizes`), finest first."""
    if pyramid == "pyrdown" and len(sizes) > 1:
        levels = [source] + [pyrdown(source, size) for size in sizes[1:-1]]
        return [*levels, resize(levels[-1], sizes[-1], "nearest")]
    return [
        source
        if tuple(size) == tuple(source.shape[-2:])
        else F.interpolate(source, size=size, mode="bilinear", align_corners=False, antialias=True)
        for size in sizes
    ]
