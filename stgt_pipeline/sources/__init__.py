"""Where prepare's clips come from: a table of sources (name -> module with `build`).

A source's `build(cfg, dataset_dir)` returns a `SourcePlan`: the data root its manifest paths are relative to and
an iterator yielding, per clip, the manifest rows it produced (a clip and its time-reversed twin, say). Work happens
while iterating, so the stage can show progress and a failure part-way leaves the atomic output unpublished.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol

from stgt_pipeline.errors import StgtError
from stgt_pipeline.io.manifest import COLUMNS
from stgt_pipeline.params import PrepareConfig
from stgt_pipeline.sources.benchmarks import SOURCES as BENCHMARK_SOURCES

Row = dict[str, Any]

# Imported lazily: a folder run should not pay for the synthetic renderer, nor the other way round.
SOURCES: dict[str, str] = {
    "synthetic": "stgt_pipeline.sources.synthetic",
    "folder": "stgt_pipeline.sources.folder",
    **BENCHMARK_SOURCES,
}


@dataclass
class SourcePlan:
    data_root: Path | str  # a folder, or a URL string (s3://bucket/prefix) kept as given
    total: int  # clips, for the progress bar
    clips: Iterator[list[Row]]
    # Source-specific facts for the stage summary, complete once `clips` is exhausted (e.g. missing videos).
    report: dict[str, Any] = field(default_factory=dict)


class Builder(Protocol):
    def __call__(self, cfg: PrepareConfig, dataset_dir: Path) -> SourcePlan: ...


def get(name: str) -> Builder:
    if name not in SOURCES:
        raise StgtError(f"prepare.source: unknown source {name!r}; expected one of {sorted(SOURCES)}")
    return importlib.import_module(SOURCES[name]).build


def manifest_row(
    video_id: str,
    rel_path: str,
    split: str,
    captions: list[str],
    qa: list[dict[str, str]],
    twin_id: str | None = None,
    **facts: Any,
) -> Row:
    """A manifest row; `facts` fill the container columns (duration, fps, width, height, codec, sha256)."""
    unknown = set(facts) - set(COLUMNS)
    if unknown:
        raise ValueError(f"not manifest columns: {sorted(unknown)}")
    row: Row = {c: None for c in COLUMNS}
    row.update(video_id=video_id, path=rel_path, split=split, captions=captions, qa=qa, twin_id=twin_id, **facts)
    return row
