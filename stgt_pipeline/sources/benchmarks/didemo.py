"""DiDeMo, paragraph-to-video retrieval: a video's moment descriptions joined into one paragraph.

Files, as published: the official LocalizingMoments `{train,val,test}_data.json`, a list of {"description",
"video", "times", "annotation_id", ...} (one item per moment), and the collaborative-experts split lists that
CLIP4Clip intersects them with (8,392 / 1,065 / 1,004 videos). Like CLIP4Clip, the descriptions of a video are
joined with spaces in file order; the reference trains on train + val (the presets put both in `train`).

Video ids are the Flickr file names exactly as listed, original extension included (.mov, .avi, .m4v, .mpg, .3gp,
... and some names that end in a bare "."), because that is how both files name them. A transcoded copy
(`<name without extension>.mp4`) is found too.
"""
from __future__ import annotations

from pathlib import Path

from stgt_pipeline.params import PrepareConfig
from stgt_pipeline.sources.benchmarks.common import Annotations, VideoEntry, load_json, read_splits, records, text
from stgt_pipeline.sources.benchmarks.plan import BenchmarkPlan, build_plan

TRANSCODED = (".mp4",)


def read_annotation(path: Path, split: str) -> dict[str, VideoEntry]:
    """Each video with its moment descriptions, in file order (joined into the paragraph by `read`)."""
    entries: dict[str, VideoEntry] = {}
    for i, item in enumerate(records(load_json(path), path, "moment descriptions")):
        video = text(item, "video", path, f"record {i}")
        entries.setdefault(video, VideoEntry(video)).captions.append(text(item, "description", path, f"record {i}"))
    return entries


def candidates(video_id: str, extensions: tuple[str, ...]) -> tuple[str, ...]:
    stem = video_id.rsplit(".", 1)[0] if "." in video_id else video_id
    return (video_id,) + tuple(f"{stem}{ext}" for ext in extensions)


def read(cfg: PrepareConfig) -> Annotations:
    annotations = read_splits(cfg, read_annotation, TRANSCODED, candidates=candidates)
    descriptions: dict[str, int] = {}
    for entry in annotations.entries:
        descriptions[entry.split] = descriptions.get(entry.split, 0) + len(entry.captions)
        entry.captions = [" ".join(entry.captions)]
    annotations.notes += [f"{split}: {n:,} moment descriptions of the kept videos, joined into one paragraph a video"
                          for split, n in descriptions.items()]
    return annotations


def build(cfg: PrepareConfig, dataset_dir: Path) -> BenchmarkPlan:
    return build_plan(cfg, dataset_dir, read(cfg), "benchmark_captions")
