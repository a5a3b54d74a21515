"""The prepare stage: build the video-text corpus and its manifest.

Sources (stgt_pipeline/sources): `synthetic` renders a seeded corpus of shape clips into the dataset folder (the data
root is the dataset itself); `folder` indexes a user's videos where they lie (the data root is prepare.folder.root).
Splits: train, val, test, plus `probe` for the test clips' time-reversed twins (the temporal-order probe, kept out
of the retrieval test set); `twin_id` links each twin pair both ways.
"""
from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tqdm import tqdm

from stgt_pipeline import sources
from stgt_pipeline.io.atomic import atomic_dir
from stgt_pipeline.io.manifest import ManifestWriter
from stgt_pipeline.params import Params, write_resolved

RESOLVED_CONFIG = "config.resolved.yaml"


def run(params: Params, inputs: dict[str, Path], outputs: dict[str, Path]) -> dict[str, Any]:
    cfg = params.prepare
    started = time.perf_counter()
    counts = Counts()
    with atomic_dir(outputs["dataset"]) as tmp:
        plan = sources.get(cfg.source)(cfg, tmp)
        with ManifestWriter(tmp, plan.data_root, cfg.source) as writer:
            for clip_rows in tqdm(plan.clips, total=plan.total, desc=f"prepare ({cfg.source})", unit="clip",
                                  file=sys.stderr):
                writer.add(clip_rows)
                counts.add(clip_rows)
        write_resolved(params, ["prepare"], tmp / RESOLVED_CONFIG)
    return {"source": cfg.source, **counts.summary(), "seconds": round(time.perf_counter() - started, 2),
            **plan.report}


class Counts:
    """The stage summary, counted while rows stream past (a corpus may not fit in memory)."""

    def __init__(self) -> None:
        self.videos = self.captions = self.qa_pairs = self.twinned = 0
        self.splits: Counter[str] = Counter()

    def add(self, rows: list[sources.Row]) -> None:
        for row in rows:
            self.videos += 1
            self.splits[str(row["split"])] += 1
            self.captions += len(row["captions"] or [])
            self.qa_pairs += len(row["qa"] or [])
            self.twinned += row.get("twin_id") is not None

    def summary(self) -> dict[str, Any]:
        return {"videos": self.videos, "splits": dict(sorted(self.splits.items())), "captions": self.captions,
                "qa_pairs": self.qa_pairs, "twins": self.twinned // 2}  # twins counted as pairs
