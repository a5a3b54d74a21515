"""Fan a stage out over shards of its input manifest, then collect the parts (the pod side; Stage.sharding in the
stage table names the input that is split and the function that merges).

A sharded stage runs once per contiguous block of manifest rows, each shard reading a sub-manifest (same data
root, so no video is copied) and writing its outputs under the workspace's `.shards/<stage>/<i>/`. The collect
task hands those parts to the stage's merge function, `merge(params, parts, summaries, outputs) -> summary`, which
knows the stage's output format, and publishes the merged outputs as the stage's. Blocks are contiguous so that
parts concatenated in shard order keep the manifest's order, as an unsharded run would.
"""
from __future__ import annotations

import importlib
import json
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from kfp.dsl import HTML, Artifact, Metrics

from stgt_pipeline import stages
from stgt_pipeline.errors import StgtError
from stgt_pipeline.io.atomic import write_json
from stgt_pipeline.io.manifest import read_manifest, write_manifest
from stgt_pipeline.kfp.conventions import SHARD_SUMMARY, SHARDS_DIR
from stgt_pipeline.kfp.run import artifacts
from stgt_pipeline.kfp.run.parent_run import join_pipeline_run
from stgt_pipeline.kfp.run.stage_task import input_path, publish, write_params_file
from stgt_pipeline.params import load_params
from stgt_pipeline.runner import run_stage


def merge_function(stage: stages.Stage) -> Callable[..., dict[str, Any]]:
    module, function = stage.sharding.merge.split(":")
    return getattr(importlib.import_module(module), function)


def parse_shard(spec: str) -> tuple[int, int]:
    """'1/4' -> (1, 4)."""
    index, count = (int(x) for x in spec.split("/"))
    if not 0 <= index < count:
        raise StgtError(f"shard {spec!r}: expected i/n with 0 <= i < n")
    return index, count


def block(rows: int, index: int, count: int) -> slice:
    """The `index`-th of `count` contiguous blocks of `rows` rows; sizes differ by at most one."""
    size, extra = divmod(rows, count)
    start = index * size + min(index, extra)
    return slice(start, start + size + (1 if index < extra else 0))


def plan(manifest_dir: str | Path, num_shards: int) -> list[str]:
    """Shard specs 'i/n'; never more shards than rows, so no shard runs on an empty manifest."""
    rows = len(read_manifest(manifest_dir).table)
    count = max(1, min(num_shards, rows))
    return [f"{i}/{count}" for i in range(count)]


def shard_dir(workspace: Path, stage: str, index: int) -> Path:
    return workspace / SHARDS_DIR / stage / f"{index:05d}"


def write_sub_manifest(manifest_dir: Path, index: int, count: int, out_dir: Path) -> Path:
    manifest = read_manifest(manifest_dir)
    rows = manifest.table.iloc[block(len(manifest.table), index, count)]
    out_dir.mkdir(parents=True, exist_ok=True)
    write_manifest(rows, out_dir, manifest.data_root, manifest.source)
    return out_dir


def run_shard_task(stage: str, workspace: str, shard: str, params: Mapping[str, Any],
                   inputs: Mapping[str, Artifact]) -> dict[str, Any]:
    spec = stages.get(stage)
    ws = Path(workspace)
    index, count = parse_shard(shard)
    here = shard_dir(ws, stage, index)
    in_paths = {k: input_path(spec, k, a, ws) for k, a in inputs.items()}
    split = spec.sharding.input
    in_paths[split] = write_sub_manifest(in_paths[split], index, count, here / "input" / split)
    join_pipeline_run()
    return run_stage(stage, params_path=write_params_file(stage, params, ws), inputs=in_paths,
                     outputs={k: here / k for k in spec.outputs}, metrics_path=here / SHARD_SUMMARY)


def collect_shards_task(stage: str, workspace: str, params: Mapping[str, Any], outputs: Mapping[str, Artifact],
                        views: Mapping[str, HTML], summary: Metrics) -> dict[str, Any]:
    spec = stages.get(stage)
    ws = Path(workspace)
    shards = sorted((ws / SHARDS_DIR / stage).iterdir())
    parts = [{k: d / k for k in spec.outputs} for d in shards]
    summaries = [json.loads((d / SHARD_SUMMARY).read_text()) for d in shards]
    out_paths = {k: ws / spec.outputs[k] for k in spec.outputs}
    started = time.perf_counter()
    merge = merge_function(spec)
    result = merge(load_params(write_params_file(stage, params, ws)), parts, summaries, out_paths)
    result = {"stage": stage, "seconds": round(time.perf_counter() - started, 2), "shards": len(parts), **result}
    write_json(ws / spec.metrics, result)
    publish(outputs, out_paths, views)
    artifacts.log_summary(summary, result)
    return result
