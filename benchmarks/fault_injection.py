"""Kill a small ``focused-attacks evaluate`` run with SIGKILL at random moments, resume it each time, and
compare its final records with an uninterrupted run's.

    python benchmarks/fault_injection.py --kills 20
    python benchmarks/fault_injection.py --kills 10 --delay 8 12 --methods gpnn-cam   # kills during the maps

Each attempt restarts the same command into the same folder and kills it after a delay drawn uniformly from
``--delay`` seconds (start-up included), until ``--kills`` kills have landed; then the run is let finish.
Prints, per kill, the delay and how many records the folder held after it; at the end whether
``records.jsonl`` is byte-identical to the uninterrupted run's. Exit code 1 when it is not, or when the run
did not finish. Everything is written under ``--out`` (default: a temporary folder, deleted).
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def evaluate_command(out: Path, args: argparse.Namespace) -> list[str]:
    """The ``evaluate`` command line of the experiment, into ``out``."""
    return [
        sys.executable,
        "-m",
        "evaluation.cli",
        "evaluate",
        "--n",
        str(args.n),
        "--batch-size",
        str(args.batch_size),
        "--attacks",
        args.attacks,
        "--methods",
        args.methods,
        "--areas",
        "0.1",
        "--quiet",
        "--out",
        str(out),
    ]


def count_records(out: Path) -> int:
    """Complete lines of the folder's records (a line cut by a kill is not counted)."""
    path = out / "records.jsonl"
    return path.read_bytes().count(b"\n") if path.exists() else 0


def kill_loop(out: Path, args: argparse.Namespace, rng: random.Random) -> tuple[int, bool]:
    """Start the run, kill it after a random delay, repeat until ``args.kills`` kills landed; then let it
    finish. Returns ``(kills, finished)``."""
    kills = 0
    for _ in range(args.max_attempts):
        delay = rng.uniform(*args.delay) if kills < args.kills else None
        proc = subprocess.Popen(
            evaluate_command(out, args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            kills += 1
            print(f"kill {kills:3d} after {delay:5.1f} s: {count_records(out)} records", flush=True)
            continue
        if proc.returncode != 0:
            print(proc.stderr.read().decode(), file=sys.stderr)
        return kills, proc.returncode == 0
    return kills, False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="kills to land before the run may finish")
    parser.add_argument("--delay", type=float, nargs=2, default=(4.0, 12.0), help="kill delay range, seconds")
    parser.add_argument("--max-attempts", type=int, default=200)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--attacks", default="pgd,fgsm")
    parser.add_argument("--methods", default="gradcam,cameras,random")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill delays")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        start = time.perf_counter()
        subprocess.run(evaluate_command(root / "reference", args), check=True, stdout=subprocess.DEVNULL)
        print(
            f"uninterrupted run: {time.perf_counter() - start:.1f} s, "
            f"{count_records(root / 'reference')} records"
        )
        kills, finished = kill_loop(root / "killed", args, random.Random(args.seed))
        records = [root / folder / "records.jsonl" for folder in ("killed", "reference")]
        same = finished and records[0].read_bytes() == records[1].read_bytes()
        print(
            f"{kills} kills, finished: {finished}, "
            f"records.jsonl byte-identical to the uninterrupted run: {same}"
        )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
