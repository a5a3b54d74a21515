"""MSVD retrieval: 1,200 / 100 / 670 YouTube clips, about 40 captions each (every caption is a text query).

Files, as published:
- collaborative-experts / CLIP4Clip split lists `train_list.txt`, `val_list.txt`, `test_list.txt` (clip names such
  as `-4wsuPCjDBc_5_15`), with prepare.benchmark.captions_db one of
  - CLIP4Clip's `raw-captions.pkl`: {clip: [[token, ...], ...]}, read with an unpickler that refuses every class
    (the file holds only dicts, lists and strings, so nothing else should load);
  - the original `AllVideoDescriptions.txt`: `clip caption words...` lines, `#` comment lines;
- or the LAVIS JSON lists (`ret_train_all.json`, `ret_val.json`, `ret_test.json`) of {"video", "caption"}.
Videos are `YouTubeClips/<clip>.avi`.
"""
from __future__ import annotations

import pickle
from pathlib import Path

from stgt_pipeline.params import PrepareConfig
from stgt_pipeline.sources.benchmarks.common import Annotations, fail, read_caption_json, read_splits
from stgt_pipeline.sources.benchmarks.plan import BenchmarkPlan, build_plan

EXTENSIONS = (".avi", ".mp4")


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> type:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a captions file holds only plain data")


def read_raw_captions_pkl(path: Path) -> dict[str, list[str]]:
    try:
        with open(path, "rb") as fh:
            data = _PlainUnpickler(fh).load()
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise fail(path, None, f"not a CLIP4Clip raw-captions pickle ({exc})") from None
    if not isinstance(data, dict):
        raise fail(path, None, f"expected {{clip: [[token, ...], ...]}}, got {type(data).__name__}")
    captions: dict[str, list[str]] = {}
    for clip, sentences in data.items():
        if not isinstance(sentences, list) or not all(isinstance(s, list) and s and all(isinstance(t, str) for t in s)
                                                      for s in sentences):
            raise fail(path, f"clip {clip!r}", "expected a list of token lists")
        captions[str(clip)] = [" ".join(tokens) for tokens in sentences]
    return captions


def read_descriptions_txt(path: Path) -> dict[str, list[str]]:
    captions: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            clip, _, caption = line.partition(" ")
            if not caption.strip():
                raise fail(path, line_no, f"expected 'clip caption', found {line[:60]!r}", "caption")
            captions.setdefault(clip, []).append(caption.strip())
    return captions


def read_captions_db(path: Path) -> dict[str, list[str]]:
    return read_raw_captions_pkl(path) if path.suffix.lower() == ".pkl" else read_descriptions_txt(path)


def read(cfg: PrepareConfig) -> Annotations:
    return read_splits(cfg, read_caption_json, EXTENSIONS, read_captions_db)


def build(cfg: PrepareConfig, dataset_dir: Path) -> BenchmarkPlan:
    return build_plan(cfg, dataset_dir, read(cfg), "benchmark_captions")
