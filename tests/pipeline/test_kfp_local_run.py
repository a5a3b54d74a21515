"""The whole pipeline through kfp.local (SubprocessRunner, this environment) on a tiny configuration."""
from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from stgt_pipeline import stages
from stgt_pipeline.io.manifest import read_manifest
from tests.conftest import REPO_ROOT

TINY = ["prepare.num_videos=6", "prepare.frames_per_video=8", "prepare.width=32", "prepare.height=32",
        "extract_frames.num_frames=4", "extract_frames.size=32", "extract_frames.workers=1",
        *(f"{phase}.{key}={value}" for phase in (
            "pretrain.stage1", "pretrain.stage2", "finetune.retrieval", "finetune.qa")
            for key, value in (("steps", 1), ("batch_size", 2))), "evaluate.k_test=2", "model.preset=tiny"]


def tiny_params(tmp_path: Path) -> Path:
    """params.yaml with the model section reduced to the tiny preset (the shipped keys override a preset's)."""
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["model"] = {"preset": "tiny"}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def outputs_of(task_dir: Path) -> dict:
    return json.loads((task_dir / "executor_output.json").read_text())["artifacts"]


# The run is 15 tasks, each a fresh Python process: about 2 min on 2 idle cores, 10 min with the machine's 2 cores
# shared 4 ways (load average 8: the longest silence, one task, was 75 s). A total wall-clock bound cannot tell that
# from a hang: it failed a fresh-clone run at 600 s while every task was still finishing. A hang is a run that says
# nothing: fail after IDLE_S without a new line (4x that longest task), and keep a total bound only as a backstop.
IDLE_S = 300
TOTAL_S = 3600


def run_watched(cmd: list[str], **kwargs) -> tuple[int, str]:
    """(exit code, stdout+stderr) of `cmd`; kills it and fails the test naming the last lines when it prints nothing
    for IDLE_S seconds (stuck) or runs past TOTAL_S."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)  # end of output: the process has closed it

    threading.Thread(target=read, daemon=True).start()
    out: list[str] = []
    start = time.monotonic()
    try:
        while True:
            try:
                line = lines.get(timeout=IDLE_S)
            except queue.Empty:
                pytest.fail(f"run-local printed nothing for {IDLE_S}s (stuck?); last lines:\n{''.join(out[-20:])}")
            if line is None:
                return proc.wait(), "".join(out)
            out.append(line)
            if time.monotonic() - start > TOTAL_S:
                pytest.fail(f"run-local still running after {TOTAL_S}s; last lines:\n{''.join(out[-20:])}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow  # about 2 min on 2 idle cores: every task is a fresh Python process importing its stage
def test_run_local_runs_every_stage_and_publishes_typed_artifacts(tmp_path):
    # Tracking on, into a SQLite store of this test: register logs and registers the models there.
    env = {**os.environ, "TMPDIR": str(tmp_path), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "MLFLOW_EXPERIMENT_NAME": "stgt-local-run-test"}
    env.pop("STGT_TRACKING", None)
    args = [a for kv in TINY for a in ("--set", kv)]
    returncode, output = run_watched(
        [sys.executable, "-m", "stgt_pipeline.cli", "pipeline", "run-local", "--params", str(tiny_params(tmp_path)),
         "--output-dir", str(tmp_path / "out"), "--shards", "2", *args], cwd=tmp_path, env=env)
    assert returncode == 0, output[-3000:]
    run = next((tmp_path / "out").glob("stgt-pipeline-*"))
    tasks = {p.name for p in run.iterdir()}
    expected = {f"{s.name}-{item}" if item else s.name for s in stages.STAGES for item in (s.foreach or ("",))}
    assert {t.replace("_", "-") for t in expected} | {"finish-run", "open-mlflow-run"} <= tasks
    assert "pretrain-trainjob" not in tasks  # one node (the default): pretrain ran in its own task

    manifest = read_manifest(run / "prepare" / "dataset")  # the Dataset artifact is the manifest dataset
    assert len(manifest.table) > 0 and (run / "validate" / "report_html").read_text().lstrip().startswith("<")
    frames = outputs_of(run / "extract-frames")
    summary = frames["summary"]["artifacts"][0]["metadata"]
    assert summary["shards"] == 2 and summary["extracted"] + summary["quarantined"] == len(manifest.table)
    pointer = json.loads((run / "extract-frames" / "frames").read_text())
    assert "index.parquet" in {f["path"] for f in pointer["files"]}

    # One finetune task per task, each training only its own (finetune.tasks narrowed to it).
    for task in stages.get("finetune").foreach:
        pointer = json.loads((run / f"finetune-{task}" / task).read_text())
        assert pointer["workspace_path"].endswith(stages.get("finetune").outputs[task]) and pointer["files"]
    metrics = json.loads((run / "evaluate" / "report" / "metrics.json").read_text())  # the Artifact is the folder
    assert "R@1" in json.dumps(metrics["retrieval"])

    import mlflow  # noqa: PLC0415 - slow to import, needed here only

    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    register = outputs_of(run / "register")["summary"]["artifacts"][0]["metadata"]
    for task in yaml.safe_load((REPO_ROOT / "params.yaml").read_text())["register"]["models"]:
        name = f"stgt-{task}"
        assert str(client.get_model_version_by_alias(name, "champion").version) == "1"  # the first version is promoted
        assert register[f"{task}.promoted"] == 1.0
    assert not (tmp_path / "out" / ".tmp").exists()  # kfp.local's per-task temp folders are cleaned up

    # One MLflow parent for the pipeline run, every stage run (shards included) nested under it, closed FINISHED.
    experiment = client.get_experiment_by_name(env["MLFLOW_EXPERIMENT_NAME"]).experiment_id
    parents = client.search_runs([experiment], filter_string="tags.`stgt.role` = 'pipeline'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["kfp.run_id"].startswith("local-")
    stage_runs = client.search_runs([experiment], filter_string="tags.`stgt.role` = 'stage'")
    assert {r.data.tags["stage"] for r in stage_runs} == {s.name for s in stages.STAGES}
    assert {r.data.tags.get("mlflow.parentRunId") for r in stage_runs} == {parents[0].info.run_id}
