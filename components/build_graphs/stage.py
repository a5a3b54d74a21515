"""Stage `build_graphs`: frozen-backbone token features per clip (fp16 shards) and their spatio-temporal graphs.

The frozen backbone (model.backbone) runs once per clip over the extracted frames; the model then trains on
the cached tokens instead of re-encoding frames every step. Output folder (written whole or not at all):
  shards/features-NNNNN.npy  (n, T, 1 + h*w, C) float16, aligned 1:1 with the frame shards (same shard number
                             and offset as in the frames index); token 0 is the frame's summary token
  index.parquet              video_id, split, shard, offset, num_frames, tokens (1 + h*w), dim (C);
                             open with stgt_model.data.ClipStore
  graphs/edges-NNNNN.npz     per shard: edge_index (2, E) int32 of all its clips concatenated (node ids local to
                             the clip: t * h*w + p), weight (E,) float16, edge_offsets (n + 1,) int64 (clip i's
                             edges are [edge_offsets[i], edge_offsets[i+1])), video_id (n,), num_frames,
                             tokens_per_frame; read one clip with `clip_edges`
  graph_stats.parquet        per clip: video_id, nodes, edges and mean_degree (counting the self loops, so
                             edges = the stored edge list's length), cross_frame_share (of the non-self edges),
                             isolated_nodes (only the self loop), isolated_share
  graphs_suite.html/.json    the Great Expectations gate on graph_stats (suite.json here)
  README.txt, config.resolved.yaml
The graphs are stgt_model.graph.build_graph over each clip's PATCH tokens (the summary token is no node) as
stored (fp16), with threshold build_graphs.sim_threshold or model.stgt.sim_threshold and a frame window of 1.
They serve storage, statistics and inspection only: the model rebuilds its graph in every forward pass on the
output of its trainable proj_fc (stgt-reference.md §1.3(b)3), never on these backbone tokens.

With a trainable backbone (model.backbone.frozen false) or build_graphs.mode "online", cached features would be
stale after the first step, so the stage writes frames only: index.parquet over the frame shards of the
frames folder (its Parquet metadata says so; ClipStore follows it) and a README.txt that explains it.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from stgt_model.backbones import VisionBackbone
from stgt_model.data import INDEX_NAME, SHARDS_ROOT_KEY, STORE_KIND_KEY
from stgt_model.features import build_frozen_backbone, clip_tokens, feature_extractor
from stgt_model.graph import OFFICIAL_FRAME_WINDOW, build_graph, graph_statistics, to_edge_list
from stgt_pipeline.errors import StageFailed, StgtError
from stgt_pipeline.io.atomic import atomic_dir, failed_dir
from stgt_pipeline.io.manifest import read_manifest
from stgt_pipeline.params import BuildGraphsConfig, Params, write_resolved
from stgt_pipeline.quality.gx import gate

SUITE = Path(__file__).with_name("suite.json")  # the graphs suite (GX expectations)
SECTIONS = ["build_graphs", "model"]
FEATURE_COLUMNS = ["video_id", "split", "shard", "offset", "num_frames", "tokens", "dim"]
FRAMES_ONLY_COLUMNS = ["video_id", "split", "shard", "offset", "num_frames", "size"]
STATS_COLUMNS = ["video_id", "nodes", "edges", "mean_degree", "cross_frame_share", "isolated_nodes", "isolated_share"]


def run(params: Params, inputs: dict[str, Path], outputs: dict[str, Path]) -> dict[str, Any]:
    cfg: BuildGraphsConfig = params.section("build_graphs")
    frames_dir, out_dir = Path(inputs["frames"]), Path(outputs["features"])
    frames_index = read_frames_index(frames_dir)
    check_in_manifest(frames_index, inputs["dataset"])
    shard_shapes = check_frame_shards(frames_dir, frames_index)
    reason = frames_only_reason(cfg, params)
    failed = failed_dir(out_dir)
    with atomic_dir(out_dir) as tmp:
        write_resolved(params, SECTIONS, tmp / "config.resolved.yaml")
        if reason:
            summary = write_frames_only(frames_dir, frames_index, shard_shapes, out_dir, tmp, reason)
        else:
            summary = write_features_and_graphs(params, frames_dir, frames_index, tmp, failed)
    shutil.rmtree(failed, ignore_errors=True)
    return summary


# ---------------------------------------------------------------------------------------------------------------
# inputs


def read_frames_index(frames_dir: Path) -> pd.DataFrame:
    path = frames_dir / INDEX_NAME
    if not path.is_file():
        raise StgtError(f"build_graphs: {path}: frames index not found (run `stgt extract_frames` first)")
    index = pd.read_parquet(path, columns=["video_id", "split", "shard", "offset"])
    if index.empty:
        raise StageFailed(f"build_graphs: {path} lists no clips")
    return index.sort_values(["shard", "offset"], kind="stable").reset_index(drop=True)


def check_in_manifest(frames_index: pd.DataFrame, dataset_dir: Path) -> None:
    """Frames extracted from another manifest are stale: refuse them rather than cache features nobody can label."""
    known = set(read_manifest(dataset_dir).table["video_id"])
    unknown = sorted(set(frames_index["video_id"]) - known)
    if unknown:
        raise StgtError(f"build_graphs: {len(unknown)} clips of the frames index are not in the manifest in "
                        f"{dataset_dir}, e.g. {unknown[:5]}; re-run extract_frames")


def check_frame_shards(frames_dir: Path, frames_index: pd.DataFrame) -> dict[str, tuple[int, ...]]:
    """Shape of every listed shard, read from the .npy headers; fail before any compute on a missing or short one."""
    shapes = {}
    for shard, rows in frames_index.groupby("shard", sort=True):
        path = frames_dir / shard
        if not path.is_file():
            raise StgtError(f"build_graphs: {path}: frame shard of video {rows['video_id'].iloc[0]!r} "
                            f"(listed in {frames_dir / INDEX_NAME}) not found")
        shape = np.load(path, mmap_mode="r").shape
        beyond = rows[rows["offset"] >= shape[0]]
        if len(beyond):
            raise StgtError(f"build_graphs: {path} holds {shape[0]} clips but video {beyond['video_id'].iloc[0]!r} "
                            f"is listed at offset {beyond['offset'].iloc[0]}")
        shapes[shard] = shape
    return shapes


def frames_only_reason(cfg: BuildGraphsConfig, params: Params) -> str | None:
    if not params.model.backbone.frozen:
        return "model.backbone.frozen is false: the backbone trains, so cached features would go stale"
    if cfg.mode == "online":
        return "build_graphs.mode is online: the backbone runs in training (e.g. for full image augmentation)"
    return None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise StgtError(f"build_graphs.device is {name!r} but no CUDA device is available")
    return torch.device(name)


def build_extractor(params: Params, device: torch.device) -> VisionBackbone:
    """The frozen backbone as a feature extractor: the same construction the served model uses
    (stgt_model.features), so served features match the cached ones."""
    return feature_extractor(build_frozen_backbone(params.model.backbone), device)


# ---------------------------------------------------------------------------------------------------------------
# cached features and graphs


def write_features_and_graphs(params: Params, frames_dir: Path, frames_index: pd.DataFrame, tmp: Path,
                              failed: Path) -> dict[str, Any]:
    cfg: BuildGraphsConfig = params.section("build_graphs")
    threshold = cfg.sim_threshold if cfg.sim_threshold is not None else params.model.stgt.sim_threshold
    device = resolve_device(cfg.device)
    backbone = build_extractor(params, device)
    (tmp / "shards").mkdir()
    (tmp / "graphs").mkdir()
    index_rows: list[dict[str, Any]] = []
    stats_rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    progress = tqdm(total=len(frames_index), desc="build_graphs", unit="clip", file=sys.stderr,
                    mininterval=0.5 if sys.stderr.isatty() else 30)
    with progress, torch.inference_mode():
        for number, (shard, rows) in enumerate(frames_index.groupby("shard", sort=True)):
            frames = np.load(frames_dir / shard, mmap_mode="r")
            feature_shard = f"shards/features-{number:05d}.npy"
            features = None
            edges = ShardEdges()
            for start in range(0, len(rows), cfg.batch_size):
                batch = rows.iloc[start:start + cfg.batch_size]
                tokens = clip_tokens(backbone, np.stack([frames[offset] for offset in batch["offset"]]))
                if features is None:  # the shard's shape is known once the backbone has spoken
                    features = np.lib.format.open_memmap(tmp / feature_shard, mode="w+", dtype=np.float16,
                                                         shape=(len(rows), *tokens.shape[1:]))
                features[start:start + len(batch)] = tokens.cpu().numpy()
                for video_id, one_clip in zip(batch["video_id"], tokens):
                    stats_rows.append(edges.add(video_id, one_clip, threshold))
                progress.update(len(batch))
            features.flush()
            del features
            edges.save(tmp / f"graphs/edges-{number:05d}.npz")
            _, num_frames, tokens_per_frame, dim = np.load(tmp / feature_shard, mmap_mode="r").shape
            index_rows += [{"video_id": r.video_id, "split": r.split, "shard": feature_shard, "offset": position,
                            "num_frames": num_frames, "tokens": tokens_per_frame, "dim": dim}
                           for position, r in enumerate(rows.itertuples())]
    seconds = time.perf_counter() - started

    write_index(tmp / INDEX_NAME, pd.DataFrame(index_rows, columns=FEATURE_COLUMNS), kind="features", shards_root=".")
    stats = pd.DataFrame(stats_rows, columns=STATS_COLUMNS)
    stats.to_parquet(tmp / "graph_stats.parquet", index=False)
    write_readme(tmp, FEATURES_README)
    first = index_rows[0]
    gate_graphs(stats, cfg, first["num_frames"], first["tokens"] - 1, tmp, failed)
    return {
        "mode": "cached",
        "clips": len(index_rows),
        "frames_per_clip": first["num_frames"],
        "tokens_per_frame": first["tokens"],
        "tokens_per_clip": first["num_frames"] * first["tokens"],
        "dim": first["dim"],
        "backbone": params.model.backbone.name,
        "device": str(device),
        "sim_threshold": threshold,
        "edges_mean": round(float(stats["edges"].mean()), 2),
        "mean_degree_mean": round(float(stats["mean_degree"].mean()), 3),
        "cross_frame_share_mean": round(float(stats["cross_frame_share"].mean()), 4),
        "isolated_nodes_total": int(stats["isolated_nodes"].sum()),
        "seconds_per_clip": round(seconds / len(index_rows), 4),
    }


class ShardEdges:
    """One shard's graphs: built clip by clip, concatenated into one edge list with per-clip offsets."""

    def __init__(self) -> None:
        self.video_ids: list[str] = []
        self.edge_index: list[np.ndarray] = []
        self.weights: list[np.ndarray] = []
        self.num_frames = self.tokens_per_frame = 0

    def add(self, video_id: str, clip_tokens: torch.Tensor, threshold: float) -> dict[str, Any]:
        """Graph of one clip's (T, 1 + h*w, C) fp16 tokens; returns its graph_stats row."""
        patches = clip_tokens[:, 1:].float()  # the stored values, so a reader rebuilding from the shard agrees
        num_frames, tokens_per_frame = patches.shape[:2]
        adjacency = build_graph(patches.unsqueeze(0), num_frames, threshold, window=OFFICIAL_FRAME_WINDOW)[0]
        edge_list = to_edge_list(adjacency, num_frames, tokens_per_frame)
        stats = graph_statistics(adjacency, num_frames, tokens_per_frame)
        self.video_ids.append(video_id)
        self.edge_index.append(edge_list["edge_index"].cpu().numpy().astype(np.int32))
        self.weights.append(edge_list["weight"].cpu().numpy().astype(np.float16))
        self.num_frames, self.tokens_per_frame = num_frames, tokens_per_frame
        nodes = stats["nodes"]
        edges = stats["edges"] + stats["self_loops"]
        return {"video_id": video_id, "nodes": nodes, "edges": edges, "mean_degree": edges / nodes,
                "cross_frame_share": stats["cross_frame_share"], "isolated_nodes": stats["isolated_nodes"],
                "isolated_share": stats["isolated_nodes"] / nodes}

    def save(self, path: Path) -> None:
        counts = [len(w) for w in self.weights]
        np.savez(path, edge_index=np.concatenate(self.edge_index, axis=1), weight=np.concatenate(self.weights),
                 edge_offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                 video_id=np.array(self.video_ids, dtype=str), num_frames=self.num_frames,
                 tokens_per_frame=self.tokens_per_frame)


def clip_edges(graphs_file: str | Path, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """(edge_index (2, E) int32, weight (E,) float16) of the clip at `offset` of an edges-NNNNN.npz file."""
    with np.load(graphs_file) as shard:
        begin, end = shard["edge_offsets"][offset], shard["edge_offsets"][offset + 1]
        return shard["edge_index"][:, begin:end], shard["weight"][begin:end]


def gate_graphs(stats: pd.DataFrame, cfg: BuildGraphsConfig, num_frames: int, patches_per_frame: int, tmp: Path,
                failed: Path) -> None:
    # A node's neighbours all lie in its frame window (self loop included), which bounds the mean degree.
    nodes_per_window = min(2 * OFFICIAL_FRAME_WINDOW + 1, num_frames) * patches_per_frame
    gate("build_graphs", stats, SUITE,
         {"max_mean_degree": nodes_per_window, "max_isolated_share": cfg.max_isolated_share}, tmp, failed,
         title=f"Token graphs ({len(stats)} clips, {num_frames}x{patches_per_frame} nodes)",
         evidence=("graph_stats.parquet",))


# ---------------------------------------------------------------------------------------------------------------
# frames only


def write_frames_only(frames_dir: Path, frames_index: pd.DataFrame, shard_shapes: dict[str, tuple[int, ...]],
                      out_dir: Path, tmp: Path, reason: str) -> dict[str, Any]:
    index = frames_index.assign(num_frames=[shard_shapes[s][1] for s in frames_index["shard"]],
                                size=[shard_shapes[s][2] for s in frames_index["shard"]])
    # Relative to the final folder, so DVC checkouts and moved workspaces that keep the two side by side still work.
    shards_root = os.path.relpath(frames_dir.resolve(), out_dir.resolve())
    write_index(tmp / INDEX_NAME, index[FRAMES_ONLY_COLUMNS], kind="frames", shards_root=shards_root)
    write_readme(tmp, FRAMES_ONLY_README.format(reason=reason, shards_root=shards_root))
    return {"mode": "frames_only", "reason": reason, "clips": len(index),
            "frames_per_clip": int(index["num_frames"].iloc[0]), "size": int(index["size"].iloc[0])}


# ---------------------------------------------------------------------------------------------------------------
# shared writers


def write_index(path: Path, index: pd.DataFrame, kind: str, shards_root: str) -> None:
    table = pa.Table.from_pandas(index, preserve_index=False)
    meta = {**(table.schema.metadata or {}), STORE_KIND_KEY.encode(): kind.encode(),
            SHARDS_ROOT_KEY.encode(): Path(shards_root).as_posix().encode()}
    pq.write_table(table.replace_schema_metadata(meta), path)


def write_readme(folder: Path, text: str) -> None:
    (folder / "README.txt").write_text(text, encoding="utf-8")


FEATURES_README = """\
Frozen-backbone token features and spatio-temporal graphs, written by the build_graphs stage
(components/build_graphs/stage.py documents every file).

shards/features-NNNNN.npy  (n, T, 1 + h*w, C) float16; token 0 is each frame's summary token
index.parquet              video_id, split, shard, offset, num_frames, tokens, dim
graphs/edges-NNNNN.npz     per-clip edge lists (read one with stgt_pipeline.components.build_graphs.stage.clip_edges)
graph_stats.parquet        per-clip graph statistics; graphs_suite.html is their quality gate

Open it with stgt_model.data.ClipStore(<this folder>). The stored graphs are for inspection: the model rebuilds
its graph in every forward pass on its own trainable projection of these tokens.
"""

FRAMES_ONLY_README = """\
Frames only: no features or graphs were computed.
Why: {reason}.

index.parquet lists every clip's frame shard (relative to {shards_root}, as its Parquet metadata records);
stgt_model.data.ClipStore(<this folder>) reads the (T, S, S, 3) uint8 frames from there, and training runs
the backbone on them. Give ClipStore(..., shards_root=<frames folder>) if the two folders were moved apart.
"""
