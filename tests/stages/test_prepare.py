"""The prepare stage through the runner: manifest + resolved config written atomically, summary as metrics."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from stgt_pipeline.errors import StgtError
from stgt_pipeline.io.manifest import read_manifest
from stgt_pipeline.runner import run_stage

SMALL = ["prepare.num_videos=9", "prepare.frames_per_video=8", "prepare.width=64", "prepare.height=64"]


@pytest.fixture(autouse=True)
def no_tracking(monkeypatch):
    # MLflow logging is the runner's business (tested with it); here it would only slow the stage down.
    monkeypatch.setenv("STGT_TRACKING", "off")


@pytest.fixture
def params(tmp_path) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"prepare": {"seed": 3}}), encoding="utf-8")
    return path


def test_synthetic_run_writes_manifest_resolved_config_and_metrics(params, tmp_path):
    out = tmp_path / "data" / "prepared"
    summary = run_stage("prepare", params_path=params, overrides=SMALL, outputs={"dataset": out}, metrics_path=tmp_path / "m.json")

    manifest = read_manifest(out)
    assert manifest.source == "synthetic" and manifest.data_root == out
    table = manifest.table
    assert all((out / p).is_file() for p in table["path"]) and table["path"].str.startswith("videos/").all()
    assert table["video_id"].is_unique and table["sha256"].notna().all()
    resolved = yaml.safe_load((out / "config.resolved.yaml").read_text(encoding="utf-8"))
    assert list(resolved) == ["prepare"] and resolved["prepare"]["seed"] == 3 and resolved["prepare"]["num_videos"] == 9

    assert summary["source"] == "synthetic" and summary["videos"] == len(table) == 17
    assert summary["splits"] == {"train": 12, "val": 1, "test": 2, "probe": 2}
    assert summary["twins"] == 8
    assert summary["captions"] == table["captions"].map(len).sum() and summary["qa_pairs"] == table["qa"].map(len).sum()
    assert json.loads((tmp_path / "m.json").read_text())["videos"] == 17
    assert [p.name for p in out.parent.iterdir()] == ["prepared"]  # no temporary folder left behind


def test_a_source_report_joins_the_summary(params, tmp_path, monkeypatch):
    from stgt_pipeline import sources

    def build(cfg, dataset_dir):
        plan = sources.SourcePlan(data_root=dataset_dir, total=1, clips=iter(()))

        def clips():
            yield [sources.manifest_row("v", "v.mp4", "train", ["a caption"], [])]
            plan.report["missing_videos"] = 0  # known only at the end, as benchmark sources do

        plan.clips = clips()
        return plan

    monkeypatch.setattr(sources, "get", lambda name: build)
    summary = run_stage("prepare", params_path=params, outputs={"dataset": tmp_path / "d"}, metrics_path=tmp_path / "m.json")
    assert summary["missing_videos"] == 0 and summary["videos"] == 1


def test_a_failure_part_way_leaves_no_output(tmp_path):
    root = tmp_path / "videos"
    root.mkdir()
    (root / "captions.jsonl").write_text('{"video": "a.mp4", "caption": "ok"}\n{"video": "b.mp4"}\n', encoding="utf-8")
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump({"prepare": {"source": "folder", "folder": {"root": str(root), "captions": "captions.jsonl"}}}),
        encoding="utf-8",
    )
    out = tmp_path / "data" / "prepared"
    with pytest.raises(StgtError, match=r"captions\.jsonl:2: field 'caption'"):
        run_stage("prepare", params_path=params, outputs={"dataset": out}, metrics_path=tmp_path / "m.json")
    assert not out.exists() and list(out.parent.iterdir()) == []
    assert not (tmp_path / "m.json").exists()


def test_a_crash_while_writing_videos_leaves_no_output(params, tmp_path, monkeypatch):
    from stgt_pipeline.sources import synthetic

    written = []
    real_write = synthetic.write_mp4

    def flaky_write(path, *args):
        if len(written) == 3:
            raise OSError("disk full")
        written.append(path)
        real_write(path, *args)

    monkeypatch.setattr(synthetic, "write_mp4", flaky_write)
    out = tmp_path / "data" / "prepared"
    with pytest.raises(OSError, match="disk full"):
        run_stage("prepare", params_path=params, overrides=SMALL, outputs={"dataset": out}, metrics_path=tmp_path / "m.json")
    assert written and not any(p.exists() for p in written)
    assert list(out.parent.iterdir()) == []


def test_a_failed_rerun_keeps_the_previous_output(params, tmp_path):
    out = tmp_path / "prepared"
    run_stage("prepare", params_path=params, overrides=SMALL, outputs={"dataset": out}, metrics_path=tmp_path / "m.json")
    before = (out / "manifest.parquet").read_bytes()
    with pytest.raises(StgtError, match="even"):
        run_stage("prepare", params_path=params, overrides=[*SMALL, "prepare.width=65"], outputs={"dataset": out},
                  metrics_path=tmp_path / "m.json")
    assert (out / "manifest.parquet").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "params.yaml", "prepared"]
