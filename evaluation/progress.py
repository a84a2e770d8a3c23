"""Progress of long runs in units a person understands.

A bar whose label names the batch and the cell being computed (``batch 2/4: pgd x cameras x 10 %``), and
one log line per finished batch with the time spent and an estimate of the time left, on the
``evaluation`` logger at INFO (the CLI prints them on stderr, with ``--quiet`` too; a library user sees
them after ``logging.basicConfig(level=logging.INFO)``).
"""

from __future__ import annotations

import logging
import sys
import time

from tqdm.auto import tqdm

LOG = logging.getLogger("evaluation")


class Progress:
    """A run of ``batches`` batches of ``cells`` cells each; batches already recorded are skipped. The
    estimate of the time left assumes time proportional to images: ``sizes`` gives each batch's image
    count (default: equal batches).

    Example:
        >>> progress = Progress("attacks", batches=4, cells=7, verbose=True)
        >>> progress.cell(1, "pgd x cameras x 10 %")   # the bar reads "attacks batch 1/4: pgd x ..."
        >>> progress.advance()
        >>> progress.batch_done(1, computed=True)      # logs "attacks: batch 1/4 done in 12 s, ..."
    """

    def __init__(self, name: str, batches: int, cells: int, verbose: bool, sizes: list[int] | None = None):
        self.name, self.batches = name, batches
        self.bar = tqdm(total=batches * cells, disable=not verbose, desc=name)
        self.start = time.perf_counter()
        self.sizes = sizes or [1] * batches
        self.computed = 0  # images of the batches computed by this process (resumed ones cost nothing)
        self.left = sum(self.sizes)

    def cell(self, batch: int, text: str) -> None:
        """Label the bar with the batch number (1-based) and the cell now computed."""
        self.bar.set_description_str(f"{self.name} batch {batch}/{self.batches}: {text}")

    def advance(self, cells: int = 1) -> None:
        """Count ``cells`` cells as done."""
        self.bar.update(cells)

    def batch_done(self, batch: int, computed: bool) -> None:
        """Count batch ``batch`` (1-based) as finished and log one line with the time left."""
        self.left -= self.sizes[batch - 1]
        if not computed:
            return
        self.computed += self.sizes[batch - 1]
        elapsed = time.perf_counter() - self.start
        left = elapsed / self.computed * self.left
        LOG.info(
            "%s: batch %d/%d done, %s so far, about %s left",
            self.name,
            batch,
            self.batches,
            _duration(elapsed),
            _duration(left),
        )

    def close(self) -> None:
        self.bar.close()


def _duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s`` or ``2 h 07 min``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class _StderrLines(logging.Handler):
    """The runs' progress lines (logger ``evaluation``, INFO) on whatever ``sys.stderr`` is now."""

    def __init__(self, prog: str):
        super().__init__()
        self.prog = prog

    def emit(self, record: logging.LogRecord) -> None:
        print(f"{self.prog}: {record.getMessage()}", file=sys.stderr)


def print_progress_lines(prog: str) -> None:
    """One line per finished batch on stderr (``prog: ...``), with ``--quiet`` too."""
    logger = logging.getLogger("evaluation")
    logger.setLevel(logging.INFO)
    if not any(isinstance(h, _StderrLines) for h in logger.handlers):
        logger.addHandler(_StderrLines(prog))
