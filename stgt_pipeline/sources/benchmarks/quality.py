"""The benchmark's data-quality suite (suites/benchmark_{captions,qa}.json here), run on per-split counts.

Per split rather than per video so a streamed 10M-clip corpus is checked from its running counts: split sizes
against the full files' published sizes (prepare.benchmark.expected_videos, set by the presets), the share of
missing videos, captions per video; the test set's answer-vocabulary coverage is reported as a metric.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from stgt_pipeline.io.atomic import write_json
from stgt_pipeline.params import BenchmarkSource
from stgt_pipeline.quality.datacard import DatasetStats
from stgt_pipeline.quality.gx import SuiteResult, validate_dataframe

SUITES_DIR = Path(__file__).with_name("suites")


def split_counts(stats: DatasetStats, bench: BenchmarkSource) -> pd.DataFrame:
    rows = []
    for name, s in stats.splits.items():
        rows.append({
            "split": name,
            "annotated_videos": s.annotated,
            "expected_videos": bench.expected_videos.get(name),
            "videos": s.present,
            "missing_share": s.missing / s.annotated if s.annotated else 0.0,
            "min_captions": min(s.captions_per_video) if s.present else None,
            "questions": s.questions,
            "answer_coverage": stats.coverage(name),
        })
    frame = pd.DataFrame(rows)
    # Nullable integers: a split without a published size or without videos holds <NA>, which GX skips.
    return frame.astype({"expected_videos": "Int64", "min_captions": "Int64"})


def check(stats: DatasetStats, bench: BenchmarkSource, suite: str, out_dir: Path, title: str) -> SuiteResult:
    """Run the suite, write quality.html and quality.json into the dataset folder."""
    frame = split_counts(stats, bench)
    result = validate_dataframe(
        frame, SUITES_DIR / f"{suite}.json",
        {"max_missing_share": bench.max_missing_share, "min_captions_per_video": bench.min_captions_per_video},
        html_path=out_dir / "quality.html", id_column="split", title=f"Data quality: {title}")
    write_json(out_dir / "quality.json", {**result.as_dict(), "splits": frame.astype(object).where(frame.notna(), None).to_dict("records")})
    return result
