"""Report tables from hand-made records: statistics against a direct computation, and the written files."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from conftest import grid_record

from evaluation.report import (
    SUMMARY_COLUMNS,
    markdown_table,
    records_csv,
    summarize,
    text_table,
    write_report,
)

_record = grid_record


@pytest.fixture
def records():
    """4 images; image 3 is misclassified; cameras fails on image 2; random fails on image 0."""
    recs = []
    full = [1.0, 2.0, 4.0, 8.0]
    cam = [0.5, 0.5, 9.0, 1.0]
    rnd = [2.0, 1.0, 2.0, 1.0]
    for i in range(4):
        correct = i != 3
        recs.append(_record(i, "pgd", "none", 1.0, full[i], correct=correct))
        recs.append(_record(i, "pgd", "cameras", 0.1, cam[i], success=i != 2, correct=correct))
        recs.append(_record(i, "pgd", "random", 0.1, rnd[i], success=i != 0, correct=correct))
    return recs


def test_summary_matches_direct_computation(records):
    rows = {(r["attack"], r["focuser"], r["area"]): r for r in summarize(records)}
    assert list(rows) == [("pgd", "none", 1.0), ("pgd", "cameras", 0.1), ("pgd", "random", 0.1)]
    full, cam, rnd = rows[("pgd", "none", 1.0)], rows[("pgd", "cameras", 0.1)], rows[("pgd", "random", 0.1)]
    # Only images 0..2 are correctly classified.
    assert full["n"] == cam["n"] == rnd["n"] == 3
    assert full["success_rate"] == 1.0 and cam["success_rate"] == pytest.approx(2 / 3)
    assert full["median_l2"] == pytest.approx(np.median([1.0, 2.0, 4.0]))
    assert cam["median_l2"] == pytest.approx(np.median([0.5, 0.5]))  # image 2 failed: not in the median
    assert cam["median_linf"] == pytest.approx(0.125)
    # Paired reduction: images where both succeeded: 0 and 1 -> ratios 0.5, 0.25.
    assert cam["l2_reduction"] == pytest.approx(1 - np.median([0.5, 0.25]))
    assert cam["n_paired"] == 2
    # Against random: both succeeded only on image 1 -> ratio 0.5.
    assert cam["l2_reduction_vs_random"] == pytest.approx(0.5)
    assert cam["n_paired_random"] == 1
    assert rnd["l2_reduction"] == pytest.approx(1 - np.median([1.0 / 2.0, 2.0 / 4.0]))  # images 1, 2
    assert rnd["l2_reduction_vs_random"] is None
    assert full["l2_reduction"] is None and full["n_paired"] is None  # not compared with itself


def test_duplicate_records_keep_the_first_as_the_runner_does(records):
    duplicate = _record(0, "pgd", "cameras", 0.1, 100.0)
    assert summarize([*records, duplicate]) == summarize(records)


@pytest.mark.parametrize(
    ("value", "fmt", "text"),
    [
        (0.9995, "pct", ">99.9%"),  # not every attack succeeded: never printed as 100.0%
        (1.0, "pct", "100.0%"),
        (-0.0004, "pct", "0.0%"),  # no "-0.0%"
        (-0.0006, "pct", "-0.1%"),
        (0.141, "pct", "14.1%"),
        (204.5, "count", "204.5"),  # a median halfway between two counts is not rounded to even
        (205.0, "count", "205"),
        (None, "count", "–"),
    ],
)
def test_cell_formats(value, fmt, text):
    assert markdown_table([{"v": value}], [("v", "v", fmt)]).splitlines()[-1] == f"| {text} |"


def test_summary_order_is_independent_of_record_order(records):
    rng = np.random.default_rng(0)
    shuffled = [records[i] for i in rng.permutation(len(records))]
    first = {(r["attack"], r["focuser"], r["area"]): r for r in summarize(records)}
    second = {(r["attack"], r["focuser"], r["area"]): r for r in summarize(shuffled)}
    assert first == second


def test_group_without_correct_images_has_empty_statistics():
    recs = [_record(0, "fgsm", "none", 1.0, 1.0, correct=False)]
    (row,) = summarize(recs)
    assert row["n"] == 0 and row["success_rate"] is None and row["median_l2"] is None
    assert "–" in markdown_table([row], SUMMARY_COLUMNS)


def test_markdown_and_text_tables_have_one_line_per_row(records):
    rows = summarize(records)
    md = markdown_table(rows, SUMMARY_COLUMNS).strip().splitlines()
    assert len(md) == 2 + len(rows)
    assert all(line.count("|") == len(SUMMARY_COLUMNS) + 1 for line in md)
    assert "| pgd | cameras | 10% | 3 | 66.7% |" in md[3]
    # each reduction with its bootstrap interval and its number of pairs; one pair has no interval
    assert md[3].endswith("| 62.5% | [50.0%, 75.0%] | 2 | 50.0% | – | 1 |")
    assert md[2].endswith("| – | – | – | – | – | – |")  # the unfocused row is not compared with itself
    assert "full" in md[2]
    text = text_table(rows, SUMMARY_COLUMNS).splitlines()
    assert len(text) == 2 + len(rows) and len({len(line) for line in text[:2]}) == 1


def test_records_csv_round_trips(records):
    rows = list(csv.DictReader(records_csv(records).splitlines()))
    assert len(rows) == len(records)
    assert [float(r["l2"]) if r["l2"] else None for r in rows] == [r["l2"] for r in records]
    assert rows[0]["eps"] == ""  # None is written as an empty cell
    assert any(r["l2"] == "" for r in rows)  # so is a failed attack's norm


def test_write_report_writes_consistent_files(tmp_path, records):
    result = write_report(tmp_path, records, config={"model": "m", "n": 4}, figures=True)
    assert (tmp_path / "report.md").read_text().count("| pgd |") == 3
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["config"] == {"model": "m", "n": 4}
    assert data["summary"] == json.loads(json.dumps(result["rows"]))
    assert (tmp_path / "figures" / "norm_vs_area_pgd.png").stat().st_size > 0
    assert len((tmp_path / "records.csv").read_text().splitlines()) == len(records) + 1


def test_attack_grid_figure(tmp_path):
    from evaluation.plots import attack_grid

    rng = np.random.default_rng(0)
    x = rng.random((2, 3, 16, 16), dtype=np.float32)
    examples = {
        "x": x,
        "adv:none": x * 0.9,
        "adv:cameras": x * 0.95,
        "map:cameras": rng.random((2, 16, 16), dtype=np.float32),
        "mask:cameras": (rng.random((2, 1, 16, 16)) > 0.9).astype(np.float32),
    }
    path = attack_grid(examples, tmp_path / "grid.png")
    assert path.stat().st_size > 0
    with pytest.raises(ValueError, match="adv"):
        attack_grid({"x": x}, tmp_path / "empty.png")


def test_failed_attacks_with_null_norms_are_left_out(records):
    """As the runner writes them: a failed or unattempted attack has null norms; the summary is the same
    as with any placeholder value there, and the CSV leaves the cells empty."""
    nulled = [
        {**r, **({k: None for k in ("l0", "l0_pixels", "l1", "l2", "linf")} if not r["success"] else {})}
        for r in records
    ]
    assert summarize(nulled) == summarize(records)
    rows = list(csv.DictReader(records_csv(nulled).splitlines()))
    assert [row["l2"] == "" for row in rows] == [not r["success"] for r in nulled]


def test_summary_rows_carry_quartiles_and_intervals(records):
    rows = {(r["focuser"], r["area"]): r for r in summarize(records)}
    full, cam = rows[("none", 1.0)], rows[("cameras", 0.1)]
    assert (full["q1_l2"], full["q3_l2"]) == pytest.approx(tuple(np.percentile([1.0, 2.0, 4.0], [25, 75])))
    assert (cam["q1_linf"], cam["q3_linf"]) == (0.125, 0.125)
    # two pairs (reductions 0.5 and 0.75): resampled medians are 0.5, 0.625 or 0.75
    assert cam["l2_reduction_ci"] == [0.5, 0.75]
    assert cam["l2_reduction_vs_random_ci"] is None  # one pair: no interval
    assert full["l2_reduction_ci"] is None


def test_results_json_rows_hold_the_interval_as_two_numbers(tmp_path, records):
    write_report(tmp_path, records, figures=False)
    rows = json.loads((tmp_path / "results.json").read_text())["summary"]
    cam = next(r for r in rows if r["focuser"] == "cameras")
    assert cam["l2_reduction_ci"] == [0.5, 0.75]
    assert "95 % CI" in (tmp_path / "report.md").read_text()


def test_budgets_found_at_the_search_floor_are_reported(tmp_path):
    from evaluation.configs import ExperimentConfig

    config = ExperimentConfig(attacks=("pgd",), focusers=("cameras",), areas=(0.1,)).to_dict()
    assert config["attack_params"]["pgd"]["eps_min"] == 1 / 1024
    records = [
        _record(0, "pgd", "none", 1.0, 0.5, eps=1 / 1024),  # at the floor: an upper bound
        _record(1, "pgd", "none", 1.0, 0.5, eps=2 / 1024),
        _record(0, "pgd", "cameras", 0.1, 0.4, eps=4 / 1024),
        _record(1, "pgd", "cameras", 0.1, 0.4, eps=1 / 1024, success=False),  # failed: no budget found
    ]
    write_report(tmp_path, records, config=config, figures=False)
    report = (tmp_path / "report.md").read_text()
    assert "## Budgets at the search's floor" in report and "pgd none: 1." in report
    assert json.loads((tmp_path / "results.json").read_text())["budgets_at_floor"] == {"pgd/none": 1}
    write_report(tmp_path, records[1:], config=config, figures=False)
    assert "floor" not in (tmp_path / "report.md").read_text()
