"""stgt_model.data: the clip store over memory-mapped shards, the datasets and their collate functions."""
import pickle
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

from stgt_model.config import QFormerConfig
from stgt_model.data import (
    SHARDS_ROOT_KEY,
    STORE_KIND_KEY,
    ClipStore,
    VideoQADataset,
    VideoTextDataset,
    collate_video_qa,
    collate_video_text,
    normalise_frames,
    probe_pairs,
)
from stgt_model.qa import AnswerVocab
from stgt_model.qformer import TextProcessor, build_tokenizer

T, S, TOKENS, DIM = 2, 8, 5, 6
# split, captions, qa, twin: a train clip with its reversed twin, a test clip with its probe twin, a val clip.
ROWS = [
    ("a", "train", ["a dog runs", "a dog runs left", "the dog", "dog"], [("what runs?", "dog", "what")], "a_rev"),
    ("a_rev", "train", ["a dog runs backwards"], [], "a"),
    ("b", "test", ["a cat sits"], [("what sits?", "cat", "what"), ("is it red?", "purple", "yes_no")], "b_rev"),
    ("b_rev", "probe", ["a cat stands up"], [], "b"),
    ("c", "val", ["a bird flies", "a bird"], [], None),
]


def manifest(rows=ROWS) -> pd.DataFrame:
    return pd.DataFrame([{"video_id": v, "split": split, "captions": np.array(caps, dtype=object),
                          "qa": [{"question": q, "answer": a, "type": k} for q, a, k in qa], "twin_id": twin}
                         for v, split, caps, qa, twin in rows])


def write_store(folder: Path, kind: str, video_ids: list[str], shards_root: str | None = None) -> dict[str, np.ndarray]:
    """Two shards in `folder/shards` (or where shards_root says), an index with the store metadata."""
    rng = np.random.default_rng(0)
    shard_dir = folder / (shards_root or ".") / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    clips, rows = {}, []
    halves = [video_ids[: len(video_ids) // 2 + 1], video_ids[len(video_ids) // 2 + 1:]]
    for number, ids in enumerate(halves):
        shard = f"shards/{kind}-{number:05d}.npy"
        data = (rng.integers(0, 256, (len(ids), T, S, S, 3), dtype=np.uint8) if kind == "frames"
                else rng.standard_normal((len(ids), T, TOKENS, DIM)).astype(np.float16))
        np.save(folder / (shards_root or ".") / shard, data)
        for offset, video_id in enumerate(ids):
            clips[video_id] = data[offset]
            rows.append({"video_id": video_id, "split": "x", "shard": shard, "offset": offset})
    table = pa.Table.from_pandas(pd.DataFrame(rows), preserve_index=False)
    meta = {STORE_KIND_KEY.encode(): kind.encode(), SHARDS_ROOT_KEY.encode(): (shards_root or ".").encode()}
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, **meta}), folder / "index.parquet")
    return clips


STORED = ["a", "a_rev", "b", "b_rev"]  # "c" was quarantined by extract_frames


@pytest.fixture
def features(tmp_path) -> tuple[ClipStore, dict[str, np.ndarray]]:
    clips = write_store(tmp_path / "features", "features", STORED)
    return ClipStore(tmp_path / "features"), clips


@pytest.fixture
def frames(tmp_path) -> tuple[ClipStore, dict[str, np.ndarray]]:
    clips = write_store(tmp_path / "frames", "frames", STORED)
    return ClipStore(tmp_path / "frames"), clips


def fake_tokenizer(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([[len(t), len(t.split())] for t in texts])
    return ids, torch.ones_like(ids)


# -- the store -----------------------------------------------------------------------------------------------------
def test_store_reads_features_as_float32_and_frames_as_uint8(features, frames):
    store, clips = features
    assert store.kind == "features" and len(store) == 4 and "b_rev" in store and "c" not in store
    clip = store.get("b_rev")
    assert clip.dtype == torch.float32 and clip.shape == (T, TOKENS, DIM)
    np.testing.assert_array_equal(clip.numpy(), clips["b_rev"].astype(np.float32))
    store, clips = frames
    clip = store.get("a_rev")
    assert store.kind == "frames" and clip.dtype == torch.uint8 and clip.shape == (T, S, S, 3)
    np.testing.assert_array_equal(clip.numpy(), clips["a_rev"])
    clip[0, 0, 0, 0] = 255 - clip[0, 0, 0, 0]  # a private copy: writing it leaves the shard alone
    np.testing.assert_array_equal(store.get("a_rev").numpy(), clips["a_rev"])


def test_extract_frames_index_without_metadata_is_a_frames_store(tmp_path, frames):
    store, clips = frames
    plain = tmp_path / "plain"
    plain.mkdir()
    store.index.to_parquet(plain / "index.parquet", index=False)  # pandas writes no stgt.* keys
    np.testing.assert_array_equal(ClipStore(plain, shards_root=tmp_path / "frames").get("b").numpy(), clips["b"])
    assert ClipStore(plain).kind == "frames"


def test_store_follows_its_shards_root_and_names_what_is_missing(tmp_path):
    clips = write_store(tmp_path / "features", "frames", STORED, shards_root="../frames")
    store = ClipStore(tmp_path / "features")
    np.testing.assert_array_equal(store.get("b").numpy(), clips["b"])
    with pytest.raises(KeyError, match="no clip for video 'zzz'"):
        store.get("zzz")
    (tmp_path / "frames/shards/frames-00001.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"frames-00001\.npy: shard of video 'b_rev'"):
        store.get("b_rev")
    with pytest.raises(FileNotFoundError, match="clip store index not found"):
        ClipStore(tmp_path / "nowhere")


def test_pickled_store_carries_no_shard_data(features):
    store, clips = features
    store.get("a")  # opens a shard
    copy = pickle.loads(pickle.dumps(store))
    assert copy._shards == {} and len(pickle.dumps(store)) < 20_000
    np.testing.assert_array_equal(copy.get("a").numpy(), clips["a"].astype(np.float32))


def test_normalise_frames_scales_normalises_and_resizes():
    frames = torch.zeros(1, 2, 4, 4, 3, dtype=torch.uint8)
    frames[..., 0] = 255  # pure red
    out = normalise_frames(frames, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0), image_size=4)
    assert out.shape == (1, 2, 3, 4, 4) and out.dtype == torch.float32
    torch.testing.assert_close(out[0, 1, :, 2, 2], torch.tensor([1.0, -1.0, 0.0]))
    resized = normalise_frames(frames, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0), image_size=8)
    assert resized.shape == (1, 2, 3, 8, 8)
    torch.testing.assert_close(resized[0, 0, :, 5, 5], torch.tensor([1.0, -1.0, 0.0]))


# -- datasets ------------------------------------------------------------------------------------------------------
def test_video_text_first_and_all_modes(features):
    store, clips = features
    first = VideoTextDataset(store, manifest(), "train", caption_mode="first")
    assert len(first) == 2 and first.missing == []
    item = first[1]
    assert item["video_id"] == "a_rev" and item["caption"] == "a dog runs backwards" and item["index"] == 1
    np.testing.assert_array_equal(item["video"].numpy(), clips["a_rev"].astype(np.float32))

    every = VideoTextDataset(store, manifest(), "train", caption_mode="all")
    assert [(it["index"], it["caption"]) for it in every] == [
        (0, "a dog runs"), (0, "a dog runs left"), (0, "the dog"), (0, "dog"), (1, "a dog runs backwards")]


def test_random_captions_are_reproducible_and_change_with_the_epoch(features):
    store, _ = features
    dataset = VideoTextDataset(store, manifest(), "train", caption_mode="random", seed=3)
    again = VideoTextDataset(store, manifest(), "train", caption_mode="random", seed=3)
    drawn = []
    for epoch in range(12):
        dataset.set_epoch(epoch)
        again.set_epoch(epoch)
        drawn.append(dataset[0]["caption"])
        assert again[0]["caption"] == drawn[-1] and dataset[0]["caption"] == drawn[-1]
    assert len(set(drawn)) > 1 and set(drawn) <= set(ROWS[0][2])


def test_split_clips_missing_from_the_store_are_listed(features):
    store, _ = features
    assert VideoTextDataset(store, manifest(), "val").missing == ["c"]
    assert len(VideoTextDataset(store, manifest(), "val")) == 0
    with pytest.raises(ValueError, match="caption_mode"):
        VideoTextDataset(store, manifest(), "train", caption_mode="best")


def test_video_qa_items_and_answer_indices(frames):
    store, _ = frames
    vocab = AnswerVocab(("cat", "dog"))
    dataset = VideoQADataset(store, manifest(), "test", vocab)
    assert len(dataset) == 2
    assert {k: v for k, v in dataset[0].items() if k != "video"} == {
        "video_id": "b", "question": "what sits?", "answer_index": 0, "question_type": "what", "answer": "cat"}
    assert dataset[1]["answer_index"] == vocab.unknown_index == 2  # "purple" is outside the vocabulary
    from_map = VideoQADataset(store, manifest().to_dict("records"), "train", {"dog": 0, "cat": 1})
    assert len(from_map) == 1 and from_map[0]["answer_index"] == 0


def test_probe_pairs_join_test_clips_to_their_probe_twins():
    assert probe_pairs(manifest()) == [("b", "b_rev")]
    broken = [r if r[0] != "b_rev" else ("b_rev", "train", *r[2:]) for r in ROWS]
    with pytest.raises(ValueError, match="test video 'b': its twin 'b_rev' is in split 'train'"):
        probe_pairs(manifest(broken))


# -- collate -------------------------------------------------------------------------------------------------------
def test_collate_video_text_with_any_tokenizer_callable(features):
    store, _ = features
    dataset = VideoTextDataset(store, manifest(), "train", caption_mode="all")
    loader = DataLoader(dataset, batch_size=3, collate_fn=partial(collate_video_text, tokenizer_fn=fake_tokenizer))
    batch = next(iter(loader))
    assert batch["video"].shape == (3, T, TOKENS, DIM) and batch["video"].dtype == torch.float32
    assert batch["input_ids"].tolist() == [[10, 3], [15, 4], [7, 2]]
    assert batch["index"].tolist() == [0, 0, 0] and batch["video_id"] == ["a", "a", "a"]


def test_collate_with_the_qformer_text_processor_and_frames(frames):
    store, _ = frames
    cfg = QFormerConfig(text_model="random", max_text_len=8)
    processor = TextProcessor(build_tokenizer(cfg), cfg.max_text_len)
    text = collate_video_text([VideoTextDataset(store, manifest(), "test", "first")[0]], processor)
    assert text["video"].shape == (1, T, S, S, 3) and text["video"].dtype == torch.uint8
    assert text["input_ids"].shape == text["attention_mask"].shape == (1, 8)
    assert processor.tokenizer.decode(text["input_ids"][0], skip_special_tokens=True) == "a cat sits"

    qa = collate_video_qa(list(VideoQADataset(store, manifest(), "test", AnswerVocab(("cat",)))), processor)
    assert qa["answer_index"].tolist() == [0, 1] and qa["question_type"] == ["what", "yes_no"]
    assert qa["input_ids"].shape == (2, 8) and qa["video"].shape == (2, T, S, S, 3)
