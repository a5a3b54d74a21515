"""Training data over the pipeline's clip stores: memory-mapped shards, the datasets of pre-training, fine-tuning
and evaluation, and their collate functions. Pure: numpy/Parquet files in, tensors out; no stage knowledge.

A clip store is a folder with `index.parquet` (video_id, split, shard, offset, ...) and `.npy` shards:
- frames   (extract_frames): shards/frames-NNNNN.npy (n, T, S, S, 3) uint8 RGB
- features (build_graphs):   shards/features-NNNNN.npy (n, T, 1 + h*w, C) float16 frozen-backbone tokens
The index's Parquet metadata may say which of the two its shards hold (`stgt.store_kind`, default frames) and
where they lie (`stgt.shards_root`, relative to the index's folder, default the folder itself): build_graphs'
frames-only output is an index over the frame shards of its sibling frames folder.

Manifest rows are the manifest table (a DataFrame, or the Manifest holding it) or any iterable of row mappings
with video_id, split, captions, qa and twin_id, as components/manifest.py writes them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from stgt_model.qa import AnswerVocab

INDEX_NAME = "index.parquet"
STORE_KIND_KEY = "stgt.store_kind"
SHARDS_ROOT_KEY = "stgt.shards_root"
StoreKind = Literal["frames", "features"]
CaptionMode = Literal["random", "all", "first"]
TokenizerFn = Callable[[list[str]], Mapping[str, Tensor] | tuple[Tensor, Tensor]]


class ClipStore:
    """One clip per video id, read from memory-mapped shards: `get(video_id)` -> (T, S, S, 3) uint8 frames or
    (T, 1 + h*w, C) float32 features. `shards_root` overrides where the shards are looked for (e.g. the frames
    folder of a frames-only features store, when the two folders were moved apart)."""

    def __init__(self, folder: str | Path, shards_root: str | Path | None = None) -> None:
        folder = Path(folder)
        index_path = folder / INDEX_NAME
        if not index_path.is_file():
            raise FileNotFoundError(f"{index_path}: clip store index not found")
        table = pq.read_table(index_path)
        meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
        kind = meta.get(STORE_KIND_KEY, "frames")
        if kind not in ("frames", "features"):
            raise ValueError(f"{index_path}: unknown {STORE_KIND_KEY} {kind!r}")
        self.kind: StoreKind = kind
        self.index_path = index_path
        self.shards_root = Path(shards_root) if shards_root is not None else folder / meta.get(SHARDS_ROOT_KEY, ".")
        self.index = table.to_pandas()
        duplicated = self.index["video_id"][self.index["video_id"].duplicated()]
        if len(duplicated):
            raise ValueError(f"{index_path}: video ids listed twice: {sorted(set(duplicated))[:5]}")
        self._location = dict(zip(self.index["video_id"], zip(self.index["shard"], self.index["offset"])))
        self._shards: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._location)

    def __contains__(self, video_id: object) -> bool:
        return video_id in self._location

    def array(self, video_id: str) -> np.ndarray:
        """The clip as a read-only view into its memory-mapped shard."""
        if video_id not in self._location:
            raise KeyError(f"{self.index_path}: no clip for video {video_id!r}")
        shard, offset = self._location[video_id]
        return self._shard(shard, video_id)[offset]

    def get(self, video_id: str) -> Tensor:
        clip = self.array(video_id)
        if self.kind == "features":
            return torch.from_numpy(clip.astype(np.float32))
        return torch.from_numpy(np.array(clip))  # a copy: tensors over a read-only memmap are unsafe to write

    def _shard(self, shard: str, video_id: str) -> np.ndarray:
        if shard not in self._shards:
            path = self.shards_root / shard
            if not path.is_file():
                raise FileNotFoundError(f"{path}: shard of video {video_id!r} (listed in {self.index_path}) not found")
            self._shards[shard] = np.load(path, mmap_mode="r")
        return self._shards[shard]

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers started with spawn pickle the dataset; a pickled memmap would copy the whole shard.
        return {**self.__dict__, "_shards": {}}


def normalise_frames(frames: Tensor, mean: Sequence[float], std: Sequence[float], image_size: int) -> Tensor:
    """uint8 (B, T, S, S, 3) -> float (B, T, 3, image_size, image_size): /255, resized if S differs, normalised.

    The result keeps the channels-last memory layout of the input, which convolutional backbones run faster on.
    """
    batch, num_frames = frames.shape[:2]
    images = frames.flatten(0, 1).permute(0, 3, 1, 2).float().div_(255.0)
    if images.shape[-2:] != (image_size, image_size):
        # As the reference resizes whole frames: aspect not kept, no crop (stgt-reference.md §3.3).
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False,
                               antialias=True)
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    images = (images - mean_t) / std_t
    return images.unflatten(0, (batch, num_frames))


# ---------------------------------------------------------------------------------------------------------------
# manifest rows


def manifest_records(manifest_rows: Any) -> list[dict[str, Any]]:
    """Rows as plain dicts from a manifest DataFrame, a Manifest (its `.table`) or an iterable of mappings."""
    table = getattr(manifest_rows, "table", manifest_rows)
    if isinstance(table, pd.DataFrame):
        return table.to_dict("records")
    return [dict(row) for row in table]


def rows_in_store(store: ClipStore, manifest_rows: Any, split: str) -> tuple[list[dict[str, Any]], list[str]]:
    """(the split's rows whose clip is in the store, video ids of the split's rows that are not)."""
    chosen = [row for row in manifest_records(manifest_rows) if row["split"] == split]
    present = [row for row in chosen if row["video_id"] in store]
    missing = [row["video_id"] for row in chosen if row["video_id"] not in store]
    return present, missing


def probe_pairs(manifest_rows: Any) -> list[tuple[str, str]]:
    """(test video id, its time-reversed twin's id) for every test clip whose twin is in the `probe` split."""
    rows = manifest_records(manifest_rows)
    split_of = {row["video_id"]: row["split"] for row in rows}
    pairs = []
    for row in rows:
        twin = row.get("twin_id")
        if row["split"] != "test" or not isinstance(twin, str) or not twin:
            continue
        if split_of.get(twin) != "probe":
            where = f"in split {split_of[twin]!r}" if twin in split_of else "not in the manifest"
            raise ValueError(f"test video {row['video_id']!r}: its twin {twin!r} is {where}, expected split 'probe'")
        pairs.append((row["video_id"], twin))
    return pairs


# ---------------------------------------------------------------------------------------------------------------
# datasets


class VideoTextDataset(Dataset):
    """Video-caption pairs of one split: {video_id, video, caption, index}, `index` = the video's position.

    caption_mode: "random" one item per video with a caption drawn from (seed, epoch, video), so a run is
    reproducible and resumable whatever the worker count (call `set_epoch` each epoch for fresh draws); "first"
    one item per video with its first caption; "all" one item per caption (retrieval evaluation: text i belongs
    to video `index`). Train twins (time-reversed clips, `twin_id` set) are ordinary rows of their split.
    Videos of the split missing from the store (quarantined by extract_frames) are listed in `missing`.
    """

    def __init__(self, store: ClipStore, manifest_rows: Any, split: str, caption_mode: CaptionMode = "random",
                 seed: int = 0) -> None:
        if caption_mode not in ("random", "all", "first"):
            raise ValueError(f"caption_mode must be random, all or first, got {caption_mode!r}")
        rows, self.missing = rows_in_store(store, manifest_rows, split)
        uncaptioned = [row["video_id"] for row in rows if len(row["captions"]) == 0]
        if uncaptioned:
            raise ValueError(f"split {split!r}: videos without a caption: {uncaptioned[:5]}")
        self.store = store
        self.caption_mode = caption_mode
        self.seed = seed
        self.epoch = 0
        self.video_ids = [row["video_id"] for row in rows]
        self.captions = [[str(c) for c in row["captions"]] for row in rows]
        if caption_mode == "all":
            self.items = [(video, k) for video, caps in enumerate(self.captions) for k in range(len(caps))]
        else:
            self.items = [(video, None) for video in range(len(self.video_ids))]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        video, caption = self.items[i]
        if caption is None:
            caption = 0 if self.caption_mode == "first" else self._draw(video)
        video_id = self.video_ids[video]
        return {"video_id": video_id, "video": self.store.get(video_id), "caption": self.captions[video][caption],
                "index": video}

    def _draw(self, video: int) -> int:
        rng = np.random.default_rng((self.seed, self.epoch, video))
        return int(rng.integers(len(self.captions[video])))


class TwinPairs(Dataset):
    """Train items grouped with their time-reversed twins: item i is [clip, twin] (or [clip] without one).

    With the engine's batch size halved, a batch holds both halves of every pair, the hardest negatives the
    corpus has: the clip and its twin differ only in frame order, and so do their captions. Collate with
    `collate_twin_groups`.
    """

    def __init__(self, base: VideoTextDataset, manifest_rows: Any) -> None:
        self.base = base
        position = {video_id: i for i, video_id in enumerate(base.video_ids)}
        twin_of = {row["video_id"]: row.get("twin_id") for row in manifest_records(manifest_rows)}
        self.groups: list[list[int]] = []
        seen: set[int] = set()
        for i, video_id in enumerate(base.video_ids):
            if i in seen:
                continue
            twin = position.get(twin_of.get(video_id))
            group = [i] if twin is None or twin in seen else [i, twin]
            seen.update(group)
            self.groups.append(group)

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, i: int) -> list[dict[str, Any]]:
        return [self.base[j] for j in self.groups[i]]

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)


class VideoQADataset(Dataset):
    """One item per question of the split's videos: {video_id, video, question, answer_index, question_type,
    answer}. Answers outside the vocabulary get `answer_vocab.unknown_index` (always scored wrong, stgt_model.qa)."""

    def __init__(self, store: ClipStore, manifest_rows: Any, split: str,
                 answer_vocab: AnswerVocab | Mapping[str, int]) -> None:
        rows, self.missing = rows_in_store(store, manifest_rows, split)
        self.store = store
        self.vocab = answer_vocab if isinstance(answer_vocab, AnswerVocab) else AnswerVocab.from_dict(answer_vocab)
        self.items = [(row["video_id"], dict(qa)) for row in rows
                      for qa in (row["qa"] if row["qa"] is not None else ())]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        video_id, qa = self.items[i]
        return {"video_id": video_id, "video": self.store.get(video_id), "question": qa["question"],
                "answer_index": self.vocab.encode(qa["answer"]), "question_type": qa["type"], "answer": qa["answer"]}


# ---------------------------------------------------------------------------------------------------------------
# collate


def tokenize(tokenizer_fn: TokenizerFn, texts: list[str]) -> tuple[Tensor, Tensor]:
    """(input_ids, attention_mask) from a callable returning either a mapping with those keys or the pair."""
    encoded = tokenizer_fn(texts)
    if isinstance(encoded, Mapping):
        return encoded["input_ids"], encoded["attention_mask"]
    input_ids, attention_mask = encoded
    return input_ids, attention_mask


def _collate(batch: list[dict[str, Any]], text_field: str, tokenizer_fn: TokenizerFn) -> dict[str, Any]:
    """Stacked videos and the tokenized `text_field` of every item, with the items' texts and video ids."""
    texts = [item[text_field] for item in batch]
    input_ids, attention_mask = tokenize(tokenizer_fn, texts)
    return {"video": torch.stack([item["video"] for item in batch]), "input_ids": input_ids,
            "attention_mask": attention_mask, text_field: texts, "video_id": [item["video_id"] for item in batch]}


def collate_video_text(batch: list[dict[str, Any]], tokenizer_fn: TokenizerFn) -> dict[str, Any]:
    """Stack videos and tokenize captions. `tokenizer_fn` is normally the Q-Former's
    `stgt_model.qformer.TextProcessor(build_tokenizer(cfg), cfg.max_text_len)` (blip_caption, then BERT tokens);
    bind it with functools.partial for a DataLoader."""
    out = _collate(batch, "caption", tokenizer_fn)
    out["index"] = torch.tensor([item["index"] for item in batch], dtype=torch.long)
    return out


def collate_video_qa(batch: list[dict[str, Any]], tokenizer_fn: TokenizerFn) -> dict[str, Any]:
    """Stack videos, tokenize questions, and gather answer indices (as `collate_video_text`)."""
    out = _collate(batch, "question", tokenizer_fn)
    out["answer_index"] = torch.tensor([item["answer_index"] for item in batch], dtype=torch.long)
    out["answer"] = [item["answer"] for item in batch]
    out["question_type"] = [item["question_type"] for item in batch]
    return out


def collate_twin_groups(groups: list[list[dict[str, Any]]], tokenizer_fn: TokenizerFn) -> dict[str, Any]:
    """One batch of TwinPairs' groups (as `collate_video_text`), with `twin_index`: the batch position of each
    item's twin, -1 for none."""
    batch = collate_video_text([item for group in groups for item in group], tokenizer_fn)
    twin_index, start = [], 0
    for group in groups:
        twin_index += [start + 1, start] if len(group) == 2 else [-1]
        start += len(group)
    batch["twin_index"] = torch.tensor(twin_index, dtype=torch.long)
    return batch
