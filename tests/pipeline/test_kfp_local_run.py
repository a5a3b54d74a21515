"""The whole pipeline through kfp.local (SubprocessRunner, this environment) on a tiny configuration."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from components import registry
from components.manifest import read_manifest
from tests.conftest import REPO_ROOT

TINY = ["prepare.num_videos=6", "prepare.frames_per_video=8", "prepare.width=32", "prepare.height=32",
        "extract_frames.num_frames=4", "extract_frames.size=32", "extract_frames.workers=1"]


def outputs_of(task_dir: Path) -> dict:
    return json.loads((task_dir / "executor_output.json").read_text())["artifacts"]


@pytest.mark.slow  # about 90 s on 2 cores: every task is a fresh Python process importing its stage
def test_run_local_runs_every_stage_and_publishes_typed_artifacts(tmp_path):
    env = {**os.environ, "STGT_TRACKING": "off", "TMPDIR": str(tmp_path)}  # tracking has its own tests
    args = [a for kv in TINY for a in ("--set", kv)]
    proc = subprocess.run(
        [sys.executable, "-m", "components.cli", "pipeline", "run-local", "--params", str(REPO_ROOT / "params.yaml"),
         "--output-dir", str(tmp_path / "out"), "--shards", "2", *args],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = next((tmp_path / "out").glob("stgt-pipeline-*"))
    tasks = {p.name for p in run.iterdir()}
    assert {s.name.replace("_", "-") for s in registry.STAGES} | {"finish-run"} <= tasks

    manifest = read_manifest(run / "prepare" / "dataset")  # the Dataset artifact is the manifest dataset
    assert len(manifest.table) > 0 and (run / "validate" / "report_html").read_text().lstrip().startswith("<")
    frames = outputs_of(run / "extract-frames")
    summary = frames["summary"]["artifacts"][0]["metadata"]
    assert summary["shards"] == 2 and summary["extracted"] + summary["quarantined"] == len(manifest.table)
    pointer = json.loads((run / "extract-frames" / "frames").read_text())
    assert "index.parquet" in {f["path"] for f in pointer["files"]}
    assert not (tmp_path / "out" / ".tmp").exists()  # kfp.local's per-task temp folders are cleaned up
