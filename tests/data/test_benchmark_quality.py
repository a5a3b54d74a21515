"""The benchmark quality suites (stgt_pipeline/sources/benchmarks/suites) on per-split counts: thresholds come from
prepare.benchmark, and a failing row is named by its split (GX reports the `split` column of each failing row)."""
from __future__ import annotations

import json

import pytest

from stgt_pipeline.errors import StgtError
from stgt_pipeline.params import BenchmarkSource
from stgt_pipeline.quality.datacard import DatasetStats
from stgt_pipeline.quality.gx import validate_dataframe
from stgt_pipeline.sources.benchmarks import quality


def counts(missing_val: int = 0, captions_test: int = 2) -> DatasetStats:
    """train: 4 videos, 2 captions each; val: 2 annotated, `missing_val` not found; test: 2 videos."""
    stats = DatasetStats()
    for split, present, missing, captions in (("train", 4, 0, 2), ("val", 2 - missing_val, missing_val, 2),
                                              ("test", 2, 0, captions_test)):
        for _ in range(present):
            stats.add_annotated(split, [])
            stats.add_present(split, [f"caption {k}" for k in range(captions)])
        for _ in range(missing):
            stats.add_annotated(split, [])
            stats.add_missing(split)
    return stats


def test_complete_splits_pass_and_write_both_reports(tmp_path):
    bench = BenchmarkSource(expected_videos={"test": 2}, min_captions_per_video=2)
    result = quality.check(counts(), bench, "benchmark_captions", tmp_path, "msrvtt")
    assert result.success and result.summary == []
    assert "PASSED" in (tmp_path / "quality.html").read_text()
    report = json.loads((tmp_path / "quality.json").read_text())
    assert report["success"] and [r["split"] for r in report["splits"]] == ["train", "val", "test"]


def test_failing_splits_are_named_by_split_with_thresholds_from_params(tmp_path):
    # val misses 1 of 2 videos (share 0.5 > 0.25); test has 1 caption per video, below the configured 2.
    bench = BenchmarkSource(expected_videos={"test": 2}, max_missing_share=0.25, min_captions_per_video=2)
    result = quality.check(counts(missing_val=1, captions_test=1), bench, "benchmark_captions", tmp_path, "msrvtt")
    assert not result.success
    assert "expect_column_values_to_be_between(missing_share): 1 of 3 rows fail, e.g. val" in result.summary
    assert "expect_column_values_to_be_between(min_captions): 1 of 3 rows fail, e.g. test" in result.summary
    assert len(result.summary) == 2
    assert "FAILED" in (tmp_path / "quality.html").read_text()
    # The same counts pass when prepare.benchmark allows them: the thresholds are the params', not the suite file's.
    lenient = BenchmarkSource(expected_videos={"test": 2}, max_missing_share=0.5, min_captions_per_video=1)
    assert quality.check(counts(missing_val=1, captions_test=1), lenient, "benchmark_captions", tmp_path, "m").success


def test_a_suite_parameter_nobody_gives_fails_naming_the_suite_file_and_the_parameter():
    frame = quality.split_counts(counts(), BenchmarkSource())
    suite = quality.SUITES_DIR / "benchmark_captions.json"
    with pytest.raises(StgtError, match=r"benchmark_captions\.json: .*\$PARAMETER min_captions_per_video"):
        validate_dataframe(frame, suite, {"max_missing_share": 0.1}, id_column="split")


def test_a_table_without_the_id_column_fails_naming_it():
    # GX would mark every row expectation failed without a reason; the wrapper says which column is missing.
    frame = quality.split_counts(counts(), BenchmarkSource()).drop(columns="split")
    suite = quality.SUITES_DIR / "benchmark_captions.json"
    with pytest.raises(ValueError, match=r"benchmark_captions\.json: the validated table has no id column 'split'"):
        validate_dataframe(frame, suite, {"max_missing_share": 0.1, "min_captions_per_video": 1}, id_column="split")
