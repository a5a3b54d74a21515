"""The prepare stage: build the video-text corpus and its manifest.

Sources (components/sources): `synthetic` renders a seeded corpus of shape clips into the dataset folder (the data
root is the dataset itself); `folder` indexes a user's videos where they lie (the data root is prepare.folder.root).
Splits: train, val, test, plus `probe` for the test clips' time-reversed twins (the temporal-order probe, kept out
of the retrieval test set); `twin_id` links each twin pair both ways.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from components import sources
from components.atomic import atomic_dir
from components.config import Params, write_resolved
from components.manifest import COLUMNS, write_manifest

RESOLVED_CONFIG = "config.resolved.yaml"


def run(params: Params, inputs: dict[str, Path], outputs: dict[str, Path]) -> dict[str, Any]:
    cfg = params.prepare
    started = time.perf_counter()
    with atomic_dir(outputs["dataset"]) as tmp:
        plan = sources.get(cfg.source)(cfg, tmp)
        rows: list[sources.Row] = []
        for clip_rows in tqdm(plan.clips, total=plan.total, desc=f"prepare ({cfg.source})", unit="clip", file=sys.stderr):
            rows.extend(clip_rows)
        table = pd.DataFrame(rows, columns=COLUMNS)
        write_manifest(table, tmp, plan.data_root, cfg.source)
        write_resolved(params, ["prepare"], tmp / RESOLVED_CONFIG)
    return {**summarize(table, cfg.source, time.perf_counter() - started), **plan.report}


def summarize(table: pd.DataFrame, source: str, seconds: float) -> dict[str, Any]:
    return {
        "source": source,
        "videos": len(table),
        "splits": {str(k): int(v) for k, v in table["split"].value_counts().sort_index().items()},
        "captions": int(table["captions"].map(len).sum()),
        "qa_pairs": int(table["qa"].map(len).sum()),
        "twins": int(table["twin_id"].notna().sum()) // 2,  # pairs
        "seconds": round(seconds, 2),
    }
