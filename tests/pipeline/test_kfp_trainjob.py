"""The TrainJob launcher: the manifest it builds and how it waits, against a fake Kubernetes API (no cluster here)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from stgt_pipeline.kfp.run import trainjob
from stgt_pipeline.stages import Stage

STAGE = Stage(name="pretrain", help="test stage", params=("extract_frames",), inputs={"frames": "data/frames"},
              outputs={"checkpoint": "models/pretrain"})
TASK_CONFIG = SimpleNamespace(
    resources={"limits": {"nvidia.com/gpu": "8", "memory": "200Gi"}},
    env=[{"name": "NCCL_DEBUG", "value": "WARN"}],
    volumes=[{"name": "kfp-workspace", "persistentVolumeClaim": {"claimName": "run-ws"}}],
    volume_mounts=[{"name": "kfp-workspace", "mountPath": "/kfp-workspace"}],
    node_selector={"gpu": "a100"},
    tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    affinity=None,
)


class FakeTrainJobApi:
    """Stands in for kubernetes.client.CustomObjectsApi: returns scripted TrainJob statuses, records calls."""

    def __init__(self, statuses: list[dict | Exception]):
        self.statuses = statuses
        self.created: list[dict] = []
        self.deleted: list[str] = []
        self.polls = 0

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        assert (group, version, plural) == (trainjob.GROUP, trainjob.VERSION, trainjob.PLURAL)
        self.created.append(body)
        return body

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        status = self.statuses[min(self.polls, len(self.statuses) - 1)]
        self.polls += 1
        if isinstance(status, Exception):
            raise status
        return {"metadata": {"name": name}, "status": status}

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.deleted.append(name)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def condition(kind: str, reason: str = "", message: str = "") -> dict:
    return {"conditions": [{"type": kind, "status": "True", "reason": reason, "message": message}]}


RUNNING: dict = {"jobsStatus": [{"name": "node", "active": 2}]}


def test_manifest_runs_the_stage_with_torchrun_on_the_task_resources():
    command = trainjob.stage_command(STAGE, Path("/kfp-workspace"), Path("/kfp-workspace/.params/p.yaml"))
    body = trainjob.trainjob_manifest("stgt-pretrain-1", "team", "img:1", command, num_nodes=4, num_proc_per_node=8,
                                      task_config=TASK_CONFIG, timeout_s=3600)
    assert body["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and body["kind"] == "TrainJob"
    spec = body["spec"]
    assert spec["runtimeRef"] == {"name": trainjob.RUNTIME} and spec["activeDeadlineSeconds"] == 3600
    trainer = spec["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"], trainer["image"]) == (4, 8, "img:1")
    assert trainer["command"][:4] == ["torchrun", "-m", "stgt_pipeline.cli", "pretrain"]
    assert "--frames" in trainer["command"] and "/kfp-workspace/models/pretrain" in trainer["command"]
    assert trainer["resourcesPerNode"] == TASK_CONFIG.resources and trainer["env"] == TASK_CONFIG.env
    job = spec["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    pod = job["template"]["spec"]["template"]["spec"]
    assert job["name"] == "node" and pod["nodeSelector"] == {"gpu": "a100"}
    assert pod["containers"] == [{"name": "node", "volumeMounts": TASK_CONFIG.volume_mounts}]
    assert "affinity" not in pod


def test_job_names_are_unique_dns_labels():
    names = {trainjob.job_name("extract_frames") for _ in range(5)}
    assert len(names) == 5 and all(n.startswith("stgt-extract-frames-") and len(n) <= 63 for n in names)


def test_wait_returns_when_complete_after_polling():
    api, clock = FakeTrainJobApi([RUNNING, RUNNING, condition("Complete")]), FakeClock()
    job = trainjob.wait_for(api, "j", "ns", timeout_s=600, poll_s=10, clock=clock, sleep=clock.sleep)
    assert job["status"]["conditions"][0]["type"] == "Complete" and api.polls == 3 and clock.now == 20


def test_wait_surfaces_the_failure_condition_message():
    api, clock = FakeTrainJobApi([RUNNING, condition("Failed", "BackoffLimitExceeded", "node-0 exited 137")]), FakeClock()
    with pytest.raises(trainjob.TrainJobFailed, match="BackoffLimitExceeded: node-0 exited 137"):
        trainjob.wait_for(api, "j", "ns", timeout_s=600, poll_s=10, clock=clock, sleep=clock.sleep)
    assert api.deleted == []  # kept for inspection


def test_wait_times_out_and_deletes_the_job():
    api, clock = FakeTrainJobApi([RUNNING]), FakeClock()
    with pytest.raises(trainjob.TrainJobFailed, match="did not finish within 60s"):
        trainjob.wait_for(api, "j", "ns", timeout_s=60, poll_s=15, clock=clock, sleep=clock.sleep)
    assert api.deleted == ["j"]


def test_wait_tolerates_a_few_api_errors_but_not_many():
    flaky = FakeTrainJobApi([RuntimeError("503"), RuntimeError("503"), condition("Complete")])
    clock = FakeClock()
    trainjob.wait_for(flaky, "j", "ns", timeout_s=600, poll_s=1, clock=clock, sleep=clock.sleep)
    down = FakeTrainJobApi([RuntimeError("connection refused")])
    with pytest.raises(trainjob.TrainJobFailed, match="unreadable 5 times"):
        trainjob.wait_for(down, "j", "ns", timeout_s=600, poll_s=1, clock=clock, sleep=clock.sleep)


def test_run_task_stages_artifact_inputs_creates_waits_and_returns_the_stage_summary(tmp_path, monkeypatch):
    from kfp.dsl import Dataset

    from stgt_pipeline import stages
    from stgt_pipeline.kfp import conventions

    monkeypatch.setattr(stages, "BY_NAME", {**stages.BY_NAME, STAGE.name: STAGE})
    monkeypatch.setenv("STGT_TRACKING", "off")
    monkeypatch.setenv("KFP_RUN_ID", "run-1")
    ws = tmp_path / "ws"
    (ws / "reports").mkdir(parents=True)
    (ws / STAGE.metrics).write_text('{"stage": "pretrain", "loss": 0.5}')
    downloaded = tmp_path / "artifact" / "frames"  # an artifact input, as KFP downloads it into the launcher pod
    (downloaded / "sub").mkdir(parents=True)
    (downloaded / "sub" / "x.txt").write_text("x")
    monkeypatch.setitem(conventions.ARTIFACT_OUTPUTS, "frames", Dataset)  # frames as an artifact, for this test
    api = FakeTrainJobApi([condition("Complete")])
    result = trainjob.run_trainjob_task("pretrain", str(ws), {"extract_frames.num_frames": 4},
                                        {"frames": SimpleNamespace(path=str(downloaded))}, "img:1", 2, 1, 60,
                                        TASK_CONFIG, {"stgt-mlflow": ["MLFLOW_TRACKING_URI"]}, api=api,
                                        namespace="team")
    assert result["loss"] == 0.5
    assert (ws / "data" / "frames" / "sub" / "x.txt").read_text() == "x"  # where the nodes read it
    body = api.created[0]
    assert body["metadata"]["namespace"] == "team"
    env = {e["name"]: e for e in body["spec"]["trainer"]["env"]}
    assert env["NCCL_DEBUG"]["value"] == "WARN" and env["KFP_RUN_ID"]["value"] == "run-1"
    # Secrets travel as references, never as values.
    assert env["MLFLOW_TRACKING_URI"]["valueFrom"]["secretKeyRef"] == {
        "name": "stgt-mlflow", "key": "MLFLOW_TRACKING_URI", "optional": True}


def test_run_task_refuses_a_stage_with_artifact_outputs(tmp_path, monkeypatch):
    with pytest.raises(trainjob.StgtError, match="workspace outputs only"):
        trainjob.run_trainjob_task("validate", str(tmp_path), {}, {}, "img:1", 2, 1, 60, TASK_CONFIG,
                                   api=FakeTrainJobApi([]), namespace="team")
