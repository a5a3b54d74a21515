"""The MLflow parent run of a Kubeflow run without KFP's plugin: opened by the first task, joined by the stage
tasks through the Kubeflow run id, closed by the exit task from the pipeline's final status (SQLite store)."""
from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from stgt_pipeline import stages
from stgt_pipeline.kfp import conventions
from stgt_pipeline.kfp.run import parent_run
from stgt_pipeline.params import load_params, params_hash
from stgt_pipeline.tracking import runs


@pytest.fixture
def store(clean_env: Path, monkeypatch: pytest.MonkeyPatch):
    from mlflow import MlflowClient

    uri = f"sqlite:///{clean_env / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "kfp-parent")
    return MlflowClient(uri)


def open_run(monkeypatch: pytest.MonkeyPatch, kfp_run_id: str) -> str:
    monkeypatch.setenv(conventions.RUN_ID_ENV, kfp_run_id)  # the pod label, on a cluster
    return parent_run.open_pipeline_run("placeholder-id", "stgt-pipeline-abc12", {"prepare.num_videos": 6})


def test_stage_runs_nest_under_the_opened_parent_which_the_exit_task_closes(store, monkeypatch):
    run_id = open_run(monkeypatch, "kfp-1")
    parent = store.get_run(run_id)
    assert parent.info.run_name == "kfp stgt-pipeline-abc12" and parent.info.status == "RUNNING"
    tags = parent.data.tags
    assert (tags["kfp.run_id"], tags["stgt.role"], tags["pipeline.kind"]) == ("kfp-1", "pipeline", "kfp")
    assert tags["params_hash"] == params_hash(load_params(None, ["prepare.num_videos=6"]))
    assert parent.data.params["prepare.num_videos"] == "6" and len(parent.data.params) > runs.PARAMS_PER_BATCH

    assert parent_run.join_pipeline_run() == run_id  # a stage task, before its stage
    for stage in ("prepare", "validate"):
        outputs = {k: Path(k) for k in stages.get(stage).outputs}
        with runs.stage_run(stages.get(stage), load_params(None), {}, outputs):
            pass
    children = store.search_runs([parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'")
    assert sorted(r.data.tags["stage"] for r in children) == ["prepare", "validate"]
    assert {r.data.tags["kfp.run_id"] for r in children} == {"kfp-1"}
    assert store.get_run(run_id).info.status == "RUNNING"  # the stages leave it to the exit task

    assert parent_run.close_pipeline_run("", SimpleNamespace(state="SUCCEEDED", error_message="")) == "FINISHED"
    assert store.get_run(run_id).info.status == "FINISHED"


@pytest.mark.parametrize("state,status", [("FAILED", "FAILED"), ("CANCELED", "KILLED"), ("CANCELLED", "KILLED")])
def test_failed_or_cancelled_pipeline_closes_the_parent_accordingly(store, monkeypatch, state, status):
    run_id = open_run(monkeypatch, f"kfp-{state}")
    final = SimpleNamespace(state=state, error_message="Task train failed.\nstack trace ...")
    assert runs.finish_parent_run(run_id, final) == status
    closed = store.get_run(run_id)
    assert closed.info.status == status and closed.data.tags["kfp.state"] == state
    assert closed.data.tags["error"] == "Task train failed."


def test_parent_is_found_by_its_kfp_run_id_only(store, monkeypatch):
    run_id = open_run(monkeypatch, "kfp-a")
    assert runs.find_parent_run("kfp-a") == run_id and runs.find_parent_run("kfp-b") == ""
    monkeypatch.setenv(conventions.RUN_ID_ENV, "kfp-b")
    assert parent_run.join_pipeline_run() == "" and "STGT_PARENT_RUN_ID" not in os.environ
    assert parent_run.close_pipeline_run("", "FAILED") == ""  # nothing to close


@pytest.mark.parametrize("env", [{"STGT_TRACKING": "off"}, {"MLFLOW_RUN_ID": "made-by-the-kfp-plugin"}])
def test_tracking_off_or_the_kfp_plugin_makes_both_tasks_no_ops(clean_env, monkeypatch, env):
    from tests.tracking.conftest import free_port

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # contacting it would fail
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert open_run(monkeypatch, "kfp-1") == ""
    assert parent_run.join_pipeline_run() == ""
    assert parent_run.close_pipeline_run("kfp-1", "SUCCEEDED") == ""
    assert runs.finish_parent_run("some-run", "SUCCEEDED") == ""
