"""A searchable index of a video collection, embedded with a registered retrieval model.

    stgt index data/prepared --split test          # a prepared manifest (or a folder of videos, or s3://bucket/prefix)
    stgt search "a red circle moves from left to right" --top 5

The index folder (written whole or not at all, stgt_pipeline.io.atomic):
  index.json       the model it was built with (name, version, run), source, sizes, counts
  videos.parquet   video_id, path (local path or URL), key (what says the file changed), duration_s, thumbnail, row
  vectors.npy      (V, Q, E) float32: each video's L2-normalised query embeddings
  tokens.npy       (V, N, W) float16: each video's STGT tokens, for re-ranking with the matching head
  index.faiss      faiss IndexFlatIP over the V*Q query vectors (vector v*Q + q is query q of video v)
  thumbs/          one JPEG per video (its middle frame)
  quarantine.json  videos that could not be read, with the reason

Why faiss: exact inner-product search (IndexFlatIP) is what the evaluation computes, so a search ranks as
evaluate does; it is one pip wheel, runs in-process with no server, and the same code scales to approximate
indexes (IVF, HNSW) for millions of vectors. An embedded vector database would add a storage engine we do not
need: the table beside the vectors is a Parquet file.

Incremental: a re-run embeds only videos whose key (content hash for a manifest, size and mtime for files,
ETag or size for objects) is new or changed, and drops videos that are gone. Resumable: embeddings are saved
every CHECKPOINT_EVERY videos in `<index>.partial/`, which an interrupted run picks up.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import numpy as np
import pandas as pd

from stgt_pipeline.errors import StgtError
from stgt_pipeline.io import remote
from stgt_pipeline.io.atomic import atomic_dir, write_json
from stgt_pipeline.search import models

FORMAT = 1
INFO_FILE, VIDEOS_FILE, VECTORS_FILE, TOKENS_FILE, FAISS_FILE = (
    "index.json", "videos.parquet", "vectors.npy", "tokens.npy", "index.faiss")
THUMBS_DIR, QUARANTINE_FILE = "thumbs", "quarantine.json"
DEFAULT_INDEX = Path("data/index")
VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ogv", ".3gp", ".ts", ".flv"}
CHECKPOINT_EVERY = 32
THUMB_SIDE = 192
VIDEO_COLUMNS = ["video_id", "path", "key", "duration_s", "thumbnail", "row"]


@dataclass(frozen=True)
class VideoRef:
    video_id: str
    location: str  # a local path or a URL
    key: str  # changes when the video does


# ---------------------------------------------------------------------------------------------------------------
# what a source holds


def list_source(source: str, split: str | None = None) -> list[VideoRef]:
    """The videos of a folder, a prepared dataset (a folder with manifest.parquet) or a URL prefix (s3://...)."""
    if remote.is_remote(source):
        if split:
            raise StgtError("--split applies to a prepared dataset (a folder with manifest.parquet), not a URL")
        return _list_remote(source)
    root = Path(source)
    if not root.exists():
        raise StgtError(f"index: {root}: no such folder")
    if not root.is_dir():
        raise StgtError(f"index: {root}: not a folder (give a folder of videos, a prepared dataset or s3://...)")
    if (root / "manifest.parquet").is_file():
        return _list_manifest(root, split)
    if split:
        raise StgtError(f"index: --split applies to a prepared dataset; {root} has no manifest.parquet")
    return _list_folder(root)


def _list_folder(root: Path) -> list[VideoRef]:
    real_root = root.resolve()
    refs = []
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES):
        resolved = path.resolve()
        if not resolved.is_relative_to(real_root) or not resolved.is_file():
            continue  # a link out of the folder is not part of the collection
        stat = resolved.stat()
        refs.append(VideoRef(path.relative_to(root).as_posix(), str(resolved), f"{stat.st_size}:{stat.st_mtime_ns}"))
    return refs


def _list_manifest(root: Path, split: str | None) -> list[VideoRef]:
    from stgt_pipeline.io.manifest import read_manifest

    manifest = read_manifest(root)
    table = manifest.table
    if split:
        if split not in set(table["split"]):
            raise StgtError(f"index: {root / 'manifest.parquet'} has no split {split!r} "
                            f"(it has {', '.join(sorted(set(table['split'])))})")
        table = table[table["split"] == split]
    refs = []
    for _, row in table.iterrows():
        location = manifest.video_path(row)
        key = str(row["sha256"]) if "sha256" in row and isinstance(row["sha256"], str) and row["sha256"] else ""
        if not remote.is_remote(location):
            location = Path(location).resolve()
            if not key:
                stat = location.stat() if location.is_file() else None
                key = f"{stat.st_size}:{stat.st_mtime_ns}" if stat else "missing"
        refs.append(VideoRef(str(row["video_id"]), str(location), key))
    return refs


def _list_remote(root: str) -> list[VideoRef]:
    import fsspec

    try:
        keys = remote.list_files(root)
        fs, base = fsspec.core.url_to_fs(root)
        infos = {k: fs.info(f"{base.rstrip('/')}/{k}") for k in keys
                 if PurePosixPath(k).suffix.lower() in VIDEO_SUFFIXES}
    except remote.RemoteError as exc:
        raise StgtError(f"index: cannot list {exc.url}: {exc.reason}") from None
    except Exception as exc:  # fsspec back-ends raise their own types
        raise StgtError(f"index: cannot list {root}: {type(exc).__name__}: {exc}") from None
    refs = []
    for key, info in sorted(infos.items()):
        if ".." in PurePosixPath(key).parts or key.startswith("/"):
            continue  # a key that would name something outside the prefix
        tag = str(info.get("ETag") or info.get("etag") or "").strip('"') or str(info.get("size", ""))
        refs.append(VideoRef(key, remote.join(root, key), tag))
    return refs


# ---------------------------------------------------------------------------------------------------------------
# building


@dataclass
class Embedded:
    video_id: str
    path: str
    key: str
    vectors: np.ndarray  # (Q, E) float32
    tokens: np.ndarray  # (N, W) float16
    duration_s: float | None
    thumbnail: bytes  # JPEG, b"" when none could be made


def build_index(source: str, out: Path, model_uri: str = models.DEFAULT_RETRIEVAL, split: str | None = None,
                progress: bool = True) -> dict[str, Any]:
    """Embed the videos of `source` into the index at `out` (created or brought up to date)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not (out / INFO_FILE).is_file():
        # The index replaces its folder whole: never a folder that holds something else.
        raise StgtError(f"index: {out} exists and is not an index; give --out a new or empty folder")
    refs = list_source(source, split)
    if not refs:
        raise StgtError(f"index: {source} holds no videos ({', '.join(sorted(VIDEO_SUFFIXES))})")
    duplicates = pd.Series([r.video_id for r in refs]).duplicated()
    if duplicates.any():
        raise StgtError(f"index: video id {refs[int(duplicates.idxmax())].video_id!r} appears twice in {source}")
    ref, python_model = models.load(model_uri)
    old = _reusable(out, ref)
    partial = Partial(out.parent / f"{out.name}.partial", ref)
    done = {**old, **partial.load()}  # key -> Embedded or a quarantine reason
    todo = [r for r in refs if r.key not in done]
    started = time.perf_counter()
    failures: dict[str, str] = {}
    from tqdm import tqdm

    bar = tqdm(todo, desc="index", unit="video", file=sys.stderr, disable=not progress,
               mininterval=0.5 if sys.stderr.isatty() else 30)
    for video in bar:
        try:
            item: Embedded | str = embed_video(python_model, video)
        except VideoUnreadable as exc:
            item = exc.reason
            failures[video.video_id] = exc.reason
        partial.add(video, item)
        done[video.key] = item
    partial.flush()
    seconds = time.perf_counter() - started

    kept, quarantine = [], []
    for video in refs:
        item = done[video.key]
        if isinstance(item, str):
            quarantine.append({"video_id": video.video_id, "path": video.location, "reason": item, "key": video.key})
        else:
            kept.append(Embedded(video.video_id, video.location, video.key, item.vectors, item.tokens,
                                 item.duration_s, item.thumbnail))
    if not kept:
        raise StgtError(f"index: none of the {len(refs)} videos of {source} could be read; first: "
                        f"{quarantine[0]['path']}: {quarantine[0]['reason']}")
    summary = {"videos": len(refs), "indexed": len(kept), "quarantined": len(quarantine),
               "embedded_now": len(todo) - len(failures), "reused": len(kept) - (len(todo) - len(failures)),
               "removed": len(set(old) - {r.key for r in refs}), "seconds_embedding": round(seconds, 2),
               "model": ref.as_dict(), "index": str(out)}
    write_index(out, kept, quarantine, ref, source, split)
    partial.remove()
    return summary


class VideoUnreadable(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def embed_video(python_model: Any, video: VideoRef) -> Embedded:
    """One video through the served model's own reading path (decode, sample, backbone) and its encoders."""
    import torch
    from mlflow.exceptions import MlflowException

    packaged = python_model.packaged
    with _local(video.location) as path:
        try:
            features = packaged.video_features(path)
        except MlflowException as exc:  # the model's one line; the quarantine entry names the file already
            prefix = f"not a readable video: {path}: "
            raise VideoUnreadable(exc.message.removeprefix(prefix)) from None
        duration, thumbnail = _duration_and_thumbnail(path)
    with torch.no_grad():
        tokens = packaged.model.video_tokens(features=features[None])
        vectors = packaged.model.encode_video(tokens)[1]
    return Embedded(video.video_id, video.location, video.key, vectors[0].float().numpy(),
                    tokens[0].to(torch.float16).numpy(), duration, thumbnail)


@contextlib.contextmanager
def _local(location: str) -> Iterator[Path]:
    if not remote.is_remote(location):
        yield Path(location)
        return
    try:
        with remote.local_copy(location, timeout_s=600) as path:
            yield path
    except remote.RemoteError as exc:
        raise VideoUnreadable(f"download failed: {exc.reason}") from None


def _duration_and_thumbnail(path: Path) -> tuple[float | None, bytes]:
    """Seconds (the container's, else frames / rate) and the middle frame as a JPEG; (None, b"") when unknown."""
    import cv2

    from stgt_model.video.decode import DecodeError, read_clip
    from stgt_model.video.probe import ProbeError, probe

    duration = None
    with contextlib.suppress(ProbeError):
        info = probe(path)
        duration = info.duration or (info.num_frames / info.fps if info.num_frames and info.fps else None)
    try:
        frame = read_clip(path, 1, None, "middle").frames[0]
    except DecodeError:
        return duration, b""
    height, width = frame.shape[:2]
    scale = THUMB_SIDE / max(height, width)
    if scale < 1:
        frame = cv2.resize(frame, (max(1, round(width * scale)), max(1, round(height * scale))),
                           interpolation=cv2.INTER_AREA)
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    return duration, jpeg.tobytes() if ok else b""


def _reusable(out: Path, ref: models.ModelRef) -> dict[str, Embedded | str]:
    """key -> what the existing index at `out` holds, when it was built with the same model version."""
    if not (out / INFO_FILE).is_file():
        return {}
    index = VideoIndex.open(out)
    if not index.same_model(ref):
        built = index.info["model"]
        print(f"index: {out} was built with {built['name']} version {built['version']}; re-embedding every video "
              f"with version {ref.version}", file=sys.stderr)
        return {}
    vectors, tokens = index.vectors, index.tokens
    held: dict[str, Embedded | str] = {}
    for row in index.videos.itertuples():
        thumb = (out / row.thumbnail).read_bytes() if row.thumbnail else b""
        held[row.key] = Embedded(row.video_id, row.path, row.key, vectors[row.row], tokens[row.row],
                                 None if pd.isna(row.duration_s) else float(row.duration_s), thumb)
    for q in index.quarantine:
        if q.get("key"):
            held.setdefault(q["key"], q["reason"])
    return held


class Partial:
    """`<index>.partial/`: what an unfinished run embedded, in numbered parts, for the next run to pick up."""

    def __init__(self, folder: Path, ref: models.ModelRef) -> None:
        self.folder, self.ref = folder, ref
        self.pending: list[tuple[VideoRef, Embedded | str]] = []
        self.parts = 0

    def load(self) -> dict[str, Embedded | str]:
        meta = self.folder / "model.json"
        if not meta.is_file() or json.loads(meta.read_text(encoding="utf-8")) != self.ref.as_dict():
            shutil.rmtree(self.folder, ignore_errors=True)  # another model's work: useless
            return {}
        held: dict[str, Embedded | str] = {}
        for part in sorted(self.folder.glob("part-*.npz")):
            try:
                with np.load(part, allow_pickle=False) as data:
                    rows = json.loads(str(data["rows"]))
                    for i, row in enumerate(rows):
                        if row.get("reason") is not None:
                            held[row["key"]] = row["reason"]
                        else:
                            held[row["key"]] = Embedded(row["video_id"], row["path"], row["key"], data[f"v{i}"],
                                                        data[f"t{i}"], row["duration_s"], bytes(data[f"j{i}"]))
            except (OSError, ValueError, KeyError):
                continue  # a part cut short by the interruption: its videos are embedded again
            self.parts += 1
        if held:
            print(f"index: resuming: {len(held)} videos already embedded in {self.folder}", file=sys.stderr)
        return held

    def add(self, video: VideoRef, item: Embedded | str) -> None:
        self.pending.append((video, item))
        if len(self.pending) >= CHECKPOINT_EVERY:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        write_json(self.folder / "model.json", self.ref.as_dict())
        rows, arrays = [], {}
        for i, (video, item) in enumerate(self.pending):
            row = {"video_id": video.video_id, "path": video.location, "key": video.key}
            if isinstance(item, str):
                row["reason"] = item
            else:
                row["duration_s"] = item.duration_s
                arrays.update({f"v{i}": item.vectors, f"t{i}": item.tokens,
                               f"j{i}": np.frombuffer(item.thumbnail, dtype=np.uint8)})
            rows.append(row)
        tmp = self.folder / f".part-{self.parts:05d}.npz"
        with open(tmp, "wb") as handle:  # np.savez would add .npz to a name it is given
            np.savez(handle, rows=np.array(json.dumps(rows)), **arrays)
        os.replace(tmp, self.folder / f"part-{self.parts:05d}.npz")
        self.parts += 1
        self.pending = []

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def write_index(out: Path, kept: list[Embedded], quarantine: list[dict[str, str]], ref: models.ModelRef,
                source: str, split: str | None) -> None:
    import faiss

    vectors = np.stack([e.vectors for e in kept]).astype(np.float32)
    tokens = np.stack([e.tokens for e in kept]).astype(np.float16)
    queries, dim = vectors.shape[1:]
    with atomic_dir(out) as tmp:
        (tmp / THUMBS_DIR).mkdir()
        rows = []
        for row, item in enumerate(kept):
            thumb = ""
            if item.thumbnail:
                thumb = f"{THUMBS_DIR}/{row:07d}.jpg"
                (tmp / thumb).write_bytes(item.thumbnail)
            rows.append({"video_id": item.video_id, "path": item.path, "key": item.key,
                         "duration_s": item.duration_s, "thumbnail": thumb, "row": row})
        pd.DataFrame(rows, columns=VIDEO_COLUMNS).to_parquet(tmp / VIDEOS_FILE, index=False)
        np.save(tmp / VECTORS_FILE, vectors)
        np.save(tmp / TOKENS_FILE, tokens)
        flat = faiss.IndexFlatIP(int(dim))
        flat.add(np.ascontiguousarray(vectors.reshape(-1, dim)))
        faiss.write_index(flat, str(tmp / FAISS_FILE))
        write_json(tmp / QUARANTINE_FILE, quarantine)
        write_json(tmp / INFO_FILE, {
            "format": FORMAT, "model": ref.as_dict(), "source": source, "split": split, "count": len(kept),
            "quarantined": len(quarantine), "queries": int(queries), "embed_dim": int(dim),
            "token_shape": list(tokens.shape[1:]), "built": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


# ---------------------------------------------------------------------------------------------------------------
# reading and searching


class VideoIndex:
    """An index folder, read."""

    def __init__(self, folder: Path, info: dict[str, Any], videos: pd.DataFrame) -> None:
        self.folder, self.info, self.videos = folder, info, videos
        self._vectors: np.ndarray | None = None
        self._tokens: np.ndarray | None = None
        self._faiss: Any = None

    @classmethod
    def open(cls, folder: str | Path) -> VideoIndex:
        folder = Path(folder)
        info_file = folder / INFO_FILE
        if not info_file.is_file():
            raise StgtError(f"{folder}: no index here (build one with `stgt index SOURCE --out {folder}`)")
        info = json.loads(info_file.read_text(encoding="utf-8"))
        if info.get("format") != FORMAT:
            raise StgtError(f"{info_file}: index format {info.get('format')!r}, this version reads {FORMAT}: "
                            "rebuild it with `stgt index`")
        return cls(folder, info, pd.read_parquet(folder / VIDEOS_FILE))

    @property
    def vectors(self) -> np.ndarray:
        if self._vectors is None:
            self._vectors = np.load(self.folder / VECTORS_FILE, mmap_mode="r")
        return self._vectors

    @property
    def tokens(self) -> np.ndarray:
        if self._tokens is None:
            self._tokens = np.load(self.folder / TOKENS_FILE, mmap_mode="r")
        return self._tokens

    @property
    def faiss_index(self) -> Any:
        if self._faiss is None:
            import faiss

            self._faiss = faiss.read_index(str(self.folder / FAISS_FILE))
        return self._faiss

    @property
    def quarantine(self) -> list[dict[str, str]]:
        path = self.folder / QUARANTINE_FILE
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []

    def same_model(self, ref: models.ModelRef) -> bool:
        built = self.info["model"]
        return (built["name"], str(built["version"])) == (ref.name, ref.version)

    def thumbnail_path(self, video_id: str) -> Path | None:
        rows = self.videos[self.videos["video_id"] == video_id]
        if rows.empty or not rows["thumbnail"].iloc[0]:
            return None
        return self.folder / rows["thumbnail"].iloc[0]

    def coarse(self, text_feature: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
        """(video rows, scores) of the `top` best videos by max-over-queries similarity, best first: exact.

        The best vector of the t-th best video ranks at most (t - 1) * Q + 1 among all vectors, so the top t*Q
        vectors hold the top t videos' best ones."""
        queries = int(self.info["queries"])
        total = len(self.videos)
        top = min(top, total)
        wanted = min(total * queries, top * queries)
        scores, ids = self.faiss_index.search(np.ascontiguousarray(text_feature[None], dtype=np.float32), wanted)
        best: dict[int, float] = {}
        for vector, score in zip(ids[0], scores[0]):
            if vector < 0:
                continue
            video = int(vector) // queries
            if video not in best:  # faiss returns vectors best first: the first of a video is its max
                best[video] = float(score)
        order = sorted(best.items(), key=lambda item: -item[1])[:top]
        return np.array([v for v, _ in order], dtype=np.int64), np.array([s for _, s in order], dtype=np.float64)


@dataclass(frozen=True)
class Hit:
    rank: int
    video_id: str
    score: float
    path: str
    thumbnail: Path | None
    duration_s: float | None
    similarity: float  # the coarse score; `score` adds the match probability where re-ranked
    reranked: bool


class Searcher:
    """Text queries against an index, with the model version the index was built with."""

    def __init__(self, index: VideoIndex, model_uri: str | None = None) -> None:
        ref, python_model = models.load(model_uri or models.DEFAULT_RETRIEVAL)
        if not index.same_model(ref):
            built = index.info["model"]
            raise StgtError(f"{index.folder} was built with {built['name']} version {built['version']}, but "
                            f"{ref.uri} is version {ref.version}: re-run `stgt index` with this model")
        self.index, self.ref, self.python_model = index, ref, python_model
        self.default_rerank = int(python_model.packaged.config.get("evaluate", {}).get("k_test", 0))

    def text_feature(self, query: str) -> tuple[np.ndarray, Any, Any]:
        import torch

        packaged = self.python_model.packaged
        encoded = packaged.processor([query])
        with torch.no_grad():
            feature = packaged.model.encode_text(encoded["input_ids"], encoded["attention_mask"])[1][0]
        return feature.numpy(), encoded["input_ids"], encoded["attention_mask"]

    def search(self, query: str, top: int = 10, rerank: int | None = None) -> list[Hit]:
        """The `top` videos for `query`: coarse similarity, then (as evaluate does) the best `rerank` (default: the
        model's evaluation k_test; 0: none) re-scored as match probability + similarity, ranked above the rest."""
        import torch

        query = query.strip()
        if not query:
            raise StgtError("search: the query is empty")
        if top < 1:
            raise StgtError(f"search: --top must be at least 1, got {top}")
        rerank = self.default_rerank if rerank is None else rerank
        feature, ids, mask = self.text_feature(query)
        rows, sims = self.index.coarse(feature, max(top, rerank))
        scores = sims.copy()
        k = min(rerank, len(rows))
        if k:
            tokens = torch.from_numpy(np.asarray(self.index.tokens[rows[:k]], dtype=np.float32))
            with torch.no_grad():
                p_match = self.python_model.packaged.model.itm_scores(tokens, ids.expand(k, -1), mask.expand(k, -1))
            scores[:k] = p_match.numpy().astype(np.float64) + sims[:k]
            head = np.argsort(-scores[:k], kind="stable")
            order = np.concatenate([head, np.arange(k, len(rows))])
        else:
            order = np.arange(len(rows))
        videos = self.index.videos
        hits = []
        for rank, position in enumerate(order[:top], start=1):
            row = videos.iloc[int(rows[position])]
            hits.append(Hit(rank, str(row["video_id"]), float(scores[position]), str(row["path"]),
                            self.index.folder / row["thumbnail"] if row["thumbnail"] else None,
                            None if pd.isna(row["duration_s"]) else float(row["duration_s"]),
                            float(sims[position]), bool(position < k)))
        return hits
