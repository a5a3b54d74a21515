"""prepare -> validate -> extract_frames on a small folder laid out like MSR-VTT (real clips renamed to 1k-A test
ids), through the msrvtt_1ka preset; and prepare on the real MSVD-QA sample."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stgt_pipeline.io.manifest import read_manifest
from stgt_pipeline.runner import run_stage

TRAIN_IDS = ("video0", "video1")  # in MSRVTT_train.9k.csv
CLIPS = {  # MSR-VTT id -> real clip (1k-A test ids from MSRVTT_JSFUSION_test.csv)
    "video0": "msrvtt_test/video7010.mp4",
    "video1": "msrvtt_test/video7013.mp4",  # no audio, 30 fps
    "video9770": "msrvtt_test/video7011.mp4",
    "video9771": "captioned/languagebind_0.mp4",  # fragmented MP4, portrait
    "video9772": "msrvtt_test/video7016.mp4",  # 23.976 fps
}


@pytest.fixture
def msrvtt_folder(tmp_path: Path, real_media: Path) -> tuple[Path, Path]:
    ann = tmp_path / "annotations"
    ann.mkdir()
    shutil.copy(real_media / "annotations/msrvtt/MSRVTT_JSFUSION_test.csv", ann)
    (ann / "MSRVTT_train.9k.csv").write_text("video_id\n" + "\n".join(TRAIN_IDS) + "\n")
    sentences = [{"video_id": v, "caption": f"training caption {k} of {v}", "sen_id": 3 * i + k}
                 for i, v in enumerate(TRAIN_IDS) for k in range(3)]
    (ann / "MSRVTT_data.json").write_text(json.dumps({"videos": [{"video_id": v} for v in TRAIN_IDS], "sentences": sentences}))
    videos = tmp_path / "MSRVTT/videos/all"
    videos.mkdir(parents=True)
    for video_id, clip in CLIPS.items():
        shutil.copy(real_media / "videos" / clip, videos / f"{video_id}.mp4")
    return ann, videos



def jsfusion_sentences(ann: Path) -> dict[str, str]:
    """video id -> its caption in the MSR-VTT 1k-A test CSV."""
    with open(ann / "MSRVTT_JSFUSION_test.csv", newline="") as fh:
        return {r["video_id"]: r["sentence"] for r in csv.DictReader(fh)}


def validate_then_extract(params: Path, overrides: list[str], dataset: Path, report: Path, frames: Path) -> dict:
    """validate (which must pass), then extract_frames; returns extract_frames' summary."""
    validated = run_stage("validate", params_path=params, overrides=overrides, inputs={"dataset": dataset},
                          outputs={"report": report}, metrics_path=report.parent / "validate.json")
    assert validated["success"]
    return run_stage("extract_frames", params_path=params, overrides=overrides,
                     inputs={"dataset": dataset, "validation": report}, outputs={"frames": frames},
                     metrics_path=frames.parent / "frames.json")


def test_msrvtt_1ka_prepare_validate_extract_frames(tmp_path, msrvtt_folder):
    ann, videos = msrvtt_folder
    overrides = ["prepare.preset=msrvtt_1ka", f"prepare.benchmark.root={videos}", f"prepare.benchmark.annotations_dir={ann}",
                 "prepare.benchmark.max_missing_share=1.0",  # the real 1k-A csv names 1,000 videos; 3 are here
                 "prepare.benchmark.expected_videos={test: 1000}",  # the 9k list here is a 2-id stand-in
                 "extract_frames.workers=1"]
    params = tmp_path / "none.yaml"
    dataset, report, frames = tmp_path / "data/prepared", tmp_path / "reports/validate", tmp_path / "data/frames"

    prepared = run_stage("prepare", params_path=params, overrides=overrides, outputs={"dataset": dataset},
                         metrics_path=tmp_path / "prepare.json")
    assert prepared["splits"] == {"test": 3, "train": 2}

    manifest = read_manifest(dataset).table.set_index("video_id")
    sentence = jsfusion_sentences(ann)
    for video_id in ("video9770", "video9771", "video9772"):
        assert manifest.loc[video_id, "captions"].tolist() == [sentence[video_id]]
        assert manifest.loc[video_id, "split"] == "test" and manifest.loc[video_id, "path"] == f"{video_id}.mp4"
    assert manifest.loc["video0", "captions"].tolist() == [f"training caption {k} of video0" for k in range(3)]
    assert manifest["duration"].notna().all()

    card = (dataset / "data_card.md").read_text()
    assert "| test | 1,000 | 1,000 | 3 | 997 |" in card and "| train | 2 | - | 2 | 0 |" in card
    assert "Suite `benchmark_captions` passed" in card
    assert len(pd.read_csv(dataset / "missing_videos.csv")) == 997

    extracted = validate_then_extract(params, overrides, dataset, report, frames)
    index = pd.read_parquet(frames / "index.parquet")
    assert sorted(index.video_id) == sorted(CLIPS)
    assert json.loads((frames / "quarantine.json").read_text()) == []
    shard = np.load(sorted((frames / "shards").glob("*.npy"))[0], mmap_mode="r")
    assert shard.shape[1:] == (8, 224, 224, 3)  # the preset's 8 frames at 224 px
    assert extracted["stage"] == "extract_frames"


def test_msvd_qa_sample_prepares_with_vocabulary_and_coverage(tmp_path, real_media):
    sample = real_media / "annotations/msvd_qa/violet_txt_msvd-qa.json"
    data = json.loads(sample.read_text())
    videos = tmp_path / "YouTubeClips"
    videos.mkdir()
    chosen = {split: data[split][0]["video"] for split in ("train", "val", "test")}
    for split, clip in zip(chosen, ("video7012.mp4", "video7015.mp4", "video7018.mp4")):
        shutil.copy(real_media / "videos/msrvtt_test" / clip, videos / f"{chosen[split]}.mp4")
    splits = json.dumps({s: {"annotations": [str(sample)]} for s in ("train", "val", "test")})
    dataset = tmp_path / "data/prepared"
    run_stage("prepare", params_path=tmp_path / "none.yaml",
              overrides=["prepare.preset=msvd_qa", f"prepare.benchmark.root={videos}", f"prepare.benchmark.splits={splits}",
                         "prepare.benchmark.video_id_map=null", "prepare.benchmark.expected_videos={}",
                         "prepare.benchmark.max_missing_share=1.0"],
              outputs={"dataset": dataset}, metrics_path=tmp_path / "prepare.json")

    manifest = read_manifest(dataset).table
    assert sorted(manifest.video_id) == sorted(chosen.values())
    questions = pd.read_parquet(dataset / "qa.parquet")
    assert len(questions) == sum(len(data[s]) for s in ("train", "val", "test"))  # every question, video or not
    vocab = json.loads((dataset / "answer_vocab.json").read_text())
    assert vocab["source"] == "top 2423 training answers"
    test = questions[questions.split == "test"]
    coverage = test.in_vocab.mean()
    assert 0 < coverage < 1
    quality = json.loads((dataset / "quality.json").read_text())
    assert quality["success"]
    assert {r["split"]: r["answer_coverage"] for r in quality["splits"]}["test"] == round(coverage, 4)
    card = (dataset / "data_card.md").read_text()
    assert f"| test | {len(test)} | {int(test.in_vocab.sum())} | {coverage:.2%} |" in card


def test_msrvtt_1ka_from_an_s3_root(tmp_path, msrvtt_folder, s3):
    """The same MSR-VTT layout in a bucket (moto on loopback), one clip without its object: the manifest keeps the
    URL root, the missing id is reported and counted, the present clips are downloaded, decoded and deleted."""
    ann, videos = msrvtt_folder
    absent = "video9772"
    for video in sorted(videos.iterdir()):
        if video.stem != absent:
            s3.upload_file(str(video), "bench", f"MSRVTT/videos/all/{video.name}")
    root = "s3://bench/MSRVTT/videos"
    overrides = ["prepare.preset=msrvtt_1ka", f"prepare.benchmark.root={root}", f"prepare.benchmark.annotations_dir={ann}",
                 "prepare.benchmark.max_missing_share=1.0", "prepare.benchmark.expected_videos={test: 1000}",
                 "extract_frames.workers=1", "extract_frames.num_frames=4", "extract_frames.size=64"]
    params = tmp_path / "none.yaml"
    dataset, report, frames = tmp_path / "data/prepared", tmp_path / "reports/validate", tmp_path / "data/frames"

    prepared = run_stage("prepare", params_path=params, overrides=overrides, outputs={"dataset": dataset},
                         metrics_path=tmp_path / "prepare.json")
    assert prepared["splits"] == {"test": 2, "train": 2} and prepared["missing_videos"] == 998
    manifest = read_manifest(dataset)
    assert manifest.data_root == root
    table = manifest.table.set_index("video_id")
    sentence = jsfusion_sentences(ann)
    for video_id in ("video9770", "video9771"):
        assert table.loc[video_id, "captions"].tolist() == [sentence[video_id]]
        assert table.loc[video_id, "path"] == f"all/{video_id}.mp4"
    assert table.loc["video0", "captions"].tolist() == [f"training caption {k} of video0" for k in range(3)]
    assert table["duration"].notna().all() and table["sha256"].notna().all()  # probed through temporary copies
    missing = pd.read_csv(dataset / "missing_videos.csv")
    assert len(missing) == 998 and absent in set(missing.video_id)
    assert "| test | 1,000 | 1,000 | 2 | 998 |" in (dataset / "data_card.md").read_text()

    extracted = validate_then_extract(params, overrides, dataset, report, frames)
    assert extracted["extracted"] == 4 and extracted["quarantined"] == 0
    assert sorted(pd.read_parquet(frames / "index.parquet").video_id) == sorted(set(CLIPS) - {absent})
    shard = np.load(sorted((frames / "shards").glob("*.npy"))[0], mmap_mode="r")
    assert shard.shape == (4, 4, 64, 64, 3) and shard.std() > 1
