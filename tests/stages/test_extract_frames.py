"""Stage `extract_frames` on a tiny manifest: moving-square clips made with PyAV plus unreadable ones (a copy of
the shared corrupt mp4, a named pipe that never delivers); and on small synthetic corpora from the prepare stage,
for the sampling of the temporal-order probe."""
import json
import os
import shutil
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest

from stgt_model.metrics import temporal_order_probe
from stgt_model.video.decode import read_clip
from stgt_pipeline.components.extract_frames import stage as extract_frames
from stgt_pipeline.components.prepare import stage as prepare
from stgt_pipeline.errors import StageFailed
from stgt_pipeline.io.manifest import read_manifest, write_manifest
from stgt_pipeline.params import Params
from stgt_pipeline.quality import gx
from stgt_pipeline.quality.gx import SuiteResult

VIDEOS = Path(__file__).resolve().parents[2].parent / "shared" / "real-media" / "videos"
CORRUPT = VIDEOS / "edge_cases" / "decord_corrupted.mp4"
T, SIZE = 4, 32
SPLITS = {"a": "train", "b": "train", "c": "train", "d": "val", "e": "test"}


def make_clip(path: Path, frames: int, seed: int) -> None:
    """A coloured square moving across a dark background, 64x64 H.264."""
    rng = np.random.default_rng(seed)
    colour = rng.integers(80, 255, 3).astype(np.uint8)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=8)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            img = np.full((64, 64, 3), 20, np.uint8)
            x = 2 * i % 32
            img[10:26, x:x + 16] = colour
            out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(stream.encode())


def manifest_row(vid: str, split: str, path: str) -> dict:
    return {"video_id": vid, "path": path, "split": split, "captions": ["a square moves"], "qa": [],
            "duration": 1.5, "fps": 8.0, "width": 64, "height": 64, "codec": "h264", "sha256": vid,
            "twin_id": None}


def make_dataset(root: Path, broken: dict[str, str] | None = None) -> Path:
    """Five good clips (a-e) plus `broken` {video_id: file name already placed in root/videos}."""
    (root / "videos").mkdir(parents=True, exist_ok=True)
    rows = []
    for seed, (vid, split) in enumerate(SPLITS.items()):
        make_clip(root / "videos" / f"{vid}.mp4", frames=10 + 2 * seed, seed=seed)
        rows.append(manifest_row(vid, split, f"videos/{vid}.mp4"))
    rows += [manifest_row(vid, "test", f"videos/{name}") for vid, name in (broken or {}).items()]
    write_manifest(pd.DataFrame(rows), root, root, "test")
    return root


def params(**overrides) -> Params:
    section = {"num_frames": T, "size": SIZE, "shard_size": 2, "workers": 2, "timeout_s": 30,
               "max_failed_share": 0.5, **overrides}
    return Params.model_validate({"extract_frames": section})


def passed_validation(folder: Path, quarantined: list[dict] | None = None) -> Path:
    """A validate report that lets extract_frames run (as `stgt validate` writes it)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "result.json").write_text(json.dumps({"success": True, "quarantined": quarantined or []}))
    return folder


def run(cfg: Params, dataset: Path, out: Path) -> dict:
    validation = passed_validation(dataset / "validate-report")  # inside the dataset: nothing beside the output
    return extract_frames.run(cfg, {"dataset": dataset, "validation": validation}, {"frames": out})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("prepared")
    (root / "videos").mkdir()
    if CORRUPT.is_file():  # decord's damaged H.264 file: the header is fine, the payload is not
        shutil.copyfile(CORRUPT, root / "videos" / "corrupt.mp4")
    else:  # without the shared media, bytes that are no container at all
        (root / "videos" / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    return make_dataset(root, {"z": "corrupt.mp4"})


@pytest.fixture(scope="module")
def first_run(dataset, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("run1") / "frames"
    return run(params(), dataset, out), out


def test_writes_shards_index_and_quarantine(first_run, dataset):
    summary, out = first_run
    assert summary["videos"] == 6 == summary["extracted"] + summary["quarantined"]
    assert (summary["extracted"], summary["quarantined"]) == (5, 1)
    assert summary["by_decoder"] == {"decord": 5} and summary["shards"] == 3
    assert summary["by_split"]["test"] == {"videos": 2, "extracted": 1, "quarantined": 1}
    assert (summary["frames_per_clip"], summary["size"]) == (T, SIZE)

    shards = sorted((out / "shards").iterdir())
    assert [np.load(s, mmap_mode="r").shape for s in shards] == [(2, T, SIZE, SIZE, 3)] * 2 + [(1, T, SIZE, SIZE, 3)]
    index = pd.read_parquet(out / "index.parquet")
    assert index["video_id"].tolist() == list(SPLITS)  # manifest order, the corrupt clip absent
    assert index[["shard", "offset"]].values.tolist()[2] == ["shards/frames-00001.npy", 0]

    # the stored clip is exactly what the library reads for an eval split (uniform needs no generator)
    test_row = index.set_index("video_id").loc["e"]
    stored = np.load(out / test_row["shard"], mmap_mode="r")[test_row["offset"]]
    direct = read_clip(dataset / "videos" / "e.mp4", T, SIZE, "uniform")
    assert np.array_equal(stored, direct.frames) and test_row["frame_indices"].tolist() == direct.indices

    quarantine = json.loads((out / "quarantine.json").read_text())
    assert [(q["video_id"], q["path"]) for q in quarantine] == [("z", "videos/corrupt.mp4")]
    assert "InvalidDataError" in quarantine[0]["reason"]
    assert "extract_frames:" in (out / "config.resolved.yaml").read_text()
    assert "PASSED" in (out / "frames_suite.html").read_text()
    assert [p.name for p in out.parent.iterdir()] == ["frames"]  # no temporary folder left beside it


def test_rerun_gives_identical_bytes(first_run, dataset, tmp_path):
    _, first = first_run
    second = tmp_path / "frames"
    run(params(), dataset, second)
    for name in ["index.parquet", "quarantine.json"] + [f"shards/{p.name}" for p in (first / "shards").iterdir()]:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_too_many_failures_fail_and_leave_no_output(dataset, tmp_path):
    out = tmp_path / "frames"
    with pytest.raises(StageFailed, match=r"1 of 6 videos quarantined \(16.7%\), above max_failed_share 10.0%") as err:
        run(params(max_failed_share=0.1), dataset, out)
    assert "- z (videos/corrupt.mp4): " in str(err.value) and "InvalidDataError" in str(err.value)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["frames.failed"]  # the evidence, no half-written output
    assert json.loads((tmp_path / "frames.failed" / "quarantine.json").read_text())[0]["video_id"] == "z"


def test_failed_suite_keeps_the_previous_output(dataset, tmp_path, monkeypatch):
    out = tmp_path / "frames"
    out.mkdir()
    (out / "previous.txt").write_text("old")

    def failing_suite(df, suite, expectation_parameters, html_path, title):
        assert suite == extract_frames.SUITE and expectation_parameters == {"num_frames": T, "size": SIZE}
        assert list(df.columns) == extract_frames.STATS_COLUMNS and len(df) == 5
        Path(html_path).write_text("FAILED")
        return SuiteResult("frames", False, ["is_blank: 5 of 5 rows fail"], {})

    monkeypatch.setattr(gx, "validate_dataframe", failing_suite)  # the stage gates through quality.gx.gate
    with pytest.raises(StageFailed, match="frames suite failed"):
        run(params(), dataset, out)
    assert [p.name for p in out.iterdir()] == ["previous.txt"]
    assert (tmp_path / "frames.failed" / "frames_suite.html").read_text() == "FAILED"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs a named pipe")
def test_hung_video_times_out_and_is_quarantined(tmp_path):
    root = tmp_path / "prepared"
    (root / "videos").mkdir(parents=True)
    os.mkfifo(root / "videos" / "hangs.mp4")  # opening a pipe nobody writes blocks forever inside FFmpeg
    make_dataset(root, {"h": "hangs.mp4"})
    summary = run(params(timeout_s=2), root, tmp_path / "frames")
    assert (summary["extracted"], summary["quarantined"]) == (5, 1)
    reason = json.loads((tmp_path / "frames" / "quarantine.json").read_text())[0]["reason"]
    assert reason == "timeout after 2s"


def test_validation_report_that_failed_stops_the_stage(tmp_path):
    (tmp_path / "result.json").write_text(json.dumps({"success": False}))
    with pytest.raises(StageFailed, match="failed validation"):
        extract_frames.check_validation(tmp_path)


@pytest.mark.parametrize("content", [None, "", "{not json", "[]", '{"summary": []}'])
def test_a_validation_folder_without_a_passing_result_stops_the_stage(dataset, tmp_path, content):
    """#17 item 11: `extract_frames --validation EMPTY_DIR` passed the gate (only a result saying "failed" stopped
    it). A folder without a readable result.json that says success must stop it, before anything is written."""
    empty = tmp_path / "validate"
    empty.mkdir()
    if content is not None:
        (empty / "result.json").write_text(content)
    with pytest.raises(StageFailed, match=r"extract_frames: (no validation result in|.*result\.json (is not a|says))"):
        extract_frames.run(params(), {"dataset": dataset, "validation": empty}, {"frames": tmp_path / "frames"})
    assert not (tmp_path / "frames").exists()


def test_videos_validate_quarantined_are_not_decoded_and_keep_its_reason(dataset, tmp_path, monkeypatch):
    """validate.max_failed_share set a video aside: extract_frames lists it in its quarantine with validate's reason
    and never opens it; every video is still extracted or quarantined."""
    reason = "expect_column_values_to_be_between(duration): duration=0.0"
    validation = passed_validation(tmp_path / "validate", [{"video_id": "e", "path": "videos/e.mp4", "reason": reason}])
    opened = []
    real = extract_frames.read_clips_fetched
    monkeypatch.setattr(extract_frames, "read_clips_fetched",
                        lambda requests, *a: (opened.extend(r.key for r in requests), real(requests, *a))[1])
    summary = extract_frames.run(params(), {"dataset": dataset, "validation": validation}, {"frames": tmp_path / "f"})
    assert "e" not in opened
    quarantine = {q["video_id"]: q["reason"] for q in json.loads((tmp_path / "f" / "quarantine.json").read_text())}
    assert quarantine["e"] == f"validate: {reason}"
    assert summary["videos"] == summary["extracted"] + summary["quarantined"]
    assert "e" not in set(pd.read_parquet(tmp_path / "f" / "index.parquet")["video_id"])


def test_a_one_frame_clip_is_quarantined_as_one_frame_not_blank(tmp_path):
    """#17 item 10: a single-frame clip was quarantined as "blank clip: every sampled frame identical"."""
    root = tmp_path / "prepared"
    (root / "videos").mkdir(parents=True)
    rng = np.random.default_rng(0)
    with av.open(str(root / "videos" / "still.mp4"), "w") as out:  # one picture with plenty of detail
        stream = out.add_stream("libx264", rate=8)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        picture = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
        out.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        out.mux(stream.encode())
    make_dataset(root, {"s": "still.mp4"})
    summary = run(params(), root, tmp_path / "frames")
    assert (summary["videos"], summary["extracted"], summary["quarantined"]) == (6, 5, 1)
    [entry] = json.loads((tmp_path / "frames" / "quarantine.json").read_text())
    assert entry["video_id"] == "s" and entry["reason"].startswith("one frame"), entry


@pytest.mark.parametrize("frames, blank", [
    (np.full((4, 8, 8, 3), 128, np.uint8), True),  # one flat colour
    (np.repeat(np.arange(192, dtype=np.uint8).reshape(1, 8, 8, 3), 4, axis=0), True),  # a still picture
    (np.arange(4 * 192, dtype=np.uint8).reshape(4, 8, 8, 3), False),
])
def test_clip_stats_flag_blank_clips(frames, blank):
    stats = extract_frames.clip_stats("v", frames)
    assert stats["is_blank"] is blank
    assert (stats["num_frames"], stats["height"], stats["width"], stats["channels"]) == (4, 8, 8, 3)


def test_blank_clip_is_quarantined_not_fatal(tmp_path):
    root = tmp_path / "prepared"
    (root / "videos").mkdir(parents=True)
    with av.open(str(root / "videos" / "white.mp4"), "w") as out:  # decodes fine, shows nothing
        stream = out.add_stream("libx264", rate=8)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for _ in range(8):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.full((64, 64, 3), 255, np.uint8), format="rgb24")))
        out.mux(stream.encode())
    make_dataset(root, {"w": "white.mp4"})
    summary = run(params(), root, tmp_path / "frames")
    assert (summary["videos"], summary["extracted"], summary["quarantined"]) == (6, 5, 1)
    [entry] = json.loads((tmp_path / "frames" / "quarantine.json").read_text())
    assert entry["video_id"] == "w" and entry["reason"].startswith("blank clip")
    assert json.loads((tmp_path / "frames" / "frames_suite.json").read_text())["success"]


# ---------------------------------------------------------------------------------------------------------------
# the temporal-order probe: each test clip and its time-reversed twin (split `probe`) on mirrored frame indices

PROBE_CORPUS = {"num_videos": 12, "frames_per_video": 8, "width": 48, "height": 48, "test_share": 0.5,
                "val_share": 0.17}  # 4 train (+ 4 train twins), 2 val, 6 test (+ 6 probe twins)


def synthetic_frames(root: Path) -> tuple[Path, Path]:
    """prepare (synthetic) then extract_frames, both as the pipeline runs them -> (dataset, frames)."""
    cfg = Params.model_validate({"prepare": PROBE_CORPUS, "extract_frames": params().extract_frames.model_dump()})
    prepare.run(cfg, {}, {"dataset": root / "prepared"})
    run(cfg, root / "prepared", root / "frames")
    return root / "prepared", root / "frames"


def stored(frames_dir: Path, index: pd.DataFrame, video_id: str) -> np.ndarray:
    row = index.loc[video_id]
    return np.load(frames_dir / row["shard"], mmap_mode="r")[row["offset"]]


@pytest.fixture(scope="module")
def probe_corpus(tmp_path_factory) -> tuple[pd.DataFrame, pd.DataFrame, Path, Path]:
    dataset, frames = synthetic_frames(tmp_path_factory.mktemp("probe-corpus"))
    manifest = read_manifest(dataset)
    return manifest.table.set_index("video_id"), pd.read_parquet(frames / "index.parquet").set_index("video_id"), \
        dataset, frames


def test_probe_twins_are_sampled_on_the_mirror_of_their_clip_and_every_other_clip_as_before(probe_corpus):
    table, index, dataset, frames = probe_corpus
    cfg = params().extract_frames
    assert set(index.index) == set(table.index)  # every clip extracted
    assert sorted(table["split"].unique()) == ["probe", "test", "train", "val"]
    for video_id, row in table.iterrows():
        entry = index.loc[video_id]
        if row["split"] == "probe":
            clip = index.loc[row["twin_id"]]
            assert (entry["sampling"], entry["mirror_of"]) == ("mirrored_uniform", row["twin_id"])
            # Twin frame j is clip frame N - 1 - j: the twin takes N - 1 - i for each clip index i, in reverse.
            n = clip["frame_count"]
            assert entry["frame_count"] == n
            mirror = [n - 1 - i for i in reversed(clip["frame_indices"].tolist())]
            assert entry["frame_indices"].tolist() == mirror
            # and the stored pictures are the twin file's at those indices (every frame decoded, then picked)
            every_frame = read_clip(dataset / row["path"], n, SIZE, "uniform").frames
            assert np.array_equal(stored(frames, index, video_id), every_frame[mirror])
        else:
            # Byte-identical to the sampling before mirrored probes existed: the split's mode, the clip's own seed.
            mode = cfg.train_sampling if row["split"] == "train" else cfg.eval_sampling
            rng = np.random.default_rng(list(extract_frames.video_seed(cfg.seed, video_id)))
            expected = read_clip(dataset / row["path"], T, SIZE, mode, rng)
            assert entry["sampling"] == mode and pd.isna(entry["mirror_of"])
            assert entry["frame_indices"].tolist() == expected.indices
            assert np.array_equal(stored(frames, index, video_id), expected.frames)


def test_probe_twin_shows_the_clips_pictures_up_to_codec_noise(probe_corpus):
    # The default corpus is lossy H.264 (crf 18), and the twin is encoded on its own: its pictures of the clip's
    # moments differ from the clip's by codec noise only. Sampled with its own `uniform`, the twin shows other
    # moments (clip frames 7, 5, 3, 1 against 0, 2, 4, 6), which differ by content.
    table, index, dataset, frames = probe_corpus
    mirrored_gap, own_mode_gap = [], []
    for clip_id, twin_id in table.loc[table["split"] == "test", "twin_id"].items():
        clip = stored(frames, index, clip_id).astype(int)
        twin_own_mode = read_clip(dataset / table.loc[twin_id, "path"], T, SIZE, "uniform").frames
        mirrored_gap.append(np.abs(clip - stored(frames, index, twin_id)[::-1]).mean())
        own_mode_gap.append(np.abs(clip - twin_own_mode[::-1].astype(int)).mean())
    assert np.mean(mirrored_gap) < np.mean(own_mode_gap) / 2


def order_blind_pair_scores(views: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """[P, 2, 2] pair scores of a frame-order-blind scorer that has memorised the test set: a video is its mean
    colour over frames (the same for any order of the frames), a caption is the mean colour of its own video's
    frames, the score is minus their distance. It passes a pair as soon as the two views differ at all, so it is
    the strongest such scorer: 0 for it means 0 for any scorer that ignores frame order. (Means of uint8 values
    are exact in float64, whatever the order they are summed in.)"""
    colours = np.array([[frames.mean(axis=(0, 1, 2)) for frames in pair] for pair in views])  # [P, 2 videos, 3]
    return -np.linalg.norm(colours[:, :, None] - colours[:, None, :], axis=-1)  # [pair, video, caption]


def test_a_frame_order_blind_scorer_gets_zero_on_the_probe(tmp_path):
    # Real synthetic clips, decoded by the stage. They are encoded losslessly (the twin is its clip's frames in
    # reverse, so its decoded pixels are too): with mirrored sampling the twin's frames are then exactly the clip's
    # in reverse, every order-blind score ties and a tie fails. The same scorer on the twin sampled with its own
    # mode (today's sampling before the mirror) sees other moments and passes most pairs.
    dataset, frames = synthetic_frames(tmp_path)
    table = read_manifest(dataset).table.set_index("video_id")
    index = pd.read_parquet(frames / "index.parquet").set_index("video_id")
    pairs = list(table.loc[table["split"] == "test", "twin_id"].items())
    mirrored = [(stored(frames, index, clip), stored(frames, index, twin)) for clip, twin in pairs]
    assert all(np.array_equal(clip, twin[::-1]) for clip, twin in mirrored)
    assert temporal_order_probe(order_blind_pair_scores(mirrored))["pair_accuracy"] == 0.0
    own_mode = [(clip, read_clip(dataset / table.loc[twin_id, "path"], T, SIZE, "uniform").frames)
                for (clip, _), (_, twin_id) in zip(mirrored, pairs)]
    assert temporal_order_probe(order_blind_pair_scores(own_mode))["pair_accuracy"] > 50


def test_clip_requests_mirror_only_probe_twins():
    # A train twin is a hard negative, not a probe: it keeps train sampling and its own seed. A probe row without
    # a twin has nothing to mirror.
    rows = [manifest_row("c", "test", "c.mp4") | {"twin_id": "c_rev"},
            manifest_row("c_rev", "probe", "c_rev.mp4") | {"twin_id": "c"},
            manifest_row("t", "train", "t.mp4") | {"twin_id": "t_rev"},
            manifest_row("t_rev", "train", "t_rev.mp4") | {"twin_id": "t"},
            manifest_row("o", "probe", "o.mp4")]
    table = pd.DataFrame(rows)
    assert extract_frames.mirror_sources(table) == {"c_rev": "c"}
    cfg = params(train_sampling="random", eval_sampling="middle").extract_frames
    requests = {r.key: r for r in extract_frames.clip_requests(ManifestStub(table), cfg)}
    assert (requests["c_rev"].mode, requests["c_rev"].seed) == ("mirrored_middle", requests["c"].seed)
    assert (requests["c"].mode, requests["o"].mode) == ("middle", "middle")
    assert (requests["t_rev"].mode, requests["t_rev"].seed) == ("random", extract_frames.video_seed(0, "t_rev"))
    assert requests["c_rev"].seed != extract_frames.video_seed(0, "c_rev")
    # Kubeflow shards the manifest in contiguous blocks and may cut between a clip and its twin: the twin's
    # request must not depend on its clip's row being in the same block.
    alone = {r.key: r for r in extract_frames.clip_requests(ManifestStub(table.iloc[1:2]), cfg)}
    assert alone["c_rev"] == requests["c_rev"]


class ManifestStub:
    """What clip_requests reads of a Manifest: its table and where a row's video lies."""

    def __init__(self, table: pd.DataFrame):
        self.table = table

    def video_path(self, row: pd.Series) -> Path:
        return Path("/videos") / row["path"]
