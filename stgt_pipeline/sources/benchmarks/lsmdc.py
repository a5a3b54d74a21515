"""LSMDC (movie description) retrieval: the 1k test of the LSMDC 2016 challenge.

Files: the LSMDC16 csv files CLIP4Clip reads (`LSMDC16_annos_training.csv`, `LSMDC16_annos_val.csv`,
`LSMDC16_challenge_1000_publictect.csv`). They are access-controlled by MPII, so no real copy is tested here; the
layout is taken from CLIP4Clip's loader, which asserts it. Assumption: no header, six tab-separated fields per line,
`clip_id \\t start_aligned \\t end_aligned \\t start_extracted \\t end_extracted \\t sentence`, and a line of any
other width is an error. A clip named on several lines gets every sentence.

Videos are `<movie>/<clip_id>.avi` (one folder per movie); they are found by name at any depth.
"""
from __future__ import annotations

from pathlib import Path

from stgt_pipeline.params import PrepareConfig
from stgt_pipeline.sources.benchmarks.common import Annotations, VideoEntry, fail, read_splits
from stgt_pipeline.sources.benchmarks.plan import BenchmarkPlan, build_plan

EXTENSIONS = (".avi", ".mp4")
FIELDS = ("clip_id", "start_aligned", "end_aligned", "start_extracted", "end_extracted", "sentence")


def read_annotation(path: Path, split: str) -> dict[str, VideoEntry]:
    entries: dict[str, VideoEntry] = {}
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            values = line.split("\t")
            if len(values) != len(FIELDS):
                raise fail(path, line_no, f"expected {len(FIELDS)} tab-separated fields ({', '.join(FIELDS)}), "
                                          f"found {len(values)}")
            clip_id, sentence = values[0].strip(), values[-1].strip()
            for name, value in (("clip_id", clip_id), ("sentence", sentence)):
                if not value:
                    raise fail(path, line_no, "empty", name)
            entries.setdefault(clip_id, VideoEntry(clip_id)).captions.append(sentence)
    return entries


def read(cfg: PrepareConfig) -> Annotations:
    return read_splits(cfg, read_annotation, EXTENSIONS)


def build(cfg: PrepareConfig, dataset_dir: Path) -> BenchmarkPlan:
    return build_plan(cfg, dataset_dir, read(cfg), "benchmark_captions")
