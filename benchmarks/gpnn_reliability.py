"""How far apart two GPNN configurations' GPNN-CAM maps are once seed noise is taken out, and what they
would agree at any variation count: split-batch reliability of the maps of ``benchmarks/gpnn_quality.py``.

A GPNN-CAM map of N variations is the mean of N/10 batch maps (:meth:`saliency.GPNNCAM.batch_maps`),
each from its own seed: independent noisy measurements of one underlying map per configuration, the
classical setting of test theory. From the saved batch maps (every ``batches_<config>_<photo>.npy`` in
``--out``; a configuration's runs under other seeds, ``<config>@S``, are pooled with it) it estimates, per
photograph and configuration, with Pearson correlations (min-max normalisation leaves them unchanged):

- ``r1``: the mean correlation between two batch maps of different seeds (a 10-variation map's agreement
  with another one of the same configuration);
- ``self@N``: the agreement of two independent N-variation maps, by the Spearman-Brown formula
  ``k r1 / (1 + (k - 1) r1)`` with k = N / 10;
- ``cross``: the mean correlation between a batch map of the configuration and one of the reference,
  pairs of the same batch seed left out (they share their coarsest noise);
- ``true r``: ``cross / sqrt(r1 r1_ref)``, the correlation of the two configurations' underlying maps
  (the correction for attenuation): 1 when they estimate the same map and differ by seed noise only;
  with its range when each of the reference's batch maps is left out in turn;
- ``vs ref@N``: the agreement of the two configurations' N-variation maps this implies,
  ``true r * sqrt(self@N self_ref@N)``; the reference's row gives its own ``self@N``, how well it
  agrees with itself at N variations (a yardstick: a less noisy configuration can exceed it).

``--correlation spearman`` applies the same formulas to the Spearman correlations of the batch maps
(Pearson's of their ranks). The theory holds for Pearson's (a mean of batch maps is a sum of
measurements); for Spearman's it is an approximation. ``--split-halves`` checks the Spearman-Brown
formula where a configuration has enough batch maps: the predicted agreement of two N-variation maps
against the observed one (the mean of the first N/10 batch maps against the next N/10), in Pearson and
in Spearman correlation.

``--modes`` looks for two kinds of batch maps: per photograph it pools every configuration's batch maps,
splits them into two groups (:func:`two_groups`: 2-means with correlation as the similarity) and prints
the correlation of the two groups' mean maps (of the ranks with ``--correlation spearman``; near 1: one
kind of map and noise; near 0 or below: two kinds) and how many of each configuration's batch maps fall
in each group. Configurations that draw the two kinds in different proportions estimate different mean
maps, whatever their number of variations.

Example: ``python benchmarks/gpnn_reliability.py --out runs/gpnn_quality --variations 100``.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy.stats import rankdata, spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: `benchmarks` importable

from benchmarks.gpnn_quality import BATCH, PHOTOS, name_and_seed  # noqa: E402

#: A batch map's identity: (configuration seed, batch index); equal identities share their GPNN noise.
BatchMaps = list[tuple[tuple[int, int], np.ndarray]]

_FILE = re.compile(r"batches_(?P<config>.+)_(?P<photo>" + "|".join(map(re.escape, PHOTOS)) + r")\.npy")


def load_batches(out: Path, seed: int = 0) -> dict[str, dict[str, BatchMaps]]:
    """configuration (``@S`` removed) -> photograph -> its batch maps of every seed, with identities."""
    pooled: dict[str, dict[str, BatchMaps]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(out.glob("batches_*.npy")):
        match = _FILE.fullmatch(path.name)
        if match is None:
            continue
        config, config_seed = name_and_seed(match["config"], seed)
        for b, batch_map in enumerate(np.load(path)):
            pooled[config][match["photo"]].append(((config_seed, b), batch_map))
    return pooled


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def _standardised(maps: BatchMaps) -> np.ndarray:
    """The maps as rows of zero mean and unit norm: their dot products are their correlations."""
    x = np.stack([m.ravel() for _, m in maps]).astype(np.float64)
    x -= x.mean(1, keepdims=True)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _pair_correlations(batches: BatchMaps, others: BatchMaps) -> np.ma.MaskedArray:
    """The correlation of every batch map with every one of ``others`` (one matrix product of the
    standardised maps), pairs of one identity masked."""
    same = np.array([[ia == ib for ib, _ in others] for ia, _ in batches])
    return np.ma.masked_array(_standardised(batches) @ _standardised(others).T, same)


def _mean(correlations: np.ma.MaskedArray) -> float:
    """The mean of the unmasked correlations (NaN where none is)."""
    value = correlations.mean()
    return float("nan") if value is np.ma.masked else float(value)


def _corrected(cross: float, r1: float, r1_ref: float) -> float:
    """The correction for attenuation."""
    return cross / float(np.sqrt(r1 * r1_ref))


def single_batch_agreement(batches: BatchMaps) -> float:
    """r1: the mean correlation of two batch maps of different seeds (NaN with fewer than two)."""
    return _mean(_pair_correlations(batches, batches))


def cross_agreement(batches: BatchMaps, reference: BatchMaps) -> float:
    """The mean correlation of a batch map with a reference batch map, same-seed pairs left out."""
    return _mean(_pair_correlations(batches, reference))


def spearman_brown(r1: float, k: float) -> float:
    """The correlation of two means of k measurements whose single ones correlate r1."""
    return k * r1 / (1 + (k - 1) * r1)


def true_correlation(batches: BatchMaps, reference: BatchMaps) -> float:
    """The correlation of the underlying maps: cross agreement corrected for both sides' seed noise."""
    return _corrected(cross_agreement(batches, reference), *map(single_batch_agreement, (batches, reference)))


def leave_one_out(batches: BatchMaps, reference: BatchMaps) -> tuple[float, float]:
    """The range of :func:`true_correlation` with each of the reference's batch maps left out in turn
    (NaN with fewer than three: one left out would leave no pair)."""
    n = len(reference)
    if n < 3:
        return float("nan"), float("nan")
    r1 = single_batch_agreement(batches)
    within_ref, cross = _pair_correlations(reference, reference), _pair_correlations(batches, reference)
    keeps = [np.arange(n) != i for i in range(n)]
    values = [_corrected(_mean(cross[:, k]), r1, _mean(within_ref[np.ix_(k, k)])) for k in keeps]
    return min(values), max(values)


def reliability_rows(
    pooled: dict[str, dict[str, BatchMaps]], reference: str, variations: int
) -> list[dict[str, object]]:
    """Per photograph and configuration (the reference's own row first): the quantities of the module's
    docstring at ``variations`` variations."""
    k = variations / BATCH
    rows = []
    for photo in PHOTOS:
        ref = pooled.get(reference, {}).get(photo)
        if not ref:
            continue
        self_ref = spearman_brown(single_batch_agreement(ref), k)
        for config in [reference, *sorted(set(pooled) - {reference})]:
            batches = pooled[config].get(photo)
            if not batches:
                continue
            r1 = single_batch_agreement(batches)
            row = {"photo": photo, "config": config, "batches": len(batches), "r1": r1}
            row["self"] = spearman_brown(r1, k)
            if config != reference:
                row["cross"] = cross_agreement(batches, ref)
                row["true"] = true_correlation(batches, ref)
                row["true_range"] = leave_one_out(batches, ref)
                row["vs_ref"] = row["true"] * np.sqrt(row["self"] * self_ref)
            rows.append(row)
    return rows


def _cell(value: object) -> str:
    if isinstance(value, tuple):
        return "-" if not np.isfinite(value).all() else f"[{value[0]:.2f}, {value[1]:.2f}]"
    return "-" if value is None or not np.isfinite(value) else f"{value:.2f}"


def print_table(rows: list[dict[str, object]], reference: str, variations: int) -> None:
    """The rows as a Markdown table."""
    print(
        f"| photo | config | batches | r1 | self@{variations} | cross | true r | range | "
        f"vs {reference}@{variations} |"
    )
    print("|---" * 9 + "|")
    for row in rows:
        keys = ("r1", "self", "cross", "true", "true_range", "vs_ref")
        cells = " | ".join(_cell(row.get(key)) for key in keys)
        print(f"| {row['photo'].removeprefix('skimage-')} | {row['config']} | {row['batches']} | {cells} |")


def ranked(pooled: dict[str, dict[str, BatchMaps]]) -> dict[str, dict[str, BatchMaps]]:
    """Every batch map replaced by its pixels' ranks: Pearson correlations of ranks are Spearman's."""
    return {
        config: {
            photo: [(i, rankdata(m.ravel()).reshape(m.shape)) for i, m in batches]
            for photo, batches in by_photo.items()
        }
        for config, by_photo in pooled.items()
    }


def split_half_rows(
    pooled: dict[str, dict[str, BatchMaps]], analysed: dict[str, dict[str, BatchMaps]] | None = None
) -> list[dict[str, object]]:
    """The Spearman-Brown prediction against what it predicts, where a configuration has 2k batch maps:
    per photograph, configuration and N = 10k (k = 1, 2, 4, 10, ...), the agreement of two N-variation
    maps predicted from the r1 of ``analysed`` (default ``pooled``; :func:`ranked` for Spearman's) and the
    observed Pearson and Spearman correlation of the mean of the first k batch maps with that of the next
    k."""
    analysed = pooled if analysed is None else analysed
    rows = []
    for config, by_photo in sorted(pooled.items()):
        for photo, batches in by_photo.items():
            r1 = single_batch_agreement(analysed[config][photo])
            maps = np.stack([m for _, m in sorted(batches, key=lambda item: item[0])])
            for k in [k for k in (1, 2, 4, 10, 20, 50) if 2 * k <= len(maps)]:
                first, second = maps[:k].mean(0).ravel(), maps[k : 2 * k].mean(0).ravel()
                row = {"photo": photo, "config": config, "variations": BATCH * k}
                row["predicted"] = spearman_brown(r1, k)
                row["pearson"] = _pearson(first, second)
                row["spearman"] = float(spearmanr(first, second).statistic)
                rows.append(row)
    return rows


def print_split_halves(rows: list[dict[str, object]]) -> None:
    """The rows of :func:`split_half_rows` as a Markdown table."""
    print("| photo | config | variations | Spearman-Brown | observed Pearson | observed Spearman |")
    print("|---" * 6 + "|")
    for row in rows:
        cells = " | ".join(_cell(row[key]) for key in ("predicted", "pearson", "spearman"))
        print(
            f"| {row['photo'].removeprefix('skimage-')} | {row['config']} | {row['variations']} | {cells} |"
        )


def two_groups(maps: BatchMaps, iterations: int = 100) -> np.ndarray:
    """Split batch maps into two groups by 2-means on the standardised maps (correlation as similarity),
    started from the two least correlated maps: (n,) labels 0 or 1, group 0 the larger (with equal
    sizes, the one holding the first map)."""
    x = _standardised(maps)
    first, second = np.unravel_index(np.argmin(x @ x.T), (len(x), len(x)))
    centres = x[[first, second]]
    labels = np.zeros(len(x), dtype=int)
    for _ in range(iterations):
        new = np.argmax(x @ centres.T, axis=1)
        if np.array_equal(new, labels) or np.bincount(new, minlength=2).min() == 0:
            break
        labels = new
        centres = np.stack([x[labels == group].mean(0) for group in (0, 1)])
    counts = np.bincount(labels, minlength=2)
    return 1 - labels if counts[1] > counts[0] or (counts[1] == counts[0] and labels[0] == 1) else labels


def mode_rows(pooled: dict[str, dict[str, BatchMaps]]) -> list[dict[str, object]]:
    """Per photograph, every configuration's batch maps pooled and split by :func:`two_groups`: the
    correlation of the two groups' mean maps (None when one group is empty) and, per configuration, its
    batch maps in each group."""
    rows = []
    for photo in PHOTOS:
        configs = sorted(config for config in pooled if pooled[config].get(photo))
        maps = [item for config in configs for item in pooled[config][photo]]
        if len(maps) < 2:
            continue
        labels = two_groups(maps)
        stacked = np.stack([m for _, m in maps])
        between = (
            _pearson(stacked[labels == 0].mean(0), stacked[labels == 1].mean(0)) if labels.any() else None
        )
        first = 0
        for config in configs:
            groups = labels[first : first + len(pooled[config][photo])]
            first += len(groups)
            counts = np.bincount(groups, minlength=2)
            rows.append({"photo": photo, "between": between, "config": config, "groups": counts})
    return rows


def print_modes(rows: list[dict[str, object]]) -> None:
    """The rows of :func:`mode_rows` as a Markdown table."""
    print("| photo | groups' mean maps r | config | group 1 | group 2 |")
    print("|---" * 5 + "|")
    for row in rows:
        photo, (larger, smaller) = row["photo"].removeprefix("skimage-"), row["groups"]
        print(f"| {photo} | {_cell(row['between'])} | {row['config']} | {larger} | {smaller} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the folder of gpnn_quality.py's maps")
    parser.add_argument(
        "--reference", default="exact", help="the configuration compared with (default exact)"
    )
    parser.add_argument("--variations", type=int, default=100, help="variation count of the projection")
    parser.add_argument("--seed", type=int, default=0, help="the seed of runs named without @S (default 0)")
    parser.add_argument(
        "--correlation",
        choices=("pearson", "spearman"),
        default="pearson",
        help="pearson (default; exact for means of batch maps) or spearman (of the ranks, approximate)",
    )
    parser.add_argument(
        "--split-halves", action="store_true", help="also check Spearman-Brown against observed split halves"
    )
    parser.add_argument(
        "--modes", action="store_true", help="also split each photograph's batch maps into two groups"
    )
    args = parser.parse_args()
    if args.variations < 1:
        raise SystemExit(f"--variations must be a positive integer, got {args.variations}")
    if not args.out.is_dir():
        raise SystemExit(f"--out: {args.out} is not a folder")
    pooled = load_batches(args.out, args.seed)
    if args.reference not in pooled:
        found = ", ".join(sorted(pooled)) or "none"
        raise SystemExit(f"--reference: no batch maps of {args.reference!r} in {args.out} (found: {found})")
    analysed = ranked(pooled) if args.correlation == "spearman" else pooled
    print(f"{args.correlation.capitalize()} correlations")
    print_table(reliability_rows(analysed, args.reference, args.variations), args.reference, args.variations)
    if args.split_halves:
        print()
        print_split_halves(split_half_rows(pooled, analysed))
    if args.modes:
        print()
        print_modes(mode_rows(analysed))


if __name__ == "__main__":
    main()
