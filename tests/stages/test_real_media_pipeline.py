"""#17 'Done when': a folder of every real clip in ../shared/real-media/videos through prepare (folder source),
validate and extract_frames, as the pipeline runs them. Every file is either decoded with the right frame count or
quarantined with a reason, and in = out + quarantined at each step."""
from __future__ import annotations

import json
from pathlib import Path

import av
import pandas as pd
import pytest

from stgt_pipeline.io.manifest import read_manifest
from stgt_pipeline.runner import run_stage

T, SIZE = 4, 32
# Frames of the stream every reader uses, counted by decoding each file to its end with PyAV (FFmpeg 7) once; the
# test recounts any file not listed here (a clip added to the shared folder later).
FRAMES = {
    "captioned/decord_flipping_a_pancake.mkv": 310,
    "captioned/internvideo2_example1.mp4": 40,
    "captioned/languagebind_0.mp4": 245,
    "captioned/languagebind_1.mp4": 269,
    "captioned/mmaction2_demo_arm_wrestling.mp4": 280,
    "codecs/imageio_test_h264_in_matroska.webm": 94,
    "codecs/mdn_flower_vp8.webm": 150,
    "codecs/mmaction2_test_xvid.avi": 164,
    "codecs/moviepy_big_buck_bunny_432_433_vp8.webm": 24,
    "codecs/moviepy_no_duration_vp9.webm": 74,
    "codecs/moviepy_transparent_vp9_alpha.webm": 150,
    "codecs/torchcodec_av1_video.mkv": 125,
    "codecs/torchcodec_h264_10bits.mp4": 30,
    "codecs/torchcodec_h265_video.mp4": 10,
    "edge_cases/decord_video_rot0.mov": 3,
    "edge_cases/decord_video_rot90.mov": 3,
    "edge_cases/decord_video_rot180.mov": 3,
    "edge_cases/decord_video_rot270.mov": 3,
    "edge_cases/moviepy_fire2_rot180.mp4": 25,
    "edge_cases/torchcodec_nasa_13013_two_video_streams.mp4": 390,
    "msrvtt_test/video7010.mp4": 270,
    "msrvtt_test/video7011.mp4": 390,
    "msrvtt_test/video7012.mp4": 336,
    "msrvtt_test/video7013.mp4": 420,
    "msrvtt_test/video7014.mp4": 300,
    "msrvtt_test/video7015.mp4": 330,
    "msrvtt_test/video7016.mp4": 384,
    "msrvtt_test/video7017.mp4": 300,
    "msrvtt_test/video7018.mp4": 600,
    "msrvtt_test/video7019.mp4": 504,
}
# Files that cannot give T good frames, and the start of the reason each must be quarantined with.
QUARANTINED = {
    "edge_cases/decord_corrupted.mp4": "",  # damaged payload: decode error (decord and PyAV both named)
    "edge_cases/decord_unordered_pts.mov": "blank clip",  # four all-white frames
}


def decoded_frames(path: Path) -> int:
    """Frames of the largest video stream, decoded to the end (independent of the stage's packet counting)."""
    from stgt_model.video.probe import select_video_stream

    with av.open(str(path)) as container:
        stream = select_video_stream(container)
        stream.thread_type = "AUTO"
        return sum(1 for _ in container.decode(stream))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> dict:
    from tests.conftest import REAL_MEDIA

    videos = REAL_MEDIA / "videos"
    if not videos.is_dir():
        pytest.skip(f"real media not found at {videos}")
    tmp = tmp_path_factory.mktemp("real-media")
    files = sorted(p.relative_to(videos).as_posix() for p in videos.rglob("*") if p.is_file())
    # Every other clip in test, the rest in train (validate requires both splits); one caption each.
    captions = tmp / "captions.jsonl"
    captions.write_text("".join(json.dumps({"video": f, "caption": f"the real clip {Path(f).stem}",
                                            "split": "test" if i % 2 else "train"}) + "\n"
                                for i, f in enumerate(files)))
    params = tmp / "params.yaml"
    params.write_text(f"""
prepare:
  source: folder
  folder: {{root: {videos}, captions: {captions}}}
validate:
  max_failed_share: 0.25
extract_frames: {{num_frames: {T}, size: {SIZE}, workers: 2, timeout_s: 120, max_failed_share: 0.25}}
""")
    out = {name: tmp / name for name in ("prepared", "validate", "frames")}
    summaries = {
        "prepare": run_stage("prepare", params_path=params, outputs={"dataset": out["prepared"]},
                             metrics_path=tmp / "prepare.json"),
        "validate": run_stage("validate", params_path=params, inputs={"dataset": out["prepared"]},
                              outputs={"report": out["validate"]}, metrics_path=tmp / "validate.json"),
        "extract_frames": run_stage("extract_frames", params_path=params,
                                    inputs={"dataset": out["prepared"], "validation": out["validate"]},
                                    outputs={"frames": out["frames"]}, metrics_path=tmp / "frames.json"),
    }
    return {"videos": videos, "files": files, "out": out, "summaries": summaries}


def test_every_real_clip_is_extracted_with_its_frame_count_or_quarantined_with_a_reason(pipeline):
    files, out, summaries = pipeline["files"], pipeline["out"], pipeline["summaries"]
    manifest = read_manifest(out["prepared"]).table.set_index("path")
    assert sorted(manifest.index) == files  # prepare: in = out, nothing dropped or added

    validated = json.loads((out["validate"] / "result.json").read_text())
    assert validated["success"] and summaries["validate"]["videos"] == len(files)
    set_aside = {q["path"]: q["reason"] for q in validated["quarantined"]}
    assert summaries["validate"]["quarantined"] == len(set_aside)

    index = pd.read_parquet(out["frames"] / "index.parquet").set_index("video_id")
    quarantine = json.loads((out["frames"] / "quarantine.json").read_text())
    reasons = {q["path"]: q["reason"] for q in quarantine}
    summary = summaries["extract_frames"]
    assert summary["videos"] == len(files) == summary["extracted"] + summary["quarantined"]
    assert (summary["extracted"], summary["quarantined"]) == (len(index), len(quarantine))
    for path, reason in set_aside.items():  # what validate set aside is not decoded and keeps validate's reason
        assert reasons[path] == f"validate: {reason}"

    for name in files:
        video_id = manifest.loc[name, "video_id"]
        if name in reasons:
            assert video_id not in index.index
            assert reasons[name].strip() and reasons[name].startswith(QUARANTINED.get(name, "")), (name, reasons[name])
            assert name in QUARANTINED, f"{name} quarantined: {reasons[name]}"
            continue
        assert name not in QUARANTINED, f"{name} should be quarantined"
        row = index.loc[video_id]
        expected = FRAMES.get(name) or decoded_frames(pipeline["videos"] / name)
        assert row["frame_count"] == expected, name
        assert len(row["frame_indices"]) == T and max(row["frame_indices"]) < expected


def test_containers_without_a_duration_pass_validate_with_a_measured_one(pipeline):
    """#17 item 10: Matroska H.264 and VP9 without a Duration element used to fail duration_s.min."""
    manifest = read_manifest(pipeline["out"]["prepared"]).table.set_index("path")
    for name in ("codecs/moviepy_no_duration_vp9.webm", "codecs/imageio_test_h264_in_matroska.webm"):
        assert manifest.loc[name, "duration_from"] == "packets" and manifest.loc[name, "duration"] > 0.5, name
    assert set(manifest["duration_from"]) <= {"stream", "container", "packets"}
    validated = json.loads((pipeline["out"]["validate"] / "result.json").read_text())
    assert not validated["quarantined"], validated["quarantined"]
