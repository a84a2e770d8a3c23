"""Weights files for the model zoo: a state_dict saved with ``torch.save`` (or a checkpoint dict holding one)
or a ``.safetensors`` file, read on the CPU; a file that is none of them fails with one line saying what
it is."""

from __future__ import annotations

import codecs
from pathlib import Path

import torch
from torch import nn

#: Bytes read from the start of an unreadable weights file to tell a text file.
_TEXT_PROBE = 4096


def _one_line(err: Exception) -> str:
    """``err``'s message on one line (torch's span several)."""
    return " ".join(str(err).split())


def _is_text(head: bytes) -> bool:
    """True for UTF-8 (ASCII) bytes without NUL; a last character cut by the probe is allowed."""
    try:
        return b"\0" not in head and bool(codecs.getincrementaldecoder("utf-8")().decode(head))
    except UnicodeDecodeError:
        return False


def _unreadable(path: Path, err: Exception) -> ValueError:
    """The error for a weights file that ``torch.load`` / safetensors failed on with ``err``: an empty file,
    a text file, or ``err``'s type and message (never an empty reason)."""
    if path.stat().st_size == 0:
        return ValueError(f"weights file {path} is empty (0 bytes)")
    with path.open("rb") as file:
        if _is_text(file.read(_TEXT_PROBE)):
            return ValueError(
                f"weights file {path} is a text file, not a PyTorch state_dict (.pt/.pth saved with "
                "torch.save) or .safetensors file"
            )
    message = _one_line(err)
    reason = f"{type(err).__name__}: {message}" if message else type(err).__name__
    return ValueError(f"weights file {path} could not be read as a PyTorch state_dict: {reason}")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read the tensors of a weights file.

    Args:
        path (Path): a file saved with ``torch.save`` holding a state_dict, or a checkpoint dict holding
            one under ``"state_dict"`` or ``"model"``; or a ``.safetensors`` file (read by
            ``safetensors.torch.load_file``).

    Returns:
        dict[str, torch.Tensor]: the state_dict, on the CPU.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: the file is empty, a text file, unreadable (with the loader's reason) or holds no
            state_dict.
    """
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(path, device="cpu")
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises many types on foreign bytes (KeyError, RuntimeError, ...)
        raise _unreadable(path, err) from err
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"weights file {path} does not hold a state_dict (a dict of tensors)")
    return state


def load_state_dict(model: nn.Module, path: Path, state: dict[str, torch.Tensor] | None = None) -> None:
    """Load a state_dict into ``model``.

    Args:
        model (nn.Module): the model to load into.
        path (Path): the weights file, read by :func:`read_state_dict` unless ``state`` is given; named in
            errors.
        state (dict[str, torch.Tensor], optional): the state_dict already read from ``path``. Default: None.

    Raises:
        ValueError: the state_dict does not fit the model (missing, unexpected or mis-shaped keys).
    """
    state = read_state_dict(path) if state is None else state
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"weights file {path} does not fit the model: {_one_line(err)}") from err
