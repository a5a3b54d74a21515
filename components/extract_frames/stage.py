"""Stage `extract_frames`: T sampled frames per clip as sharded uint8 tensors, an index and a quarantine report.

Output folder (written whole or not at all):
  shards/frames-00000.npy  (n, T, S, S, 3) uint8 RGB in np.save format (open with np.load(..., mmap_mode="r")),
                           at most `shard_size` clips each, in manifest order
  index.parquet            one row per extracted clip: its shard and offset, and how it was read and sampled
  quarantine.json          [{video_id, path, reason}] for every video that could not be read, is blank or a single
                           frame, or that the validate gate quarantined (reason "validate: ...", not decoded)
  frames_suite.html/.json  the Great Expectations gate on per-clip statistics
  config.resolved.yaml
Train clips are sampled with `train_sampling`, all other splits with `eval_sampling`; the random modes draw from
a generator seeded by (seed, video_id), so a re-run gives the same bytes. The one exception is a `probe` clip, the
time-reversed twin of a test clip: it is sampled with the mirror of its clip's mode and with its clip's seed
(stgt_model/video/sampling.py), so it shows exactly its clip's moments in reverse order, and a frame-order-blind
model sees the same pictures in both (up to the codec's noise: the twin is a file of its own). The index records
each clip's mode (`sampling`) and the clip it mirrors (`mirror_of`). Videos under a URL root (s3://) are
downloaded one by one to temporary files and decoded from there (stgt_pipeline/io/remote.py).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from stgt_model.video.decode import ClipFailure, ClipRequest, DecodedClip
from stgt_model.video.sampling import SamplingMode, mirrored
from stgt_pipeline.errors import StageFailed
from stgt_pipeline.io.atomic import atomic_dir, failed_dir, keep_evidence, write_json
from stgt_pipeline.io.manifest import Manifest, read_manifest
from stgt_pipeline.io.remote import read_clips_fetched
from stgt_pipeline.params import ExtractFramesConfig, Params, write_resolved
from stgt_pipeline.quality.gx import gate

BLANK_PIXEL_STD = 1.0  # below this a clip is one flat colour (a failed decode often gives grey or black)
REASONS_SHOWN = 5
SUITE = Path(__file__).with_name("suite.json")  # the frames suite (GX expectations)


def run(params: Params, inputs: dict[str, Path], outputs: dict[str, Path]) -> dict[str, Any]:
    cfg: ExtractFramesConfig = params.section("extract_frames")
    refused = check_validation(inputs["validation"]) if inputs.get("validation") is not None else {}
    manifest = read_manifest(inputs["dataset"])
    table = manifest.table.reset_index(drop=True)
    if table.empty:
        raise StageFailed(f"extract_frames: the manifest in {inputs['dataset']} lists no videos")
    requests = clip_requests(manifest, cfg)
    todo = [i for i, video_id in enumerate(table["video_id"]) if video_id not in refused]  # positions to decode
    mirrors = mirror_sources(table)
    frames_dir = outputs["frames"]
    failed = failed_dir(frames_dir)
    started = time.perf_counter()

    with atomic_dir(frames_dir) as tmp:
        shards = ShardWriter(tmp / "shards", cfg.shard_size)
        index_rows: list[dict[str, Any]] = []
        # Videos the validate gate quarantined are not decoded: they keep validate's reason here.
        quarantine: list[dict[str, str]] = [
            {"video_id": row["video_id"], "path": row["path"], "reason": f"validate: {refused[row['video_id']]}"}
            for _, row in table.iterrows() if row["video_id"] in refused]
        stats_rows: list[dict[str, Any]] = []
        results = read_clips_fetched([requests[i] for i in todo], cfg.workers, cfg.timeout_s)
        for position, result in tqdm(results, total=len(todo), desc="extract_frames", unit="clip",
                                     file=sys.stderr, mininterval=0.5 if sys.stderr.isatty() else 30):
            position = todo[position]
            row = table.iloc[position]
            if isinstance(result, ClipFailure):
                quarantine.append({"video_id": row["video_id"], "path": row["path"], "reason": result.reason})
                continue
            stats = clip_stats(row["video_id"], result.frames)
            if stats["is_blank"]:  # decodable but useless for training: a per-item failure like any other
                reason = (f"one frame: the clip holds a single picture, repeated {cfg.num_frames} times it shows no "
                          "motion" if result.frame_count == 1 else
                          f"blank clip: pixel std {stats['pixel_std']} below {BLANK_PIXEL_STD}"
                          if stats["pixel_std"] < BLANK_PIXEL_STD else "blank clip: every sampled frame identical")
                quarantine.append({"video_id": row["video_id"], "path": row["path"], "reason": reason})
                continue
            shard, offset = shards.add(result.frames)
            index_rows.append(index_row(row, requests[position], mirrors.get(row["video_id"]), result, shard, offset))
            stats_rows.append(stats)
        shards.close()
        seconds = time.perf_counter() - started

        n_in, n_ok, n_bad = len(table), len(index_rows), len(quarantine)
        if n_in != n_ok + n_bad:  # nothing may be dropped silently (a plain assert would vanish under -O)
            raise RuntimeError(f"extract_frames: videos in ({n_in}) != extracted ({n_ok}) + quarantined ({n_bad})")
        write_json(tmp / "quarantine.json", quarantine)
        if n_bad / n_in > cfg.max_failed_share:
            keep_evidence(tmp, failed, ["quarantine.json"])
            reasons = "\n".join(f"- {q['video_id']} ({q['path']}): {q['reason']}" for q in quarantine[:REASONS_SHOWN])
            raise StageFailed(
                f"extract_frames: {n_bad} of {n_in} videos quarantined ({n_bad / n_in:.1%}), above max_failed_share "
                f"{cfg.max_failed_share:.1%}; full list: {failed / 'quarantine.json'}\n{reasons}")

        pd.DataFrame(index_rows, columns=INDEX_COLUMNS).to_parquet(tmp / "index.parquet", index=False)
        write_resolved(params, ["extract_frames"], tmp / "config.resolved.yaml")
        gate("extract_frames", pd.DataFrame(stats_rows, columns=STATS_COLUMNS), SUITE,
             {"num_frames": cfg.num_frames, "size": cfg.size}, tmp, failed,
             title=f"Frame shards ({n_ok} clips, {cfg.num_frames}x{cfg.size}px)", evidence=("quarantine.json",))
    shutil.rmtree(failed, ignore_errors=True)

    extracted_ids = {r["video_id"] for r in index_rows}
    by_split: dict[str, dict[str, int]] = {}
    for video_id, split in zip(table["video_id"], table["split"]):
        counts = by_split.setdefault(split, {"videos": 0, "extracted": 0, "quarantined": 0})
        counts["videos"] += 1
        counts["extracted" if video_id in extracted_ids else "quarantined"] += 1
    return {
        "videos": n_in,
        "extracted": n_ok,
        "quarantined": n_bad,
        "by_decoder": dict(sorted(Counter(r["decoder"] for r in index_rows).items())),
        "by_split": dict(sorted(by_split.items())),
        "shards": shards.count,
        "frames_per_clip": cfg.num_frames,
        "size": cfg.size,
        "seconds_per_clip": round(seconds / n_in, 4),
    }


def check_validation(report_dir: Path) -> dict[str, str]:
    """The validate stage's verdict on the manifest: only a report that says it passed lets the stage run (a folder
    without one, e.g. empty or never written, does not). Returns the videos validate quarantined: {video_id: reason}.
    """
    result = Path(report_dir) / "result.json"
    rerun = "run `stgt validate` first" if not result.exists() else "fix it and re-run validate"
    try:
        verdict = json.loads(result.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StageFailed(f"extract_frames: no validation result in {report_dir} (expected {result.name}); "
                          f"{rerun}") from None
    except (OSError, ValueError) as exc:
        raise StageFailed(f"extract_frames: {result} is not a readable validation result ({exc}); {rerun}") from None
    if not isinstance(verdict, dict) or verdict.get("success") is not True:
        raise StageFailed(f"extract_frames: {result} says the manifest failed validation; {rerun}")
    return {str(q["video_id"]): str(q["reason"]) for q in verdict.get("quarantined") or []}


def clip_requests(manifest: Manifest, cfg: ExtractFramesConfig) -> list[ClipRequest]:
    mirrors = mirror_sources(manifest.table)
    return [clip_request(manifest, row, cfg, mirrors.get(row["video_id"])) for _, row in manifest.table.iterrows()]


def clip_request(manifest: Manifest, row: pd.Series, cfg: ExtractFramesConfig, mirror_of: str | None) -> ClipRequest:
    """A probe twin takes the mirror of its clip's mode and its clip's seed (the same draws, mirrored); every other
    clip its split's mode and its own seed."""
    mode: SamplingMode = cfg.train_sampling if row["split"] == "train" else cfg.eval_sampling
    if mirror_of is not None:
        mode = mirrored(cfg.eval_sampling)  # its clip is a test clip, sampled with eval_sampling
    return ClipRequest(
        key=row["video_id"],
        path=str(manifest.video_path(row)),
        num_frames=cfg.num_frames,
        size=cfg.size,
        mode=mode,
        seed=video_seed(cfg.seed, mirror_of or row["video_id"]),
    )


def mirror_sources(table: pd.DataFrame) -> dict[str, str]:
    """{probe twin: its test clip} for every `probe` row with a twin_id. Decided from the probe row alone (the
    split holds test clips' twins only, which evaluate checks), so that a shard boundary between a clip and its twin
    (Kubeflow runs blocks of the manifest) changes nothing. Train twins are hard negatives, not a probe: they keep
    their own (random) sampling."""
    if "twin_id" not in table:
        return {}
    return {video_id: twin for video_id, split, twin in zip(table["video_id"], table["split"], table["twin_id"])
            if split == "probe" and isinstance(twin, str) and twin}


def video_seed(seed: int, video_id: str) -> tuple[int, int]:
    """Per-video generator entropy: stable across runs and machines (Python's hash() is salted per process)."""
    return seed, int.from_bytes(hashlib.sha256(video_id.encode("utf-8")).digest()[:8], "little")


INDEX_COLUMNS = ["video_id", "split", "shard", "offset", "decoder", "sampling", "mirror_of", "frame_indices",
                 "frame_count", "source_width", "source_height", "rotation", "stream"]


def index_row(row: pd.Series, request: ClipRequest, mirror_of: str | None, clip: DecodedClip, shard: str,
              offset: int) -> dict[str, Any]:
    return {
        "video_id": row["video_id"], "split": row["split"], "shard": shard, "offset": offset,
        "decoder": clip.decoder, "sampling": request.mode, "mirror_of": mirror_of,
        "frame_indices": list(clip.indices), "frame_count": clip.frame_count,
        "source_width": clip.source_size[0], "source_height": clip.source_size[1],
        "rotation": clip.rotation, "stream": clip.stream_index,
    }


STATS_COLUMNS = ["video_id", "num_frames", "height", "width", "channels", "pixel_std", "is_blank"]


def clip_stats(video_id: str, frames: np.ndarray) -> dict[str, Any]:
    """What the frames suite asserts on. Blank: one flat colour, or every sampled frame the same picture."""
    pixel_std = float(frames.std())
    frozen = bool(len(frames) > 1 and (frames == frames[:1]).all())
    t, h, w, c = frames.shape
    return {"video_id": video_id, "num_frames": t, "height": h, "width": w, "channels": c,
            "pixel_std": round(pixel_std, 3), "is_blank": pixel_std < BLANK_PIXEL_STD or frozen}


class ShardWriter:
    """Clips in arrival order into shards/frames-NNNNN.npy of at most `shard_size` clips."""

    def __init__(self, folder: Path, shard_size: int):
        self.folder = folder
        self.shard_size = shard_size
        self.pending: list[np.ndarray] = []
        self.count = 0

    def add(self, frames: np.ndarray) -> tuple[str, int]:
        """Queue one (T, S, S, 3) clip; return the shard path (relative to the output folder) and its offset."""
        location = (f"shards/frames-{self.count:05d}.npy", len(self.pending))
        self.pending.append(frames)
        if len(self.pending) == self.shard_size:
            self.flush()
        return location

    def flush(self) -> None:
        if not self.pending:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        shape = (len(self.pending), *self.pending[0].shape)
        # Filled clip by clip: np.stack would hold the shard twice in memory.
        shard = np.lib.format.open_memmap(self.folder / f"frames-{self.count:05d}.npy", mode="w+",
                                          dtype=np.uint8, shape=shape)
        for i, clip in enumerate(self.pending):
            shard[i] = clip
        shard.flush()
        del shard
        self.pending.clear()
        self.count += 1

    def close(self) -> None:
        self.flush()
