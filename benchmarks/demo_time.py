"""Where ``focused-attacks demo`` spends its time: the whole run, and the saliency maps by method and
image size.

It runs the demo as the command line does (``--out`` and every other argument passed on), with each
saliency-map computation of the attack runner and of the paper protocol timed, and prints the wall
time, the seconds and images per ``method@size`` and the rest (attacks, model loading, reports) as JSON.

Example: ``python benchmarks/demo_time.py --out runs/demo_time`` or, with fewer GPNN-CAM variations,
``python benchmarks/demo_time.py --out runs/demo_time8 --gpnn-variations 8``.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from unittest.mock import patch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the project importable


def _timed(compute_maps: Callable[..., Any], seconds: defaultdict, images: Counter) -> Callable[..., Any]:
    """``compute_maps`` that adds its wall time and image count under ``method@size``."""

    def timed(method: Any, classifier: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        maps = compute_maps(method, classifier, x, *args, **kwargs)
        key = f"{method}@{x.shape[-1]}"
        seconds[key] += time.perf_counter() - start
        images[key] += len(x)
        return maps

    return timed


def main(argv: Sequence[str] | None = None) -> int:
    from evaluation import experiment, focusers, paper_protocol
    from evaluation.cli import main as cli

    seconds: defaultdict = defaultdict(float)
    images: Counter = Counter()
    timed = _timed(focusers.compute_maps, seconds, images)
    start = time.perf_counter()
    with (  # the demo's two callers
        patch.object(experiment, "compute_maps", timed),
        patch.object(paper_protocol, "compute_maps", timed),
    ):
        status = cli(["demo", "--quiet", *(sys.argv[1:] if argv is None else argv)])
    total = time.perf_counter() - start
    maps = {key: {"seconds": round(s, 1), "images": images[key]} for key, s in sorted(seconds.items())}
    rest = total - sum(seconds.values())
    print(json.dumps({"status": status, "seconds": round(total, 1), "maps": maps, "rest": round(rest, 1)}))
    return status


if __name__ == "__main__":
    raise SystemExit(main())
