"""The run folder (``--out``): the one place a command writes, so written that no one can turn it on the user.

* **Regular files only, never outside the folder.** Every file is opened with ``O_NOFOLLOW`` and checked to
  be a regular file, and every sub-folder to be a real folder: a symbolic link planted at any name the
  run writes (``records.jsonl``, ``figures``, ...) is refused with :class:`RunFolderError`, and its target
  is left byte-identical. Whole files are written to a uniquely named temporary file created in the folder
  itself (``O_EXCL``) and renamed over the name, so a reader never sees half a file and no fixed temporary
  name exists to be planted.
* **One writer.** :func:`lock` takes an advisory ``flock`` on ``DIR/run.lock``; a second run into the same
  folder fails at once with :class:`FolderInUseError` naming the holder's pid. The operating system
  releases the lock when the process dies, so a killed run never leaves its folder locked.
* **Pinned to its arguments and pixels.** ``config.json`` (:func:`check_config`) and ``data.sha256``
  (:func:`check_data`) refuse a resume with other arguments or other images.
* **Append-only records.** :class:`RecordLog` appends whole batches of JSON lines durably and drops, on
  resume, a last line a crash cut short.

Derived files (figures, example arrays, saved maps, the report) are recomputable: one that cannot be read
is recomputed, never a reason to stop.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import math
import os
import stat
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.errors import ConfigMismatchError, FolderInUseError, RunFolderError

#: The process's umask, read once: files made through a temporary file get the usual 0o666 & ~umask.
_UMASK = os.umask(0o022)
os.umask(_UMASK)

CONFIG_FILE = "config.json"
DATA_DIGEST_FILE = "data.sha256"
LOCK_FILE = "run.lock"


# ------------------------------------------------------------------------------------------ plain I/O
def _refuse_link(path: Path) -> None:
    if path.is_symlink():
        raise RunFolderError(
            f"{path} is a symbolic link; a run writes only regular files inside its folder: remove the link "
            "or choose another --out folder"
        )


def _open(path: Path, flags: int, mode: int = 0o644) -> int:
    """``os.open`` that never follows a link at ``path`` and refuses anything but a regular file."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), mode)
    except OSError as err:
        if err.errno == errno.ELOOP:
            _refuse_link(path)
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise RunFolderError(f"{path} is not a regular file; remove it or choose another --out folder")
    return fd


def make_dir(path: str | Path) -> Path:
    """Create the folder ``path`` (and its parents) unless it exists; refuse a link or a file there."""
    path = Path(path)
    _refuse_link(path)
    path.mkdir(parents=True, exist_ok=True)
    _refuse_link(path)  # a link planted between the check and mkdir
    if not path.is_dir():
        raise RunFolderError(f"{path} is not a folder; remove it or choose another --out folder")
    return path


def read_bytes(path: str | Path) -> bytes | None:
    """The bytes of the regular file ``path``, or None if there is none."""
    try:
        fd = _open(Path(path), os.O_RDONLY)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        return f.read()


def append_bytes(path: str | Path, data: bytes) -> None:
    """Append ``data`` to ``path`` (created if missing) with one write, then flush and fsync."""
    with os.fdopen(_open(Path(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT), "ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def truncate(path: str | Path, size: int) -> None:
    """Cut the regular file ``path`` to ``size`` bytes, durably."""
    fd = _open(Path(path), os.O_RDWR)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Replace ``path`` by ``data`` (str: UTF-8) at once: readers see the old file or the new one, whole."""
    path = Path(path)
    _refuse_link(path)
    if path.exists() and not path.is_file():
        raise RunFolderError(f"{path} is not a regular file; remove it or choose another --out folder")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0o600; results are meant to be shared
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # renames over a link planted meanwhile, never writes through it
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def save_figure(fig: Any, path: str | Path, dpi: int) -> Path:
    """Write the matplotlib figure ``fig`` as a PNG to ``path`` with :func:`write_atomic`."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return write_atomic(path, buffer.getvalue())


def save_image(path: str | Path, image: np.ndarray) -> Path:
    """Write ``image`` (H,W,3) or (H,W) uint8 as a PNG to ``path`` with :func:`write_atomic`."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="png")
    return write_atomic(path, buffer.getvalue())


def save_arrays(path: str | Path, arrays: dict[str, np.ndarray], compressed: bool = False) -> Path:
    """Write ``arrays`` as an ``.npz`` file with :func:`write_atomic`."""
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    return write_atomic(path, buffer.getvalue())


def load_arrays(path: str | Path) -> dict[str, np.ndarray] | None:
    """The arrays of the ``.npz`` file ``path``; None if it is absent or unreadable (warned: recomputed)."""
    data = read_bytes(path)
    if data is None:
        return None
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
        warnings.warn(f"{path} cannot be read ({err}); it will be recomputed", stacklevel=2)
        return None


# ---------------------------------------------------------------------------------------- the folder
def check_out(out: str | Path) -> Path:
    """Check, creating nothing, that ``out`` is a folder a run can write into or create; one-line errors
    name ``--out``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--out: {out} is an existing file; expected a folder")
    existing = next(p for p in (out.absolute(), *out.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise RunFolderError(f"--out: {existing} is a file, so the folder {out} cannot be made under it")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunFolderError(f"--out: {existing} is not writable; choose another folder")
    return out


def prepare(out: str | Path) -> Path:
    """Create the run folder ``out`` (and its parents) or check the existing one; one-line errors name
    ``--out``."""
    out = check_out(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunFolderError(f"--out: cannot create the folder {out} ({err.strerror or err})") from None
    return out


@contextlib.contextmanager
def lock(out: str | Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on the run folder ``out`` (created by :func:`prepare`).

    Raises :class:`FolderInUseError` naming the holder's pid when another process holds it.
    """
    import fcntl

    path = prepare(out) / LOCK_FILE
    try:
        fd = _open(path, os.O_RDWR | os.O_CREAT)
    except OSError as err:
        raise RunFolderError(f"--out: cannot write into {path.parent} ({err.strerror or err})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise FolderInUseError(
                f"--out: {path.parent} is in use by pid {holder} (another run writes into it); wait for it "
                "to finish or choose another folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


# ------------------------------------------------------------------------------------------- records
class RecordLog:
    """An append-only JSONL file of records, safe against crashes and Ctrl-C.

    :meth:`append` writes a whole batch with one ``write`` call, then flushes and fsyncs, so the file
    only ever ends inside a line when the process is killed during that call. :meth:`read` drops such a
    truncated last line and (with ``repair=True``) cuts the file back to its last complete line. Blank
    lines are skipped.
    """

    def __init__(self, path: str | Path, key: Callable[[dict[str, Any]], object]):
        self.path = Path(path)
        self.key = key

    def read(self, repair: bool = False) -> list[dict[str, Any]]:
        """All complete records. A bad line (not a JSON object, or ``key`` fails on it) other than the last
        one raises ``ValueError`` naming the file and the line."""
        data = read_bytes(self.path)
        if data is None:
            return []
        lines = data.split(b"\n")
        records: list[dict[str, Any]] = []
        good_bytes = 0
        for number, line in enumerate(lines, start=1):
            is_last = number == len(lines) or (number == len(lines) - 1 and lines[-1] == b"")
            if number == len(lines) and line == b"":
                break
            try:
                if number == len(lines):  # no newline after it: written only partly
                    raise ValueError("line is not terminated")
                if line.strip():
                    records.append(self._parse(line))
            except (ValueError, KeyError, TypeError) as err:
                if is_last:  # the last line of the file, cut short by a crash: ignore it
                    break
                raise ValueError(
                    f"{self.path}: line {number} is not a valid record ({err}); delete that line (or the "
                    "file) to recompute it"
                ) from None
            good_bytes += len(line) + 1
        if repair and good_bytes < len(data):
            truncate(self.path, good_bytes)
        return records

    def _parse(self, line: bytes) -> dict[str, Any]:
        record = json.loads(line)
        if not isinstance(record, dict):
            raise ValueError("line is not a JSON object")
        self.key(record)
        return record

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        """Append ``records`` durably: one write, flush and fsync. A non-finite float is refused with the
        field that holds it (JSON has no NaN)."""
        if records:
            append_bytes(self.path, "".join(json_line(r) for r in records).encode("utf-8"))

    def append_new(self, records: Sequence[dict[str, Any]], done: set) -> int:
        """Append (as :meth:`append`) the ``records`` whose key is not in ``done``, add their keys to it and
        return how many there were: a resumed cell writes only what the log lacks."""
        new = [r for r in records if self.key(r) not in done]
        self.append(new)
        done.update(self.key(r) for r in new)
        return len(new)


def json_line(record: dict[str, Any]) -> str:
    """``record`` as one JSON line (keys sorted); ValueError naming a field holding NaN or infinity."""
    for name, value in record.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"record field {name!r} is {value} (JSON has no NaN or infinity): {record}")
    return json.dumps(record, sort_keys=True, allow_nan=False) + "\n"


# ------------------------------------------------------------------------------------------- pinning
def check_config(out_dir: str | Path, config: Any, write: bool = True) -> None:
    """Store ``config`` (a dataclass with ``to_dict()``, or a JSON-ready dict of a command's arguments) in
    ``out_dir/config.json``, or check that the stored one equals it.

    Raises :class:`ConfigMismatchError` naming the differing fields when it does not.
    """
    path = Path(out_dir) / CONFIG_FILE
    wanted = json.loads(json.dumps(config)) if isinstance(config, dict) else config.to_dict()
    text = read_bytes(path)
    if text is not None:
        try:
            stored = json.loads(text)
        except ValueError as err:
            raise ConfigMismatchError(f"{path} is not valid JSON ({err}); use a new --out folder") from None
        stored = stored if isinstance(stored, dict) else {}
        # a field a newer version added, left at None, does not make an older folder another run
        diff = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
        if diff:
            details = "; ".join(f"{k}: stored {stored.get(k)!r}, now {wanted.get(k)!r}" for k in diff)
            raise ConfigMismatchError(
                f"{Path(out_dir)} holds a run made with different arguments ({details}); "
                "rerun with the same arguments to resume, or choose another --out folder"
            )
    elif write:
        write_atomic(path, json.dumps(wanted, indent=2, sort_keys=True) + "\n")


def data_digest(arrays: Iterable[np.ndarray]) -> str:
    """SHA-256 over the shapes, dtypes and bytes of ``arrays``, in order: the pixels a run is made of."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def check_data(out_dir: str | Path, digest: str, has_results: bool, write: bool = True) -> None:
    """Store ``digest`` (see :func:`data_digest`) in ``out_dir/data.sha256``, or check that the stored one
    equals it: a run resumed on other pixels would mix two datasets in one table. A folder that holds
    results but no digest (made by an older version) cannot be checked and is refused too."""
    path = Path(out_dir) / DATA_DIGEST_FILE
    stored = read_bytes(path)
    if stored is not None:
        stored_text = stored.decode("ascii", "replace").strip()
        if len(stored_text) != 64:
            raise ConfigMismatchError(
                f"{path} does not hold a SHA-256 digest (it is {len(stored)} bytes, expected 64 hex digits): "
                "the folder's data cannot be checked; delete the file if the folder holds no results, else "
                "choose another --out folder"
            )
        if stored_text != digest:
            raise ConfigMismatchError(
                f"{Path(out_dir)} holds results for other data than --data gives now (images or "
                "annotations changed since the run started, or read by another version); choose another "
                "--out folder"
            )
    elif has_results:
        raise ConfigMismatchError(
            f"{Path(out_dir)} holds results but no {DATA_DIGEST_FILE} (an older version made it), so its "
            "images cannot be checked against --data; choose another --out folder"
        )
    elif write:
        write_atomic(path, digest + "\n")


# ---------------------------------------------------------------------------------------------- maps
MAPS_DIR = "maps"


class BatchMaps:
    """The saliency maps of one batch, saved as they are computed so that a run killed during a batch's
    maps resumes past them (maps are deterministic); :meth:`clear` deletes them once the batch is recorded.

    Example:
        >>> store = BatchMaps("runs/demo", batch=[0, 1, 2])
        >>> maps = store.get("cameras", lambda: compute_cameras_maps())  # computed once, then read back
    """

    def __init__(self, out_dir: str | Path, batch: Sequence[int]):
        self.folder = Path(out_dir) / MAPS_DIR
        self.stem = f"{batch[0]:06d}-{batch[-1]:06d}"

    def get(self, name: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """The saved maps ``name`` of this batch, or ``compute()``'s, saved before they are returned."""
        path = self.folder / f"{self.stem}-{name}.npz"
        saved = load_arrays(path)
        if saved is not None and "maps" in saved:
            return saved["maps"]
        maps = compute()
        make_dir(self.folder)
        save_arrays(path, {"maps": maps})
        return maps

    def clear(self) -> None:
        """Delete this batch's saved maps (a link there is removed, never followed)."""
        if self.folder.is_dir() and not self.folder.is_symlink():
            for path in self.folder.glob(f"{self.stem}-*.npz"):
                path.unlink(missing_ok=True)
