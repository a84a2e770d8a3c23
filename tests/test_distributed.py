"""Sharding helpers, and a 2-process gloo run whose merged records equal a single-process run."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from evaluation.distributed import init_distributed, shard, world_from_env


@given(st.integers(0, 40), st.integers(1, 6))
def test_shards_are_disjoint_and_cover_everything(n, world_size):
    items = list(range(n))
    shards = [shard(items, r, world_size) for r in range(world_size)]
    assert sorted(i for s in shards for i in s) == items
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_shard_rejects_bad_rank():
    with pytest.raises(ValueError, match="rank"):
        shard([1, 2], 2, 2)


def test_world_from_env(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert world_from_env() == (0, 1)
    ctx = init_distributed()
    assert not ctx.is_distributed and ctx.is_main
    ctx.barrier()  # a no-op for one process
    assert ctx.all_ok(True) and not ctx.all_ok(False)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert world_from_env() == (1, 3)
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(ValueError, match="RANK"):
        world_from_env()
    monkeypatch.setenv("WORLD_SIZE", "x")
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        world_from_env()


@pytest.mark.parametrize("world_size", [2])
def test_two_gloo_processes_merge_to_the_single_process_records(tmp_path, world_size):
    """``torchrun --nproc-per-node 2`` of the CLI == one process: same records, rank files merged away."""
    import json
    import os
    import subprocess
    import sys

    args = ["evaluate", "--n", "6", "--batch-size", "2", "--attacks", "fgsm", "--methods", "gradcam,random"]
    args += ["--areas", "0.1", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    single, multi = tmp_path / "single", tmp_path / "multi"
    cli = [sys.executable, "-m", "evaluation.cli"]
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world_size}"]
    subprocess.run([*cli, *args, "--out", str(single)], env=env, check=True, capture_output=True, timeout=120)
    # Rank 0 starts late, as a slow disk or data loader makes it: the other rank must not write records
    # before rank 0 has pinned the folder (it used to, and rank 0 then refused its own fresh run).
    late_rank0 = tmp_path / "late_rank0.py"
    late_rank0.write_text(
        "import os, sys, time\n"
        "import evaluation.loading as loading\n"
        "from evaluation.cli import main\n"
        "load = loading.load_dataset\n"
        "def late(*args, **kwargs):\n"
        "    if os.environ['RANK'] == '0':\n"
        "        time.sleep(6)\n"
        "    return load(*args, **kwargs)\n"
        "loading.load_dataset = late\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    done = subprocess.run(
        # "--" stops torchrun's own option parsing (its --nnodes etc. would make our --n ambiguous).
        [*run, str(late_rank0), "--", *args, "--out", str(multi)],
        env=env,
        capture_output=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert "18 records (18 computed now)" in done.stdout.decode()  # counted over both ranks

    def lines(out):
        return [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]

    assert len(lines(single)) == 6 * 3
    assert lines(multi) == lines(single)
    assert not list(multi.glob("records.rank*.jsonl"))
    assert (multi / "report.md").exists()
