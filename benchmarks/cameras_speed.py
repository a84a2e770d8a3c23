"""CAMERAS: batched ``saliency.CAMERAS`` vs a faithful re-statement of the official algorithm.

    python benchmarks/cameras_speed.py [--batch 8] [--size 224] [--resolutions 224 324 424 524] [--device cpu]

Each implementation runs in its own subprocess on resnet18 (weights=None) so that its peak memory is its
own: on CPU the growth of the peak resident set size (``ru_maxrss``) over the size after loading the model
and the images; on CUDA ``torch.cuda.max_memory_allocated``. The maps must agree within 1e-4.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        line = next(row for row in status if row.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def worker(args: argparse.Namespace) -> None:
    import torchvision

    from benchmarks.reference_cameras import reference_cameras
    from saliency import CAMERAS

    torch.set_grad_enabled(True)
    # Exact float32 on GPUs too (cuDNN's default TF32 convolutions would differ by ~1e-2 between batch sizes).
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval().to(device)
    x = torch.rand(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(1)).to(device)
    targets = list(range(args.batch))
    method = CAMERAS(model, "layer4", resolutions=args.resolutions)
    sizes = method.sizes(args.size, args.size)

    def run() -> torch.Tensor:
        if args.worker == "ours":
            return method(x, targets)
        return reference_cameras(model, model.layer4, x, targets, sizes)

    baseline = rss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    maps = run()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base_cuda) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - baseline
    seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    np.save(args.out, maps.cpu().numpy())
    print(json.dumps({"seconds_per_image": statistics.median(seconds) / args.batch, "peak_mib": peak}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[224, 324, 424, 524])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--worker", choices=["ours", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("reference", "ours"):
            out = Path(tmp) / f"{name}.npy"
            command = [sys.executable, __file__, "--worker", name, "--out", str(out)]
            for flag in ("batch", "size", "repeats", "device"):
                command += [f"--{flag}", str(getattr(args, flag))]
            command += ["--resolutions", *map(str, args.resolutions)]
            line = subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()
            results[name] = json.loads(line.splitlines()[-1]) | {"maps": np.load(out)}
    ref, ours = results["reference"], results["ours"]
    diff = float(np.abs(ref["maps"] - ours["maps"]).max())
    print(
        f"CAMERAS resnet18 layer4, {args.size}px, resolutions {args.resolutions}, batch {args.batch}, "
        f"{args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print("| implementation | s / image | peak memory (MiB) |")
    print("|---|---|---|")
    for name, label in (
        ("reference", "official algorithm, one image at a time"),
        ("ours", "saliency.CAMERAS"),
    ):
        print(f"| {label} | {results[name]['seconds_per_image']:.3f} | {results[name]['peak_mib']:.0f} |")
    speedup = ref["seconds_per_image"] / ours["seconds_per_image"]
    memory = ours["peak_mib"] / ref["peak_mib"]
    print(f"speed-up {speedup:.2f}x, memory ratio {memory:.2f}x, max |diff| {diff:.2e}")
    if diff > 1e-4:
        sys.exit("maps differ by more than 1e-4")


if __name__ == "__main__":
    main()
