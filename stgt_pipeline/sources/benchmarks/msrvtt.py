"""MSR-VTT retrieval: the 9k/7k/full training splits, the 1k-A test, the full 2,990-video test.

Files, as published:
- CLIP4Clip's `MSRVTT_JSFUSION_test.csv` (header key,vid_key,video_id,sentence; the 1k-A test, one caption a video)
  and `MSRVTT_train.9k.csv` (header video_id: an id list, so give it under `ids`);
- the LAVIS/STGT/VindLU JSON lists (`ret_train9k.json`, `msrvtt_ret_test1k.json`) and VIOLET's split dict;
- collaborative-experts split lists (`train_list_jsfusion.txt` = 9k, `train_list_miech.txt` = 7k,
  `{train,val,test}_list_full.txt` = the official 6,513/497/2,990);
- `MSRVTT_data.json` as prepare.benchmark.captions_db: {"videos": [{"video_id", ...}], "sentences":
  [{"video_id", "caption", "sen_id"}]}, the 20 captions of each of the 10k videos, for splits given as id lists.
Videos are `<video_id>.mp4` (MSRVTT/videos/all in LAVIS).
"""
from __future__ import annotations

from pathlib import Path

from stgt_pipeline.params import PrepareConfig
from stgt_pipeline.sources.benchmarks.common import (
    Annotations,
    VideoEntry,
    csv_rows,
    fail,
    load_json,
    read_caption_json,
    read_splits,
    records,
    text,
)
from stgt_pipeline.sources.benchmarks.plan import BenchmarkPlan, build_plan

EXTENSIONS = (".mp4",)
JSFUSION_HEADER = ["key", "vid_key", "video_id", "sentence"]


def read_jsfusion_csv(path: Path) -> dict[str, VideoEntry]:
    entries: dict[str, VideoEntry] = {}
    for line, row in csv_rows(path, JSFUSION_HEADER):
        video_id = text(row, "video_id", path, line)
        entries.setdefault(video_id, VideoEntry(video_id)).captions.append(text(row, "sentence", path, line))
    return entries


def read_annotation(path: Path, split: str) -> dict[str, VideoEntry]:
    if path.suffix.lower() == ".csv":
        return read_jsfusion_csv(path)
    return read_caption_json(path, split)


def read_captions_db(path: Path) -> dict[str, list[str]]:
    """MSRVTT_data.json (CLIP4Clip) / train_val_videodatainfo.json (official): captions in file order."""
    data = load_json(path)
    if not isinstance(data, dict) or "sentences" not in data:
        raise fail(path, None, 'expected {"videos": [...], "sentences": [{"video_id", "caption", "sen_id"}, ...]}',
                   "sentences")
    captions: dict[str, list[str]] = {}
    for i, item in enumerate(records(data["sentences"], path, "sentences")):
        where = f"sentences[{i}]"
        captions.setdefault(text(item, "video_id", path, where), []).append(text(item, "caption", path, where))
    return captions


def read(cfg: PrepareConfig) -> Annotations:
    return read_splits(cfg, read_annotation, EXTENSIONS, read_captions_db)


def build(cfg: PrepareConfig, dataset_dir: Path) -> BenchmarkPlan:
    return build_plan(cfg, dataset_dir, read(cfg), "benchmark_captions")
