"""The synthetic corpus: deterministic, time-dependent text for every clip and its reversed twin, real videos."""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest

from stgt_model.video.probe import probe
from stgt_pipeline.components.prepare import stage as prepare
from stgt_pipeline.io.manifest import read_manifest
from stgt_pipeline.params import Params, PrepareConfig
from stgt_pipeline.sources import synthetic

SMALL = dict(num_videos=9, frames_per_video=8, width=64, height=64)
TIME_DEPENDENT = ("direction", "order")


def make(out: Path, **overrides) -> pd.DataFrame:
    params = Params(prepare=PrepareConfig(**{**SMALL, **overrides}))
    prepare.run(params, {}, {"dataset": out})
    return read_manifest(out).table


def decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]).astype(np.int16)


def is_time_dependent(pair: dict) -> bool:
    """Direction, order, and colour at the start/end or after a change."""
    colour_in_time = pair["type"] == "colour" and any(w in pair["question"] for w in ("at the start", "at the end", "turn"))
    return pair["type"] in TIME_DEPENDENT or colour_in_time


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    out = tmp_path_factory.mktemp("syn") / "dataset"
    return out, make(out)


def twin_pairs(table: pd.DataFrame) -> list[tuple[pd.Series, pd.Series]]:
    rows = table.set_index("video_id")
    originals = rows[rows["twin_id"].notna() & ~rows.index.str.endswith("_rev")]
    return [(row, rows.loc[row.twin_id]) for _, row in originals.iterrows()]


def test_same_seed_gives_identical_manifest_and_video_bytes(corpus, tmp_path):
    out, table = corpus
    again = make(tmp_path / "again")
    pd.testing.assert_frame_equal(table, again)
    for rel in table["path"]:
        assert (out / rel).read_bytes() == (tmp_path / "again" / rel).read_bytes(), rel


def test_another_seed_gives_another_corpus(corpus, tmp_path):
    _, table = corpus
    other = make(tmp_path / "other", seed=1)
    assert list(other["captions"]) != list(table["captions"])
    assert set(other["sha256"]).isdisjoint(table["sha256"])


def test_splits_follow_the_shares_and_twins_are_laid_out(corpus):
    _, table = corpus
    base = table[~table["video_id"].str.endswith("_rev")]
    assert base["split"].value_counts().to_dict() == {"train": 6, "test": 2, "val": 1}
    twins = table[table["video_id"].str.endswith("_rev")]
    rows = table.set_index("video_id")
    for vid, row in rows.iterrows():
        if pd.notna(row.twin_id):
            assert rows.loc[row.twin_id, "twin_id"] == vid  # linked both ways
    # train twins stay in train; test twins go to the probe split; val gets none
    assert sorted(rows.loc[twins["twin_id"], "split"]) == sorted(["train"] * 6 + ["test"] * 2)
    assert set(twins.loc[twins["split"] == "probe", "twin_id"]) == set(base.loc[base["split"] == "test", "video_id"])
    assert (twins["split"] == "train").sum() == 6
    assert base.loc[base["split"] == "val", "twin_id"].isna().all()


def test_the_worker_pool_gives_the_same_rows_as_one_process(tmp_path):
    cfg = PrepareConfig(**SMALL)
    rows = {}
    for workers in (1, 2):
        root = tmp_path / str(workers)
        (root / "videos").mkdir(parents=True)
        args = [(cfg, root, i, "test") for i in range(4)]
        rows[workers] = list(synthetic.map_in_order(synthetic.clip_rows, args, workers))
    assert rows[1] == rows[2]


def test_a_clip_encodes_to_the_same_bytes_whatever_was_encoded_before(tmp_path):
    """The same frames, encoded again after other clips in the same process, give the same file."""
    cfg = PrepareConfig(**SMALL)
    digests: dict[str, set[str]] = {}
    for repeat in range(4):
        root = tmp_path / str(repeat)
        (root / "videos").mkdir(parents=True)
        for index in range(5):
            for row in synthetic.clip_rows(cfg, root, index, "train"):
                digests.setdefault(row["video_id"], set()).add(row["sha256"])
    assert all(len(found) == 1 for found in digests.values()), digests


def test_split_counts_for_the_default_size():
    assert synthetic.split_counts(120, 0.1, 0.2) == {"train": 84, "val": 12, "test": 24}


def test_without_reversed_twins_only_the_probe_keeps_twins(tmp_path):
    table = make(tmp_path / "d", reversed_twins=False)
    assert set(table.loc[table["video_id"].str.endswith("_rev"), "split"]) == {"probe"}
    assert (table["split"] == "train").sum() == 6


def test_captions_and_time_dependent_answers_differ_for_every_twin(corpus):
    _, table = corpus
    pairs = twin_pairs(table)
    assert len(pairs) == 8
    for clip, twin in pairs:
        assert set(clip.captions).isdisjoint(twin.captions), (clip.captions, twin.captions)
        answers = {q["question"]: q["answer"] for q in twin.qa}
        assert answers.keys() == {q["question"] for q in clip.qa}
        for q in clip.qa:
            if is_time_dependent(q):
                assert answers[q["question"]] != q["answer"], q


@pytest.mark.parametrize("frames", [4, 8, 24])
def test_every_generated_clip_reads_differently_backwards(frames):
    for index in range(400):
        clip = synthetic.make_clip(7, index, frames)
        assert 1 <= len(clip.text.captions) <= 3 and len(clip.script.events) >= 1
        assert set(clip.text.captions).isdisjoint(clip.reversed_text.captions)
        forward = {q["question"]: q["answer"] for q in clip.text.qa}
        backward = {q["question"]: q["answer"] for q in clip.reversed_text.qa}
        assert forward.keys() == backward.keys()
        assert all(forward[q["question"]] != backward[q["question"]] for q in clip.text.qa if is_time_dependent(q))


def test_reversed_script_renders_exactly_the_reversed_frames():
    for index in range(150):
        script = synthetic.make_clip(3, index, 10).script
        forward, backward = synthetic.renderer(script, 64, 48), synthetic.renderer(synthetic.reverse(script), 64, 48)
        assert all(np.array_equal(forward(t), backward(9 - t)) for t in range(10)), index


def test_reversing_twice_gives_the_script_back():
    script = synthetic.make_clip(0, 5, 12).script
    assert synthetic.reverse(synthetic.reverse(script)) == script


def test_rendered_twin_is_the_frame_reversed_clip(corpus):
    out, table = corpus
    for clip, twin in twin_pairs(table)[:3]:
        frames, twin_frames = decode(out / clip.path), decode(out / twin.path)
        assert np.abs(frames[::-1] - twin_frames).mean() < 2.0
        assert np.abs(frames - twin_frames).mean() > 2 * np.abs(frames[::-1] - twin_frames).mean()


def test_videos_decode_with_the_configured_size_and_length(corpus):
    out, table = corpus
    for row in table.itertuples():
        frames = decode(out / row.path)
        assert frames.shape == (8, 64, 64, 3), row.path
    info = probe(out / table["path"].iloc[0])
    row = table.iloc[0]
    assert (info.width, info.height, info.codec) == (row.width, row.height, row.codec)
    assert info.fps == pytest.approx(row.fps) and info.duration == pytest.approx(row.duration)


def test_captions_and_qa_come_from_a_closed_vocabulary(corpus):
    _, table = corpus
    vocab = set(synthetic.COLOURS) | set(synthetic.SHAPES) | set(synthetic.STEPS) | set(synthetic.NUMBERS)
    for qa in table["qa"]:
        assert {q["type"] for q in qa} <= {"colour", "shape", "count", "direction", "order"}
        for q in qa:
            assert set(q["answer"].split()) <= vocab | {"moves", "appears", "disappears", "changes", "colour"}, q


def test_odd_frame_sizes_are_refused_readably(tmp_path):
    from stgt_pipeline.errors import StgtError

    with pytest.raises(StgtError, match="even"):
        make(tmp_path / "d", width=65)
    assert not (tmp_path / "d").exists()


def test_no_two_clips_share_a_scene_even_in_a_large_corpus():
    # Without redraws, one shape vanishing in place recurs every few hundred clips: byte-identical videos in
    # different splits, which validate rightly rejects as leakage.
    from stgt_pipeline.sources.synthetic import draw_script, reverse, unique_attempts

    attempts = unique_attempts(seed=0, count=1500, frames=24)
    scripts = [draw_script(0, i, 24, a)[0] for i, a in enumerate(attempts)]
    assert any(attempts), "the corpus is large enough that some clips need a redraw"
    scenes = scripts + [reverse(s) for s in scripts]
    assert len(set(scenes)) == len(scenes)
