"""WebVid-style pre-training corpora (WebVid-2M/10M, VIDAL, any video + caption list), streamed.

Files:
- the WebVid CSVs (`results_2M_train.csv`, `results_10M_train.csv`): columns videoid, name (the caption), page_dir,
  plus contentUrl, duration, ...; the video is `<page_dir>/<videoid>.mp4`, as the WebVid download script saves it;
- the LAVIS/STGT JSON list (`Webvid10m_video_caption_fliter.json`) or JSON lines of {"video": <path relative to
  the root>, "caption": str}; the video id is the file name without extension.
Rows are read, looked up and written one at a time (10.7M rows do not fit a DataFrame on a laptop), so there is
no de-duplication: WebVid video ids are unique, and the validate stage checks it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from stgt_pipeline.errors import StgtError
from stgt_pipeline.params import PrepareConfig
from stgt_pipeline.sources.benchmarks.common import (
    Annotations,
    VideoEntry,
    csv_rows,
    read_jsonl,
    resolve,
    stem,
    text,
)
from stgt_pipeline.sources.benchmarks.plan import BenchmarkPlan, build_plan
from stgt_pipeline.sources.benchmarks.streaming import iter_json_array

CSV_COLUMNS = ["videoid", "name", "page_dir"]


def read_webvid_csv(path: Path, split: str) -> Iterator[VideoEntry]:
    for line, row in csv_rows(path, CSV_COLUMNS, extra_columns=True):
        video_id = text(row, "videoid", path, line)
        rel = f"{text(row, 'page_dir', path, line).strip('/')}/{video_id}.mp4"
        yield VideoEntry(video_id, split, captions=[text(row, "name", path, line)], names=(rel,))


def read_caption_list(path: Path, split: str) -> Iterator[VideoEntry]:
    items = read_jsonl(path) if path.suffix.lower() == ".jsonl" else iter_json_array(path)
    for line, item in items:
        video = text(item, "video", path, line)
        yield VideoEntry(stem(video), split, captions=[text(item, "caption", path, line)], names=(video,))


def count_rows(path: Path) -> int:
    """Lines less the CSV header, for the progress bar; a JSON array is not counted (0 = unknown)."""
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        return 0
    with open(path, "rb") as fh:
        lines = sum(block.count(b"\n") for block in iter(lambda: fh.read(1 << 20), b""))
    return max(lines - (suffix == ".csv"), 0)


def read(cfg: PrepareConfig) -> Annotations:
    bench = cfg.benchmark
    files: dict[str, list[Path]] = {}
    for split, spec in bench.splits.items():
        if spec.ids:
            raise StgtError(f"prepare.benchmark.splits.{split}.ids: a pre-training corpus takes no id lists")
        files[split] = [resolve(p, bench, f"splits.{split}.annotations") for p in spec.annotations]

    def entries() -> Iterator[VideoEntry]:
        for split, paths in files.items():
            for path in paths:
                reader = read_webvid_csv if path.suffix.lower() == ".csv" else read_caption_list
                yield from reader(path, split)

    counts = [count_rows(p) for paths in files.values() for p in paths]
    total = 0 if 0 in counts else sum(counts)
    return Annotations(entries=entries(), total=total, files={k: [str(p) for p in v] for k, v in files.items()})


def build(cfg: PrepareConfig, dataset_dir: Path) -> BenchmarkPlan:
    return build_plan(cfg, dataset_dir, read(cfg), "benchmark_captions")
