"""The two ways the focused attacks ask an ART estimator for input gradients: in torch on the model's
device (:class:`TorchGradients`, a PyTorchClassifier with PyTorch-native preprocessing) or through ART's
generic calls with numpy round trips (:class:`ARTGradients`, any classifier with the gradient mixins)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import numpy as np
import torch
from art.config import ART_NUMPY_DTYPE
from art.estimators.classification import PyTorchClassifier

from saliency.base import model_in_eval


def clip_bounds(clip_values: tuple | None, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The estimator's (min, max), scalars or per-channel arrays, as float32 tensors on ``device`` (None: no
    clipping)."""
    if clip_values is None:
        return None
    low, high = (torch.as_tensor(np.asarray(v, dtype=ART_NUMPY_DTYPE), device=device) for v in clip_values)
    return low, high


def is_torch_estimator(estimator: object) -> bool:
    """True for a PyTorchClassifier whose preprocessing is PyTorch-native (the fast path)."""
    return isinstance(estimator, PyTorchClassifier) and estimator.all_framework_preprocessing


@contextmanager
def frozen_eval(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode and ``requires_grad=False`` on the parameters for one attack (only input gradients are
    needed, so autograd neither records nor computes weight gradients); both are restored on exit."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    with model_in_eval(model):
        for param in trainable:
            param.requires_grad_(False)
        try:
            yield
        finally:
            for param in trainable:
                param.requires_grad_(True)


class TorchGradients:
    """Gradients from a PyTorchClassifier's model and preprocessing, all in torch on its device.

    Only the input gradient is computed (no parameter gradients), with the estimator's own loss, so the
    values equal ``estimator.loss_gradient`` / ``class_gradient``.
    """

    def __init__(self, estimator: PyTorchClassifier):
        self.estimator = estimator
        self.device = estimator.device

    def context(self) -> AbstractContextManager:
        return frozen_eval(self.estimator.model)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x_pre, _ = self.estimator._apply_preprocessing(x, y=None, fit=False, no_grad=False)
        return self.estimator.model(x_pre)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self._forward(x)

    def loss_gradient(self, x: torch.Tensor, y: torch.Tensor, per_sample: bool = False) -> torch.Tensor:
        """d loss / dx for one-hot ``y`` (B,K); ``per_sample`` undoes a batch-mean reduction."""
        return self.loss_gradient_and_logits(x, y, per_sample)[0]

    def loss_gradient_and_logits(
        self, x: torch.Tensor, y: torch.Tensor, per_sample: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`loss_gradient` and the logits at ``x`` of the same forward pass (detached)."""
        with torch.enable_grad():
            x_req = x.detach().requires_grad_(True)
            loss_fn = self.estimator._loss
            logits = self._forward(x_req)
            loss = loss_fn(logits, self.estimator.reduce_labels(y))
            if per_sample and getattr(loss_fn, "reduction", None) == "mean":
                loss = loss * x.shape[0]
            (grad,) = torch.autograd.grad(loss, x_req)
        return grad, logits.detach()

    def margin_gradient(self, x: torch.Tensor, add: torch.Tensor, sub: torch.Tensor) -> torch.Tensor:
        """d (z_add - z_sub) / dx per sample, for logit indices ``add``, ``sub`` (B,)."""
        with torch.enable_grad():
            x_req = x.detach().requires_grad_(True)
            z = self._forward(x_req)
            margin = z.gather(1, add[:, None]) - z.gather(1, sub[:, None])
            (grad,) = torch.autograd.grad(margin.sum(), x_req)
        return grad


class ARTGradients:
    """Gradients through ART's generic calls (``loss_gradient``, ``class_gradient``, ``predict``) with numpy
    round trips; works for any ART classifier with those mixins. Tensors stay on the CPU."""

    def __init__(self, estimator: object, batch_size: int):
        self.estimator = estimator
        self.batch_size = batch_size
        self.device = torch.device("cpu")

    def context(self) -> AbstractContextManager:
        return nullcontext()

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        out = self.estimator.predict(x.numpy().astype(ART_NUMPY_DTYPE), batch_size=self.batch_size)
        return torch.from_numpy(np.asarray(out, dtype=ART_NUMPY_DTYPE))

    def loss_gradient(self, x: torch.Tensor, y: torch.Tensor, per_sample: bool = False) -> torch.Tensor:
        """The estimator's loss gradient; ``per_sample``: the gradient of each sample's own loss, i.e. a batch
        mean is undone (scaled by B when the loss, e.g. a PyTorchClassifier's ``loss``, says ``reduction=
        "mean"``; one sample per call when the reduction is unknown)."""
        x_np, y_np = x.numpy(), y.numpy()
        reduction = getattr(getattr(self.estimator, "loss", None), "reduction", None)
        if per_sample and reduction not in ("mean", "sum"):
            grad = np.concatenate(
                [self.estimator.loss_gradient(x_np[i : i + 1], y_np[i : i + 1]) for i in range(len(x_np))]
            )
        else:
            grad = self.estimator.loss_gradient(x_np, y_np)
            if per_sample and reduction == "mean":
                grad = grad * len(x_np)
        return torch.from_numpy(np.asarray(grad, dtype=ART_NUMPY_DTYPE).reshape(x.shape))

    def loss_gradient_and_logits(
        self, x: torch.Tensor, y: torch.Tensor, per_sample: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`loss_gradient` and the estimator's predictions at ``x`` (one more call)."""
        return self.loss_gradient(x, y, per_sample), self.logits(x)

    def margin_gradient(self, x: torch.Tensor, add: torch.Tensor, sub: torch.Tensor) -> torch.Tensor:
        x_np = x.numpy().astype(ART_NUMPY_DTYPE)
        grad = self.estimator.class_gradient(x_np, label=add.numpy())
        grad = grad - self.estimator.class_gradient(x_np, label=sub.numpy())
        return torch.from_numpy(np.asarray(grad, dtype=ART_NUMPY_DTYPE).reshape(x.shape))
