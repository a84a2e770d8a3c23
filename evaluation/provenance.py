"""What produced a run's numbers: package and library versions, git commit, device, threads, wall time."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: Distributions whose versions a run records.
LIBRARIES = ("focused-attacks", "torch", "torchvision", "adversarial-robustness-toolbox", "numpy", "timm")


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    """The commit of the checkout this package runs from (with ``-dirty`` for local changes), or None
    when it is not a git checkout (an installed wheel) or git is missing."""
    root = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=40"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(
    device: Any = None, layers: Sequence[str] | None = None, seconds: float | None = None
) -> dict[str, Any]:
    """A JSON-ready record of what produced a run.

    Args:
        device: the device the run computed on (a ``torch.device`` or its name); None: the CPU.
        layers: the target layers actually used.
        seconds: the run's wall time.

    Returns:
        ``{"versions": {distribution: version}, "git_commit", "python", "platform", "device",
        "device_name", "cpu", "threads", "layers", "seconds"}``.

    Example:
        >>> provenance("cpu", ["bn2"], 12.5)["versions"]["torch"]
    """
    import torch

    device = torch.device(device or "cpu")
    on_cuda = device.type == "cuda" and torch.cuda.is_available()
    return {
        "versions": {name: _version(name) for name in LIBRARIES},
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if on_cuda else _cpu_name(),
        "cpu": _cpu_name(),
        "threads": torch.get_num_threads(),
        "layers": None if layers is None else list(layers),
        "seconds": None if seconds is None else round(float(seconds), 1),
    }


def provenance_markdown(record: dict[str, Any]) -> str:
    """A short Markdown section of :func:`provenance`'s record."""
    versions = ", ".join(f"{k} {v}" for k, v in record["versions"].items() if v)
    lines = [
        "## Provenance\n",
        f"* versions: {versions}; Python {record['python']}",
        f"* git commit: {record['git_commit'] or 'unknown (not a git checkout)'}",
        f"* device: {record['device']} ({record['device_name']}), {record['threads']} threads",
        f"* target layers: {', '.join(record['layers']) if record['layers'] else 'none'}",
        f"* wall time of the last run: {record['seconds']} s" if record["seconds"] is not None else "",
    ]
    return "\n".join(line for line in lines if line) + "\n"
