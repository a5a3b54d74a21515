"""A real stage (`validate`) tracked on a real MLflow server: parent and nested run, params, metrics, tags,
dataset input, report artifacts; failures; how a stage joins runs others own; the off switches."""
from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pandas as pd
import pytest

from stgt_pipeline import stages
from stgt_pipeline.errors import StageFailed, StgtError
from stgt_pipeline.io.manifest import write_manifest
from stgt_pipeline.params import load_params, params_hash
from stgt_pipeline.runner import run_stage
from stgt_pipeline.tracking import runs as tracking
from tests.tracking.helpers import make_dataset

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def run_validate(root: Path, project: Path) -> dict:
    return run_stage("validate", params_path=project / "params.yaml", inputs={"dataset": root},
                     outputs={"report": project / "reports" / "validate"},
                     metrics_path=project / "reports" / "validate.json")


def only(runs):
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


def test_validate_stage_lands_with_parent_nested_run_params_metrics_and_report(validated_pipeline, client):
    project, sha, summary = validated_pipeline.project, validated_pipeline.git_sha, validated_pipeline.summary
    root = project / "data" / "prepared"

    experiment = client.get_experiment_by_name(validated_pipeline.experiment)
    runs = client.search_runs([experiment.experiment_id])
    stage = only([r for r in runs if r.data.tags.get("stgt.role") == "stage"])
    parent = client.get_run(stage.data.tags["mlflow.parentRunId"])
    assert parent.info.status == stage.info.status == "FINISHED"
    assert parent.data.tags["stgt.role"] == "pipeline" and parent.data.tags["pipeline.kind"] == "stgt"
    assert parent.info.run_name == f"stgt validate @ {sha[:8]}"
    assert stage.info.run_name == "validate"
    tags = stage.data.tags
    assert tags["stage"] == "validate" and tags["git.sha"] == sha and tags["git.dirty"] == "false"
    assert tags["params_hash"] == params_hash(load_params(project / "params.yaml"), ["validate"])
    manifest_sha = tracking.sha256_file(root / "manifest.parquet")
    assert tags["data_digest"] == tags["data_digest.dataset"] == manifest_sha[:32]
    assert stage.data.params["validate.min_caption_chars"] == "4"
    assert stage.data.params["validate.duration_s.max"] == "3600.0"
    assert json.loads(stage.data.params["validate.required_splits"]) == ["train", "test"]
    assert stage.data.metrics["videos"] == summary["videos"] == 3
    assert stage.data.metrics["success"] == 1.0 and stage.data.metrics["splits.train"] == 2
    dataset = only(stage.inputs.dataset_inputs)
    assert dataset.dataset.name == "prepared" and dataset.dataset.digest == manifest_sha[:32]
    assert len(runs) == 2
    artifacts = {a.path for a in client.list_artifacts(stage.info.run_id)}
    assert artifacts == {"report", "validate.json"}
    assert {a.path for a in client.list_artifacts(stage.info.run_id, "report")} >= {
        "report/report.html", "report/result.json", "report/config.resolved.yaml"}
    html = Path(client.download_artifacts(stage.info.run_id, "report/report.html", str(project / "downloaded")))
    assert "expect_column_values_to_be_unique" in html.read_text()


def test_failing_stage_ends_failed_with_error_tag_and_failed_report(tracked, client):
    project = Path.cwd()
    root = project / "data" / "prepared"
    rows = make_dataset(root)
    rows[1]["video_id"] = rows[0]["video_id"]  # duplicate id: the suite fails
    write_manifest(pd.DataFrame(rows), root, root, "test")
    with pytest.raises(StageFailed):
        run_validate(root, project)

    experiment = client.get_experiment_by_name(tracked)
    stage = only(client.search_runs([experiment.experiment_id], "tags.`stgt.role` = 'stage'"))
    parent = client.get_run(stage.data.tags["mlflow.parentRunId"])
    assert stage.info.status == parent.info.status == "FAILED"
    error = stage.data.tags["error"]
    assert error.startswith("StageFailed: validate: manifest suite failed") and "\n" not in error
    assert parent.data.tags["error"] == f"validate: {error}"
    assert {a.path for a in client.list_artifacts(stage.info.run_id, "report.failed")} >= {"report.failed/report.html"}


@pytest.fixture
def silent_server():
    """A port that accepts connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.timeout(60)  # a hang is the failure this guards against; speed itself belongs in bench/
@pytest.mark.parametrize("kind", ["refused", "silent"])
def test_unreachable_server_fails_fast_naming_the_uri(clean_env, monkeypatch, kind, silent_server):
    from tests.tracking.conftest import free_port

    uri = silent_server if kind == "silent" else f"http://user:pw@127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    root = clean_env / "data"
    make_dataset(root)
    started = time.monotonic()
    with pytest.raises(StgtError) as exc:
        run_validate(root, clean_env)
    elapsed = time.monotonic() - started
    print(f"unreachable ({kind}) failed after {elapsed:.1f}s: {exc.value}")
    shown = tracking.redact(uri)
    assert str(exc.value).startswith(f"MLflow tracking server at {shown} is unreachable: ")
    assert "pw" not in str(exc.value)


def test_stage_logs_step_metrics_and_system_metrics_when_it_trains(tracked, client, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "1")
    training = stages.Stage(name="train_probe", help="", params=("validate",),
                              resources=stages.Resources(gpus=1))
    with tracking.stage_run(training, load_params(None), {}, {}) as tracker:
        for step in range(3):
            tracking.current().log_metrics({"loss": 1.0 / (step + 1)}, step=step)
        time.sleep(1.0)
    assert tracking.current().run_id is None  # the no-op tracker again outside the block
    history = client.get_metric_history(tracker.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (1, 0.5), (2, 1 / 3)]
    assert any(k.startswith("system/cpu") for k in client.get_run(tracker.run_id).data.metrics)


def test_explicit_parent_is_joined_and_left_open(tracked, client, monkeypatch):
    experiment_id = client.create_experiment(f"{tracked}-wrapper")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", experiment_id)
    owner = client.create_run(experiment_id, run_name="kfp pipeline run")
    monkeypatch.setenv("STGT_PARENT_RUN_ID", owner.info.run_id)
    with tracking.stage_run(stages.get("validate"), load_params(None), {}, {"report": Path("r")}) as tracker:
        pass
    run = client.get_run(tracker.run_id)
    assert run.data.tags["mlflow.parentRunId"] == owner.info.run_id and run.info.status == "FINISHED"
    assert client.get_run(owner.info.run_id).info.status == "RUNNING"  # its owner closes it


def test_kfp_plugin_run_is_logged_into_not_nested_again(tracked, client, monkeypatch):
    # KFP 2.17's MLflow plugin creates the task's run under the pipeline's parent and passes MLFLOW_RUN_ID.
    experiment_id = client.create_experiment(f"{tracked}-kfp")
    parent = client.create_run(experiment_id, run_name="pipeline")
    task = client.create_run(experiment_id, run_name="validate-task", tags={"mlflow.parentRunId": parent.info.run_id})
    monkeypatch.setenv("MLFLOW_RUN_ID", task.info.run_id)
    monkeypatch.setenv("KFP_RUN_ID", "kfp-run-123")
    with tracking.stage_run(stages.get("validate"), load_params(None), {}, {"report": Path("r")}) as tracker:
        tracker.log_metrics({"answer": 42})
    assert tracker.run_id == task.info.run_id
    assert len(client.search_runs([experiment_id])) == 2
    run = client.get_run(task.info.run_id)
    assert run.data.tags["stage"] == "validate" and run.data.tags["kfp.run_id"] == "kfp-run-123"
    assert run.data.metrics["answer"] == 42 and "validate.min_caption_chars" in run.data.params


@pytest.mark.parametrize("env", [{"STGT_TRACKING": "off"}, {"RANK": "1"}, {"LOCAL_RANK": "2"}])
def test_off_switch_and_non_zero_ranks_do_not_track(clean_env, monkeypatch, env):
    from tests.tracking.conftest import free_port

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # contacting it would fail
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with tracking.stage_run(stages.get("validate"), load_params(None), {}, {}) as tracker:
        tracker.log_metrics({"x": 1.0}, step=1)
        tracker.log_summary({"x": 1}, "missing.json")
    assert tracker.run_id is None
