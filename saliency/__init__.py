"""High-resolution saliency maps: CAMERAS, GPNN-CAM and the CAM baselines they are compared with.

Every method is a callable ``maps = method(x, targets=None)``: x (N,C,H,W) float -> maps (N,H,W) float32
in [0,1] on x's device.
"""

from saliency import masks, plot
from saliency.base import SaliencyMethod
from saliency.cameras import CAMERAS
from saliency.gpnn import GPNN
from saliency.gpnn_cam import GPNNCAM
from saliency.grad_cam import GradCAM
from saliency.grad_cam_plusplus import GradCAMPlusPlus
from saliency.hirescam import HiResCAM
from saliency.layer_cam import LayerCAM

#: CLI / evaluation names of the single-layer methods.
METHODS = {
    "cameras": CAMERAS,
    "gradcam": GradCAM,
    "hirescam": HiResCAM,
    "gradcam++": GradCAMPlusPlus,
    "layercam": LayerCAM,
}

__all__ = [
    "CAMERAS",
    "GPNN",
    "GPNNCAM",
    "METHODS",
    "GradCAM",
    "GradCAMPlusPlus",
    "HiResCAM",
    "LayerCAM",
    "SaliencyMethod",
    "masks",
    "plot",
]
