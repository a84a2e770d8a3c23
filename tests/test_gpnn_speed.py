"""benchmarks/gpnn_speed.py: the GPNN each row measures."""

from __future__ import annotations


def test_speed_rows_take_the_same_overrides() -> None:
    """A FAISS row with overrides is a FAISS row with those settings, at the row's iterations; GPNN's
    settings for a plain row, GPNN-CAM's preset for a GPNN-CAM row."""
    from benchmarks.gpnn_speed import _gpnn, is_faiss_row
    from evaluation.focusers import GPNN_CAM_SETTINGS

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
        GPNN_CAM_SETTINGS["candidates"],
    )
    assert (row.init, _gpnn("faiss+early_stop=0.01", 3, False, cam=True).init) == ("source", "zeros")
    authors = _gpnn("authors+nprobe=4", 2, False)
    assert (authors.nprobe, authors.iters, authors.nlist) == (4, 2, 64)
    assert _gpnn("shifts", 1, False).search == "shifts"
