"""Stage `extract_frames` on a tiny manifest: moving-square clips made with PyAV plus unreadable ones (a copy of
the shared corrupt mp4, a named pipe that never delivers)."""
import json
import os
import shutil
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest

from stgt_model.video.decode import read_clip
from stgt_pipeline.components.extract_frames import stage as extract_frames
from stgt_pipeline.errors import StageFailed
from stgt_pipeline.io.manifest import write_manifest
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


def run(cfg: Params, dataset: Path, out: Path) -> dict:
    return extract_frames.run(cfg, {"dataset": dataset, "validation": dataset / "no-report"}, {"frames": out})


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
