"""Merge extract_frames' per-shard outputs into one frames folder laid out as an unsharded run's.

Shard files are renumbered in shard order and moved (same volume: a rename, no copy), index rows follow their
files, quarantine lists are concatenated, and the quarantine gate is applied again to the whole. Each part's frames
suite passed in its own task; their reports are kept as frames_suite.part-NNNNN.{html,json}.
The stage table names this function as the stage's Sharding.merge; the collect task (kfp.run.shards) calls it.
"""
from __future__ import annotations

import functools
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from stgt_pipeline.errors import StageFailed
from stgt_pipeline.io.atomic import atomic_dir, write_json
from stgt_pipeline.params import Params, write_resolved


def _add_counts(total: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    for key, value in part.items():
        total[key] = _add_counts(total.get(key, {}), value) if isinstance(value, dict) else total.get(key, 0) + value
    return total


def merge(params: Params, parts: list[dict[str, Path]], summaries: list[dict[str, Any]],
          outputs: dict[str, Path]) -> dict[str, Any]:
    cfg = params.section("extract_frames")
    indexes, quarantine, shard_count = [], [], 0
    with atomic_dir(outputs["frames"]) as tmp:
        (tmp / "shards").mkdir()
        for number, part in enumerate(parts):
            src = part["frames"]
            index = pd.read_parquet(src / "index.parquet")
            renamed = {}
            for shard in sorted((src / "shards").glob("frames-*.npy")):
                renamed[f"shards/{shard.name}"] = f"shards/frames-{shard_count:05d}.npy"
                os.replace(shard, tmp / renamed[f"shards/{shard.name}"])
                shard_count += 1
            index["shard"] = index["shard"].map(renamed)
            indexes.append(index)
            quarantine += json.loads((src / "quarantine.json").read_text())
            for suffix in ("html", "json"):
                os.replace(src / f"frames_suite.{suffix}", tmp / f"frames_suite.part-{number:05d}.{suffix}")
        merged = pd.concat(indexes, ignore_index=True)
        merged.to_parquet(tmp / "index.parquet", index=False)
        write_json(tmp / "quarantine.json", quarantine)
        videos = len(merged) + len(quarantine)
        if len(quarantine) / videos > cfg.max_failed_share:
            raise StageFailed(f"extract_frames: {len(quarantine)} of {videos} videos quarantined, above "
                              f"max_failed_share {cfg.max_failed_share:.1%}; see the shards' quarantine.json")
        write_resolved(params, ["extract_frames"], tmp / "config.resolved.yaml")
    return {
        "videos": videos,
        "extracted": len(merged),
        "quarantined": len(quarantine),
        "by_decoder": dict(sorted(Counter(merged["decoder"]).items())),
        "by_split": functools.reduce(_add_counts, (s.get("by_split", {}) for s in summaries), {}),
        "shards": shard_count,
        "frames_per_clip": cfg.num_frames,
        "size": cfg.size,
    }
