"""ActivityNet Captions, paragraph-to-video retrieval; val_1 is the test set (as in CLIP4Clip and its successors).

Files, as published: `train.json` and `val_1.json`, {"v_<youtube id>": {"duration", "timestamps", "sentences"}},
and the collaborative-experts lists `train_list.txt` (10,009), `val_1_list.txt` (4,917), `val_2_list.txt` (4,885)
of the videos that could still be downloaded. A video's sentences are joined with spaces into one paragraph.

Videos are `v_<youtube id>.mp4` (or .mkv/.webm as yt-dlp saved them); copies named without the `v_` are found too.
"""
from __future__ import annotations

from pathlib import Path

from stgt_pipeline.params import PrepareConfig
from stgt_pipeline.sources.benchmarks.common import Annotations, VideoEntry, fail, load_json, read_splits
from stgt_pipeline.sources.benchmarks.plan import BenchmarkPlan, build_plan

EXTENSIONS = (".mp4", ".mkv", ".webm")


def read_annotation(path: Path, split: str) -> dict[str, VideoEntry]:
    data = load_json(path)
    if not isinstance(data, dict):
        raise fail(path, None, f'expected {{"v_<id>": {{"duration", "timestamps", "sentences"}}}}, got {type(data).__name__}')
    entries: dict[str, VideoEntry] = {}
    for video_id, item in data.items():
        where = f"video {video_id!r}"
        if not isinstance(item, dict):
            raise fail(path, where, f"expected an object, got {type(item).__name__}")
        sentences = item.get("sentences")
        if not isinstance(sentences, list) or not sentences or not all(isinstance(s, str) for s in sentences):
            raise fail(path, where, "expected a non-empty list of strings", "sentences")
        timestamps = item.get("timestamps")
        if timestamps is not None and (not isinstance(timestamps, list) or len(timestamps) != len(sentences)):
            raise fail(path, where, f"expected one [start, end] per sentence ({len(sentences)})", "timestamps")
        paragraph = " ".join(s.strip() for s in sentences if s.strip())
        if not paragraph:
            raise fail(path, where, "only empty sentences", "sentences")
        entries[video_id] = VideoEntry(video_id, captions=[paragraph])
    return entries


def candidates(video_id: str, extensions: tuple[str, ...]) -> tuple[str, ...]:
    bare = video_id[2:] if video_id.startswith("v_") else video_id
    return tuple(f"{name}{ext}" for name in (video_id, bare) for ext in extensions)


def read(cfg: PrepareConfig) -> Annotations:
    return read_splits(cfg, read_annotation, EXTENSIONS, candidates=candidates)


def build(cfg: PrepareConfig, dataset_dir: Path) -> BenchmarkPlan:
    return build_plan(cfg, dataset_dir, read(cfg), "benchmark_captions")
