"""benchmarks/gpnn_speed.py: the GPNN each row measures."""

from __future__ import annotations


def test_speed_rows_take_the_same_overrides() -> None:
    """A FAISS row with overrides is a FAISS row with those settings, at the row's iterations; GPNN's
    settings for a plain row, GPNN-CAM's preset for a GPNN-CAM row."""
    from benchmarks.gpnn_speed import _gpnn, is_faiss_row
    from evaluation.focusers import GPNN_CAM_GPNNS

    assert [is_faiss_row(s) for s in ("faiss", "authors+nprobe=4", "faiss+early_stop=0.01", "shifts")] == [
        True,
        True,
        True,
        False,
    ]
    row = _gpnn("faiss+early_stop=0.01", 3, False)
    assert (row.early_stop, row.iters, row.search, row.candidates) == (
        0.01,
        3,
        "faiss",
        GPNN_CAM_GPNNS["faiss"]["candidates"],
    )
    assert (row.init, _gpnn("faiss+early_stop=0.01", 3, False, cam=True).init) == ("source", "zeros")
    authors = _gpnn("authors+nprobe=4", 2, False)
    assert (authors.nprobe, authors.iters, authors.nlist) == (4, 2, 64)
    assert _gpnn("shifts", 1, False).search == "shifts"


def test_search_recall_is_one_for_an_exhaustive_search_and_grows_with_probes() -> None:
    """In place, a flat index finds a nearest key for every query; an IVF search with 1 probe misses some
    and finds more with every cell probed (then all: the flat search)."""
    from benchmarks.gpnn_speed import _gpnn, _photo, search_recall

    image = _photo(32)
    recalls = [
        search_recall(_gpnn(f"faiss+{settings}+patch_size=5", 2, False), image, 2)
        for settings in ("index=flat", "nlist=16+nprobe=1", "nlist=16+nprobe=16")
    ]
    assert recalls[0] == 1.0 and recalls[2] == 1.0
    assert 0.5 < recalls[1] < 1.0
