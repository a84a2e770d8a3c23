"""The attack grid: attack a model's images unfocused and focused by saliency maps, record the norms.

One experiment is the grid (image x attack x focuser x area). Every cell becomes one JSON record in
``DIR/records.jsonl`` (see :func:`make_records` for the fields). The run is

* **resumable**: records are appended per batch (one ``write``, ``flush`` and ``fsync``); a rerun skips
  every (image, attack, focuser, area) already recorded, so nothing is duplicated or lost; a truncated
  last line left by a crash is dropped and the file repaired;
* **pinned to its arguments and images**: ``DIR/config.json`` stores the :class:`ExperimentConfig` and
  ``DIR/data.sha256`` a digest of the loaded pixels; resuming with different arguments, or with
  ``--data`` now loading other pixels (an image edited in place, another loader), fails with
  :class:`~evaluation.errors.ConfigMismatchError`;
* **shardable**: under ``torchrun --nproc-per-node K -m evaluation.cli -- evaluate ...`` (the ``--``
  keeps torchrun from parsing our options) the image batches are dealt round-robin to the
  ranks, each rank appends to ``records.rank{r}.jsonl``, and after a barrier rank 0 merges them into
  ``records.jsonl`` and writes the report. A batch always holds the same images whatever the number of
  ranks, so a sharded run computes exactly what a single process computes.

Each image's saliency maps are computed once per batch and reused for every attack and area.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.attacks import run_attack
from evaluation.configs import ExperimentConfig
from evaluation.distributed import DistributedContext, init_distributed, shard
from evaluation.errors import ConfigMismatchError, RunFolderError
from evaluation.focusers import UNFOCUSED, compute_maps
from evaluation.loading import Dataset, check_areas, load_model_and_data
from evaluation.progress import Progress
from evaluation.records import (
    EXAMPLES_FILE,
    N_EXAMPLES,
    RECORDS_FILE,
    Key,
    batches,
    load_examples,
    make_records,
    merge_records,
    record_files,
    record_key,
    softmax,
)
from evaluation.records import check_names as check_image_names
from evaluation.run_folder import BatchMaps, RecordLog, check_config, check_data, check_out, lock, save_arrays


@dataclass
class RunResult:
    """What :func:`run_experiment` returns: the records (all of them on rank 0, this rank's elsewhere)."""

    records: list[dict[str, Any]]
    out_dir: Path
    seconds: float
    computed: int
    is_main: bool = True


def _batch_maps(
    focuser: str,
    config: ExperimentConfig,
    classifier: Any,
    x: np.ndarray,
    labels: np.ndarray,
    batch: list[int],
    attacked: np.ndarray,
    layers: list[str],
) -> np.ndarray:
    """The maps (N,H,W) of ``focuser`` for a batch: those of the attacked images, zero for the others."""
    maps = np.zeros((len(x), *x.shape[-2:]), np.float32)
    if attacked.any():
        ids = [i for i, a in zip(batch, attacked) if a]
        maps[attacked] = compute_maps(
            focuser,
            classifier,
            x[attacked],
            labels[attacked],
            ids,
            layers,
            config.seed,
            config.gpnn_variations,
            config.gpnn_params,
        )
    return maps


def _attack_batch(
    config: ExperimentConfig,
    attack: str,
    classifier: Any,
    x: np.ndarray,
    labels: np.ndarray,
    attacked: np.ndarray,
    maps: np.ndarray | None,
    area: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x_adv, mask (N,1,H,W), eps)`` of one cell: only the attacked (correctly classified) images are
    attacked; the others keep ``x_adv = x``, a zero mask and eps NaN."""
    x_adv = x.copy()
    mask = np.zeros((len(x), 1, *x.shape[-2:]), np.float32)
    eps = np.full(len(x), np.nan)
    if attacked.any():
        adv, used_mask, used_eps = run_attack(
            attack,
            classifier,
            x[attacked],
            labels[attacked],
            None if maps is None else maps[attacked],
            area,
            config.attack_params[attack],
            config.batch_size,
        )
        x_adv[attacked] = adv
        mask[attacked] = 1.0 if used_mask is None else used_mask
        eps[attacked] = np.nan if used_eps is None else used_eps
    return x_adv, mask, eps


def _pin_folder(
    out: Path, ctx: DistributedContext, config: ExperimentConfig, data: Dataset
) -> tuple[RecordLog, list[dict[str, Any]]]:
    """Check the folder against ``config`` and ``data`` on every rank, pin it (rank 0), and return this
    rank's record log with every record already in the folder."""
    # Only rank 0 writes config.json and data.sha256; the others check them after all_ok (a collective, so
    # they wait for rank 0): a rank can never see records of this run before its digest exists.
    digest = data.digest()
    refusal: ConfigMismatchError | None = None
    own = RecordLog(
        out / (f"records.rank{ctx.rank}.jsonl" if ctx.is_distributed else RECORDS_FILE), record_key
    )
    stored = own.read(repair=True)  # cuts a line a crash left half-written; only this rank writes here
    stored += [
        r for path in record_files(out) if path != own.path for r in RecordLog(path, record_key).read()
    ]
    try:
        check_image_names(stored, data.names, config.data)
        if ctx.is_main:
            check_config(out, config)
            check_data(out, digest, has_results=bool(stored))
    except ConfigMismatchError as err:
        refusal = err
    if not ctx.all_ok(refusal is None):
        raise refusal or ConfigMismatchError(f"{out}: rank 0 refused this folder (see its message)")
    if not ctx.is_main:
        check_config(out, config, write=False)
        check_data(out, digest, has_results=False, write=False)
    return own, stored


def run_experiment(
    config: ExperimentConfig,
    out_dir: str | Path,
    device: str | None = None,
    verbose: bool = True,
    report: bool = True,
) -> RunResult:
    """Run (or resume) ``config`` into ``out_dir``; under torchrun the batches are sharded over the ranks.

    Rank 0 holds the folder's lock (:func:`evaluation.run_folder.lock`), merges every rank's records into
    ``records.jsonl`` and, when ``report`` is true, writes the report (``report.md``, ``results.json``,
    ``records.csv``, figures) with :func:`evaluation.report.write_report`.
    """
    start = time.perf_counter()
    ctx: DistributedContext = init_distributed(device)
    out = Path(out_dir)
    check_out(out)
    # Validate everything before config.json pins the folder, so a failed start can be rerun fixed.
    check_config(out, config, write=False)
    classifier, layers, data = load_model_and_data(config, device)
    check_areas(config.areas, data.x.shape)
    with contextlib.ExitStack() as held:
        refusal: RunFolderError | None = None
        if ctx.is_main:
            try:
                held.enter_context(lock(out))
            except RunFolderError as err:
                refusal = err
        if not ctx.all_ok(refusal is None):
            raise refusal or RunFolderError(f"--out: rank 0 could not lock {out} (see its message)")
        own, stored = _pin_folder(out, ctx, config, data)
        computed = _run_batches(config, out, ctx, classifier, layers, data, own, stored, verbose)
        records: list[dict[str, Any]] = own.read()
        computed = ctx.total(computed)  # over all ranks; a collective, so every rank's records are written
        if ctx.is_main:
            records = merge_records(out)
            if report:
                from evaluation.provenance import provenance
                from evaluation.report import write_report

                run = provenance(getattr(classifier, "device", None), layers, time.perf_counter() - start)
                examples = load_examples(out)
                write_report(
                    out, records, config.to_dict(), examples, provenance=run, labels=data.label_source
                )
        ctx.barrier()
    return RunResult(records, out, time.perf_counter() - start, computed, ctx.is_main)


def _run_batches(
    config: ExperimentConfig,
    out: Path,
    ctx: DistributedContext,
    classifier: Any,
    layers: list[str],
    data: Dataset,
    own: RecordLog,
    stored: list[dict[str, Any]],
    verbose: bool,
) -> int:
    """Compute and append every missing record of this rank's batches; return how many were computed."""
    grid = _Grid(config, out, classifier, layers, data, own, {record_key(r) for r in stored})
    my_batches = shard(batches(len(data.x), config.batch_size), ctx.rank, ctx.world_size)
    jobs = config.jobs()
    name = f"rank {ctx.rank}" if ctx.is_distributed else "attacks"
    progress = Progress(name, len(my_batches), len(jobs), verbose, [len(b) for b in my_batches])
    computed = 0
    for number, batch in enumerate(my_batches, start=1):
        pending = [job for job in jobs if grid.missing(batch, *job)]
        progress.advance(len(jobs) - len(pending))
        if pending:
            state = grid.start(batch)
            for attack, focuser, area in pending:
                progress.cell(number, f"{attack} x {focuser} x {area:.0%}")
                computed += grid.cell(state, attack, focuser, area)
                progress.advance()
        BatchMaps(out, batch).clear()  # every record of the batch is written (or was, before a crash)
        progress.batch_done(number, computed=bool(pending))
    progress.close()
    return computed


@dataclass
class _Batch:
    """One batch being computed: its images, clean predictions, attacked labels and maps."""

    ids: list[int]
    x: np.ndarray
    clean_pred: np.ndarray
    labels: np.ndarray
    attacked: np.ndarray
    saved_maps: BatchMaps
    maps: dict[str, np.ndarray] = field(default_factory=dict)


class _Grid:
    """The grid's cells of one run: what is missing, and computing one (image batch, attack, focuser,
    area) cell with the batch's maps and clean predictions computed once (:class:`_Batch`)."""

    def __init__(
        self,
        config: ExperimentConfig,
        out: Path,
        classifier: Any,
        layers: list[str],
        data: Dataset,
        own: RecordLog,
        done: set[Key],
    ):
        self.config, self.out, self.classifier, self.layers, self.data = config, out, classifier, layers, data
        self.own, self.done = own, done
        self.examples: dict[str, np.ndarray] = load_examples(out) or {}
        self.example_area = config.areas[len(config.areas) // 2] if config.areas else 1.0

    def is_example(self, batch: list[int], attack: str, area: float) -> bool:
        """The cell feeds the example figure (first images, first attack, unfocused and middle area)."""
        return 0 in batch and attack == self.config.attacks[0] and area in (1.0, self.example_area)

    def missing(self, batch: list[int], attack: str, focuser: str, area: float) -> bool:
        """A record of the cell is missing, or its example arrays (a run interrupted in batch 0)."""
        if any((i, attack, focuser, area) not in self.done for i in batch):
            return True
        return self.is_example(batch, attack, area) and f"adv:{focuser}" not in self.examples

    def start(self, batch: list[int]) -> _Batch:
        """The batch's images and clean predictions; only correctly classified images are attacked."""
        x = self.data.x[batch]
        clean_pred = self.classifier.predict(x, batch_size=self.config.batch_size).argmax(axis=1)
        labels = self.data.y[batch] if self.data.y is not None else clean_pred
        if 0 in batch:
            self.examples["x"] = x[:N_EXAMPLES]
        return _Batch(batch, x, clean_pred, labels, clean_pred == labels, BatchMaps(self.out, batch))

    def cell(self, b: _Batch, attack: str, focuser: str, area: float) -> int:
        """Compute the cell of batch ``b``, append its missing records; return how many."""
        config = self.config
        if focuser != UNFOCUSED and focuser not in b.maps:
            # Maps of the attacked images only, computed once (saved) and reused by every attack and area.
            compute = partial(
                _batch_maps, focuser, config, self.classifier, b.x, b.labels, b.ids, b.attacked, self.layers
            )
            b.maps[focuser] = b.saved_maps.get(focuser, compute)
        x_adv, mask, eps = _attack_batch(
            config, attack, self.classifier, b.x, b.labels, b.attacked, b.maps.get(focuser), area
        )
        mask_area = np.where(b.attacked, mask.reshape(len(b.x), -1).mean(axis=1), np.nan)
        if self.is_example(b.ids, attack, area):
            self.examples[f"adv:{focuser}"] = x_adv[:N_EXAMPLES]
            if focuser != UNFOCUSED:
                self.examples[f"mask:{focuser}"] = mask[:N_EXAMPLES]
                self.examples[f"map:{focuser}"] = b.maps[focuser][:N_EXAMPLES]
            save_arrays(self.out / EXAMPLES_FILE, self.examples)  # before the records: both or neither
        probs = softmax(self.classifier.predict(x_adv, batch_size=config.batch_size))
        names = [self.data.names[i] for i in b.ids]
        records = make_records(
            b.ids, names, attack, focuser, area, b.x, x_adv, b.labels, b.clean_pred, probs, mask_area, eps
        )
        return self.own.append_new(records, self.done)
