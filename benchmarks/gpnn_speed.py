"""GPNN and GPNN-CAM speed and memory: the exact searches and the FAISS ones.

Prints three tables, each configuration (in the middle table: each size) measured in its own subprocess:

1. GPNN: seconds per variation (a batch of ``--n`` generated together) and peak memory at each size, for
   each search (``--search``: on CPU shifts, matmul, faiss, authors; on CUDA matmul, triton, faiss,
   authors). ``faiss``, ``faiss-cells`` (the evaluation's default) and ``faiss-4probes`` are GPNN with
   the settings of the evaluation's FAISS GPNNs (:data:`evaluation.focusers.GPNN_CAM_GPNNS`), ``authors``
   the GPNN-CAM authors' pipeline (:meth:`saliency.GPNN.authors`, which also has their noise 3.0, zero
   start and distance-weighted fold); ``+setting=value`` overrides any of these
   GPNN settings (``faiss+early_stop=none``).
   A FAISS row's time includes building its indexes for the image (none are reused across rows); its
   'reused' column times another batch of the same image with those indexes (GPNN-CAM's later batches),
   its 'recall' column is the search's recall in place in a third batch (:func:`search_recall`: the share
   of the queries met for which it finds a nearest key in the index's space; '-' for ``faiss-cells``,
   whose search is not a plain nearest-neighbour one).
   ``--exact-n k`` runs the exact searches in batches of k instead (their time per variation does not
   depend on the batch: each variation is searched on its own).
2. One PNN step at the finest level (queries = a variation, keys = the source): each exact search
   (matmul in tiles of ``--chunk``; shifts on CPU; with ``triton`` among the searches, the fused Triton
   kernels with float32 and with 3xTF32 dot products) against the naive full distance matrix, at sizes
   where the naive one fits (``--naive-max``): the share of indices equal to the float64 naive answer,
   the largest relative float64 score difference where they differ (float32 near-ties), seconds, speed
   ratio naive/search, peak memory.
3. GPNN-CAM: seconds per image with ``--cam-variations`` variations for each search (torchvision
   ResNet-50 with random weights, layers layer4/layer3/layer2; timings do not depend on the weights), its
   GPNN-CAM preset with each search's settings. The exact searches are skipped above
   ``--exact-max-variations`` variations (an hour per 224 px image at 100 on a 2-core CPU).

Every ratio is against a reference measured in the same run: tables 1 and 3 print the first exact search's
(shifts on CPU, matmul on CUDA) time and peak memory over each row's, table 2 the naive search's time over
each row's. ``--repeat k`` times each configuration k times in its process and keeps the fastest.

Peak memory: ``torch.cuda.max_memory_allocated`` on CUDA; on CPU the process's peak RSS over its RSS when
the measurement starts, with the peak reset there (Linux ``/proc/self/clear_refs``; elsewhere the growth
of ``ru_maxrss``, which hides a peak below an earlier one). It includes allocator overhead.

Example: ``python benchmarks/gpnn_speed.py --sizes 64 128 --device cpu``. The Triton search runs on CPU only
in Triton's interpreter (``TRITON_INTERPRET=1``), too slowly to time: a smoke test of the benchmark.
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: `benchmarks` importable
from benchmarks.gpnn_quality import split_config  # noqa: E402


def _photo(size: int) -> torch.Tensor:
    import skimage.data
    import skimage.transform

    image = skimage.transform.resize(skimage.data.chelsea()[:, 75:375], (size, size), anti_aliasing=True)
    return torch.from_numpy(image).permute(2, 0, 1).float().clamp(0, 1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _proc_status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 2**10
    raise KeyError(field)


def _cpu_peak_mib() -> float:
    try:
        return _proc_status_mib("VmHWM")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


def _peak_start(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak RSS (VmHWM) to the current RSS
        return _proc_status_mib("VmRSS")
    except OSError:
        return _cpu_peak_mib()


def _peak_end(device: torch.device, start: float) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20 - start
    return max(0.0, _cpu_peak_mib() - start)


def _timed(call, device: torch.device, repeat: int) -> tuple[object, float, float]:
    """(result, fastest seconds of ``repeat`` calls, peak memory over all of them in MiB)."""
    start_mem = _peak_start(device)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        result = call()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return result, best, _peak_end(device, start_mem)


def _warm_up(gpnn, image: torch.Tensor) -> None:
    """One iteration of ``gpnn`` on ``image``: CUDA context and kernels, the Triton kernels (compiled per
    specialisation of the level sizes). On CPU (numba kernels: compiled once, then loaded) on a 32 px
    image instead: peak RSS only grows, so a full-size warm-up would hide the measured run's peak."""
    if image.device.type == "cpu":
        image = _photo(32)
    warm = copy.copy(gpnn)
    warm.iters = 1
    warm.generate(image, 2)
    _sync(image.device)


def _score_gap(
    queries: torch.Tensor, keys: torch.Tensor, alpha: float, a: torch.Tensor, b: torch.Tensor
) -> float:
    """Largest relative difference of the float64 scores S(i, a_i) and S(i, b_i) where a and b differ."""
    gap = 0.0
    for v in range(queries.shape[0]):
        rows = (a[v] != b[v]).nonzero()[:, 0]
        if len(rows) == 0:
            continue
        cols = torch.unique(torch.cat([a[v, rows], b[v, rows]]))
        q64, k64 = queries[v].double(), keys[cols].double()
        dist = torch.cdist(q64, k64).pow(2) / q64.shape[1]  # (Nq, U)
        score = dist / (alpha + dist.amin(dim=0))
        pos = {int(c): i for i, c in enumerate(cols)}
        sa = score[rows, torch.tensor([pos[int(c)] for c in a[v, rows]], device=score.device)]
        sb = score[rows, torch.tensor([pos[int(c)] for c in b[v, rows]], device=score.device)]
        gap = max(gap, float(((sa - sb).abs() / sb.clamp_min(1e-12)).max()))
    return gap


#: Searches that are FAISS configurations rather than a GPNN ``search`` value: the evaluation's FAISS
#: GPNNs (``--gpnn``) and the authors' pipeline.
FAISS_ROWS = ("faiss", "faiss-4probes", "faiss-cells", "authors")


def _gpnn(search: str, iters: int, tf32: bool, cam: bool = False):
    """The GPNN of one row: GPNN's (``cam``: GPNN-CAM's preset's) settings with ``search``, or a FAISS
    configuration of :data:`FAISS_ROWS` with ``+setting=value`` overrides (``faiss+early_stop=none``)."""
    from evaluation.focusers import GPNN_CAM_GPNNS
    from saliency import GPNN
    from saliency.gpnn_cam import gpnn_cam_preset

    base, overrides = split_config(search)
    if base == "authors":
        return GPNN.authors(**{"iters": iters, **overrides})
    settings = (
        {**GPNN_CAM_GPNNS[base], **overrides} if base in FAISS_ROWS else {"search": search, "tf32": tf32}
    )
    settings = {"iters": iters, **settings}
    return gpnn_cam_preset(**settings) if cam else GPNN(**settings)


def is_faiss_row(search: str) -> bool:
    """Whether ``search`` is a FAISS configuration (:data:`FAISS_ROWS`, optionally ``+setting=value...``)."""
    return split_config(search)[0] in FAISS_ROWS


def _fresh(gpnn):
    """``gpnn`` without the FAISS indexes of earlier calls, so that a timing includes building them."""
    gpnn._index_cache = None
    return gpnn


#: Queries per search sampled by :func:`search_recall`.
RECALL_SAMPLE = 2000


def search_recall(gpnn, image: torch.Tensor, n: int, seed: int = 2) -> float | None:
    """Recall of a FAISS GPNN's search in place: the share of the queries it meets in ``generate(image,
    n, seed)`` for which it finds a nearest key in the index's space (PCA-k), i.e. one at most as far (in
    float64) as the exhaustive search's. :data:`RECALL_SAMPLE` queries of every search call are drawn
    (seeded), weighted by the call's number of queries. None when the search finds no plain nearest
    neighbours (``candidates="cells"``: the normalised score's argmin)."""
    from saliency.faiss_nn import PatchIndex

    search, tallies = PatchIndex.search_projected, []

    def recorded(index: PatchIndex, projected, k: int):
        distances, labels = search(index, projected, k)
        picked = torch.randperm(len(projected), generator=torch.Generator().manual_seed(len(tallies)))
        rows = picked[:RECALL_SAMPLE]
        sample = projected[rows.numpy()]
        best = index.exhaustive_search(sample)[1]
        queries, keys = torch.from_numpy(sample).double(), index.projected_keys
        found_d = (queries - keys[labels[rows, 0]].double()).pow(2).sum(1)
        best_d = (queries - keys[best].double()).pow(2).sum(1)
        tallies.append((float((found_d <= best_d).double().mean()), len(projected)))
        return distances, labels

    PatchIndex.search_projected = recorded
    try:
        gpnn.generate(image, n, seed=seed)
    finally:
        PatchIndex.search_projected = search
    if not tallies:
        return None
    return sum(share * count for share, count in tallies) / sum(count for _, count in tallies)


def worker(config: dict) -> dict:
    """Run one configuration and return its measurements."""
    from saliency import GPNN
    from saliency.matmul_nn import nearest_neighbours, nearest_neighbours_naive
    from saliency.patches import extract_patches
    from saliency.shifted_nn import nearest_neighbours_shifted
    from saliency.triton_nn import nearest_neighbours_triton

    torch.backends.cudnn.allow_tf32 = False  # TF32 only where a row says so (GPNN's own tf32 option)
    torch.backends.cuda.matmul.allow_tf32 = False
    device = torch.device(config["device"])
    image = _photo(config["size"]).to(device)
    repeat = config["repeat"]
    if config["kind"] == "gpnn":
        gpnn = _gpnn(config["search"], config["iters"], config["tf32"])
        _warm_up(gpnn, image)
        _, seconds, peak = _timed(lambda: _fresh(gpnn).generate(image, config["n"], seed=0), device, repeat)
        out = {"s_per_variation": seconds / config["n"], "peak_mib": peak}
        if is_faiss_row(config["search"]):  # another batch of the same image: the indexes are reused
            _, reused, _ = _timed(lambda: gpnn.generate(image, config["n"], seed=1), device, repeat)
            out["reused"] = reused / config["n"]
            out["recall"] = search_recall(gpnn, image, config["n"])
        return out
    if config["kind"] == "nn":
        variation = GPNN(iters=1).generate(image, config["n"], seed=0)  # also the warm-up
        queries, keys = extract_patches(variation, 7), extract_patches(image[None], 7)[0]
        searches = {}
        if device.type == "cpu":
            searches["shifts"] = lambda: nearest_neighbours_shifted(variation, image, 7, 0.005)
        searches["matmul"] = lambda: nearest_neighbours(queries, keys, 0.005, config["chunk"])
        if "triton" in config["searches"]:
            searches["triton"] = lambda: nearest_neighbours_triton(queries, keys, 0.005)
            searches["triton-3xtf32"] = lambda: nearest_neighbours_triton(queries, keys, 0.005, "tf32x3")
        searches["naive"] = lambda: nearest_neighbours_naive(queries, keys, 0.005)
        out, found = {}, {}
        for name, search in searches.items():
            if name.startswith("triton"):
                search()  # compiles the kernels
            found[name], seconds, peak = _timed(search, device, repeat)
            out[name] = {"seconds": seconds, "peak_mib": peak}
        exact = nearest_neighbours_naive(queries.double(), keys.double(), 0.005)
        for name, idx in found.items():
            out[name]["equal"] = float((idx == exact).double().mean())
            out[name]["score_gap"] = _score_gap(queries, keys, 0.005, idx, exact)
        return out
    if config["kind"] == "cam":
        import torchvision

        from saliency import GPNNCAM

        torch.manual_seed(0)
        model = torchvision.models.resnet50(weights=None).eval().to(device)
        gpnn = _gpnn(config["search"], config["iters"], config["tf32"], cam=True)
        _warm_up(gpnn, image)
        cam = GPNNCAM(
            model,
            ["layer4", "layer3", "layer2"],
            n_variations=config["n"],
            batch_variations=min(10, config["n"]),
            gpnn=gpnn,
        )
        _, seconds, peak = _timed(lambda: (_fresh(gpnn), cam(image[None])), device, repeat)
        return {"seconds": seconds, "peak_mib": peak}
    raise ValueError(f"unknown benchmark kind {config['kind']!r}")


def run(config: dict) -> dict:
    """Measure ``config`` in a fresh subprocess."""
    done = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="GPNN / GPNN-CAM speed and memory")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 224])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--n", type=int, default=None, help="variations per batch (default 1 CPU, 10 CUDA)")
    parser.add_argument("--iters", type=int, nargs="+", default=[10], help="PNN iterations per level")
    parser.add_argument(
        "--search",
        nargs="+",
        default=None,
        help="NN searches and FAISS configurations, e.g. faiss+early_stop=0.01 (default: shifts matmul faiss "
        "authors on CPU, matmul triton faiss authors on CUDA)",
    )
    parser.add_argument("--naive-max", type=int, default=None, help="largest size for the naive NN")
    parser.add_argument("--chunk", type=int, default=2**24, help="tile size of the chunked NN")
    parser.add_argument("--cam-size", type=int, default=None, help="GPNN-CAM image size (default: last size)")
    parser.add_argument("--cam-variations", type=int, nargs="*", default=None, help="GPNN-CAM N (0 to skip)")
    parser.add_argument(
        "--exact-max-variations", type=int, default=None, help="GPNN-CAM: most variations for exact searches"
    )
    parser.add_argument(
        "--exact-n", type=int, default=None, help="GPNN table: batch of the exact searches (default --n)"
    )
    parser.add_argument("--tf32", action="store_true", help="also measure GPNN(tf32=True) on CUDA")
    parser.add_argument("--repeat", type=int, default=1, help="timings per configuration; the fastest kept")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser


def _fill_defaults(args: argparse.Namespace) -> None:
    """Replace the options left unset by the device's defaults; add ``exact_searches`` (the searches that
    are not FAISS rows), ``reference`` (the first of them: every ratio's reference) and ``tf32_modes``."""
    cuda = args.device.startswith("cuda")
    args.n = args.n or (10 if cuda else 1)
    args.naive_max = args.naive_max or (128 if cuda else 64)
    if args.cam_variations is None:
        args.cam_variations = [100] if cuda else [10]
    args.search = args.search or (
        ["matmul", "triton", *FAISS_ROWS] if cuda else ["shifts", "matmul", *FAISS_ROWS]
    )
    args.exact_searches = [search for search in args.search if not is_faiss_row(search)]
    args.reference = args.exact_searches[0] if args.exact_searches else None
    args.exact_max_variations = args.exact_max_variations or (1000 if cuda else 10)
    args.tf32_modes = [False, True] if (args.tf32 and cuda) else [False]


def ratios(results: dict, reference_search: str | None, seconds: str) -> dict:
    """'exact/this' columns per (search, tf32): time and memory of the reference search (float32) over
    this row's."""
    reference = results.get((reference_search, False), {})
    out = {}
    for k, r in results.items():
        if "error" in r or "error" in reference or not reference:
            out[k] = f"{'-':>14} {'-':>5}"
            continue
        small = min(r["peak_mib"], reference["peak_mib"]) < 1  # below 1 MiB: RSS pages, not a ratio
        memory = "-" if small else f"{reference['peak_mib'] / r['peak_mib']:.1f}x"
        out[k] = f"{reference[seconds] / r[seconds]:>13.2f}x {memory:>5}"
    return out


def _measure(args: argparse.Namespace, kind: str, size: int, n_items: int, iters: int) -> dict:
    """Every search's measurements of one table row group: (search, tf32) -> results."""
    results = {}
    for search in args.search:
        exact = search in args.exact_searches
        if kind == "cam" and exact and n_items > args.exact_max_variations:
            continue
        batch = min(n_items, args.exact_n) if kind == "gpnn" and exact and args.exact_n else n_items
        for tf32 in args.tf32_modes if exact and search != "shifts" else [False]:
            config = {"kind": kind, "device": args.device, "size": size, "n": batch, "iters": iters}
            results[(search, tf32)] = run({**config, "tf32": tf32, "search": search, "repeat": args.repeat})
    return results


def table(args: argparse.Namespace, kind: str, size: int, n_items: int, seconds: str, row_head: int) -> None:
    """Measure and print the rows of one size (GPNN) or variation count (GPNN-CAM), per iters."""
    for iters in args.iters:
        results = _measure(args, kind, size, n_items, iters)
        vs = ratios(results, args.reference, seconds)
        for (search, tf32), r in results.items():
            row = f"{row_head:>5} {iters:>5} {search:>7} {str(tf32):>5}"
            if "error" in r:
                print(f"{row} {r['error']}")
                continue
            reused = f"{r['reused']:>7.3f}" if "reused" in r else f"{'-':>7}"
            recall = f"{r['recall']:>6.3f}" if r.get("recall") is not None else f"{'-':>6}"
            reused = f" {reused} {recall}" if kind == "gpnn" else ""
            print(f"{row} {r[seconds]:>12.3f}{reused} {r['peak_mib']:>9.0f} {vs[(search, tf32)]}")


def _ratio_head(args: argparse.Namespace) -> str:
    return f"{(args.reference or '-') + '/this: s':>14} {'MiB':>5}"


def gpnn_table(args: argparse.Namespace) -> None:
    """Table 1: GPNN generation at every size."""
    exact_batch = f"; exact searches: batch of {min(args.n, args.exact_n)}" if args.exact_n else ""
    print(
        f"\nGPNN generation (batch of {args.n} variations{exact_batch}, p=7, r=4/3, coarsest 14, alpha 0.005)"
    )
    print(
        f"{'size':>5} {'iters':>5} {'search':>7} {'tf32':>5} {'s/variation':>12} {'reused':>7} {'recall':>6} "
        f"{'peak MiB':>9} {_ratio_head(args)}"
    )
    for size in args.sizes:
        table(args, "gpnn", size, args.n, "s_per_variation", size)


def nn_table(args: argparse.Namespace) -> None:
    """Table 2: one PNN step of each exact search against the naive full distance matrix."""
    print(
        f"\nOne PNN step at the finest level, {args.n} variation(s): exact searches vs the naive full "
        f"distance matrix (matmul in tiles of {args.chunk}; 'same idx': share equal to the float64 naive "
        "answer)"
    )
    print(
        f"{'size':>5} {'search':>13} {'same idx':>8} {'score gap':>9} {'seconds':>8} "
        f"{'naive/this':>10} {'peak MiB':>9}"
    )
    for size in [s for s in args.sizes if s <= args.naive_max]:
        config = {"kind": "nn", "device": args.device, "size": size, "n": args.n, "chunk": args.chunk}
        r = run({**config, "searches": args.exact_searches, "repeat": args.repeat})
        if "error" in r:
            print(f"{size:>5} {r['error']}")
            continue
        for name, m in r.items():
            print(
                f"{size:>5} {name:>13} {m['equal']:>8.2%} {m['score_gap']:>9.1e} {m['seconds']:>8.3f} "
                f"{r['naive']['seconds'] / m['seconds']:>10.2f} {m['peak_mib']:>9.0f}"
            )


def cam_table(args: argparse.Namespace) -> None:
    """Table 3: GPNN-CAM on one image, per variation count."""
    cam_size = args.cam_size or args.sizes[-1]
    print(
        f"\nGPNN-CAM (ResNet-50, 3 layers, batches of <= 10, its GPNN preset) on one {cam_size} px image; "
        f"exact searches up to {args.exact_max_variations} variations (ratios against the same N's exact row)"
    )
    print(
        f"{'N':>5} {'iters':>5} {'search':>7} {'tf32':>5} {'seconds':>12} {'peak MiB':>9} {_ratio_head(args)}"
    )
    for n_cam in [v for v in args.cam_variations if v > 0]:
        table(args, "cam", cam_size, n_cam, "seconds", n_cam)


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    _fill_defaults(args)
    cuda = args.device.startswith("cuda")
    name = torch.cuda.get_device_name(args.device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}")
    gpnn_table(args)
    nn_table(args)
    cam_table(args)


if __name__ == "__main__":
    main()
