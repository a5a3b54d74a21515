"""Multi-node training as a Kubeflow Trainer TrainJob (trainer.kubeflow.org/v1alpha1, a torch-distributed runtime).

The launcher task creates a TrainJob whose nodes run `torchrun -m stgt_pipeline.cli <stage>` (Trainer injects the
PET_* variables torchrun reads: nodes, rank, master), then polls the job's conditions until `Complete` or `Failed`,
surfacing the failure's reason and message, and deletes the job when it times out so it stops holding GPUs.
Resources, tolerations, node selector, affinity, env and volumes are the launcher task's own, forwarded through
KFP's task_config_passthroughs: set GPUs on the launcher task as on any other. The nodes read and write the run's
workspace (ReadWriteMany): the launcher copies the stage's artifact inputs there first, and its outputs must be
workspace outputs (the pipeline's publish task points downstream stages at them). The nodes get the launcher's
MLflow and S3 secrets as env (secret references, never values) and the pipeline's MLflow parent run, so rank 0
logs the stage run where an in-pod run would.
"""
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence

from kfp.dsl import Artifact

from stgt_pipeline import stages
from stgt_pipeline.errors import StgtError
from stgt_pipeline.kfp.conventions import PARENT_ENV, RUN_ID_ENV, in_workspace
from stgt_pipeline.kfp.run.parent_run import join_pipeline_run, kfp_run_id
from stgt_pipeline.kfp.run.stage_task import cli_args, input_path, write_params_file

GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
RUNTIME = "stgt-torch-distributed"  # torch-distributed runtime on our CUDA image (infra/k8s/cluster)
TRAINER_JOB = "node"  # the replicated job (and container) name in the torch-distributed runtime
PATCH_MANAGER = "stgt-pipeline"
NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
MAX_API_ERRORS = 5  # consecutive failed polls tolerated (API server restarts) before giving up


class TrainJobFailed(StgtError):
    """The TrainJob reported a Failed condition, or did not finish in time."""


class CustomObjectsApi(Protocol):
    """The part of kubernetes.client.CustomObjectsApi the launcher uses."""

    def create_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str,
                                        body: dict) -> dict: ...

    def get_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str,
                                     name: str) -> dict: ...

    def delete_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str,
                                        name: str) -> Any: ...


def job_name(stage: str) -> str:
    """RFC 1035 label, unique per launch."""
    return f"stgt-{stage.replace('_', '-')}-{uuid.uuid4().hex[:8]}"


def stage_command(stage: stages.Stage, workspace: Path, params_file: Path) -> list[str]:
    """`torchrun -m stgt_pipeline.cli <stage>` with the stage's paths inside the workspace."""
    paths = {key: workspace / path for key, path in {**stage.inputs, **stage.outputs}.items()}
    return ["torchrun", "-m", "stgt_pipeline.cli", *cli_args(stage, params_file, paths, workspace / stage.metrics)]


def stage_inputs(stage: stages.Stage, inputs: Mapping[str, Artifact], workspace: Path) -> None:
    """Copy the artifact inputs (downloaded into this pod only) to their stage-table paths in the workspace."""
    for key, artifact in inputs.items():
        source, target = input_path(stage, key, artifact, workspace), workspace / stage.inputs[key]
        if source == target:
            continue
        tmp = target.with_name(f".{target.name}.copy")
        shutil.rmtree(tmp, ignore_errors=True)
        if source.is_dir():
            shutil.copytree(source, tmp)
        else:
            tmp.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, tmp)
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(tmp, target)


def node_env(task_env: Sequence[dict], secrets: Mapping[str, Sequence[str]]) -> list[dict]:
    """The launcher task's env, its secrets as references, and the run's ids for tracking (later entries win)."""
    env = {e["name"]: e for e in task_env or ()}
    for secret, keys in secrets.items():
        env.update({k: {"name": k, "valueFrom": {"secretKeyRef": {"name": secret, "key": k, "optional": True}}}
                    for k in keys})
    ids = {RUN_ID_ENV: kfp_run_id(), PARENT_ENV: os.environ.get(PARENT_ENV, "")}
    env.update({k: {"name": k, "value": v} for k, v in ids.items() if v})
    return list(env.values())


def _pod_patch(task_config: Any) -> dict:
    spec = {"volumes": task_config.volumes, "nodeSelector": task_config.node_selector,
            "tolerations": task_config.tolerations, "affinity": task_config.affinity}
    if task_config.volume_mounts:
        spec["containers"] = [{"name": TRAINER_JOB, "volumeMounts": task_config.volume_mounts}]
    return {k: v for k, v in spec.items() if v}


def trainjob_manifest(name: str, namespace: str, image: str, command: list[str], num_nodes: int,
                      num_proc_per_node: int, task_config: Any, timeout_s: int, env: Optional[list] = None) -> dict:
    trainer = {"image": image, "command": command, "numNodes": num_nodes, "numProcPerNode": num_proc_per_node}
    if task_config.resources:
        trainer["resourcesPerNode"] = task_config.resources
    env = task_config.env if env is None else env
    if env:
        trainer["env"] = env
    spec: dict[str, Any] = {"runtimeRef": {"name": RUNTIME}, "trainer": trainer, "activeDeadlineSeconds": timeout_s}
    pod = _pod_patch(task_config)
    if pod:
        job = {"name": TRAINER_JOB, "template": {"spec": {"template": {"spec": pod}}}}
        spec["runtimePatches"] = [{"manager": PATCH_MANAGER,
                                   "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [job]}}}}]
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainJob",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/part-of": "stgt"}},
            "spec": spec}


def _condition(job: Mapping[str, Any], kind: str) -> Optional[dict]:
    conditions = (job.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == kind and c.get("status") == "True"), None)


def wait_for(api: CustomObjectsApi, name: str, namespace: str, timeout_s: float, poll_s: float = 15.0,
             clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> dict:
    """Poll until Complete (returns the job) or Failed (raises with its message); delete it on timeout."""
    deadline = clock() + timeout_s
    errors = 0
    while True:
        try:
            job = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            errors = 0
        except Exception as exc:  # the API server may restart during a long job: tolerate a few misses
            errors += 1
            if errors >= MAX_API_ERRORS:
                raise TrainJobFailed(f"TrainJob {namespace}/{name}: status unreadable {errors} times: {exc}") from None
            job = {}
        failed = _condition(job, "Failed")
        if failed:
            raise TrainJobFailed(f"TrainJob {namespace}/{name} failed: {failed.get('reason', '?')}: "
                                 f"{failed.get('message', '')}".rstrip(": "))
        if _condition(job, "Complete"):
            return job
        if clock() >= deadline:
            api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            raise TrainJobFailed(f"TrainJob {namespace}/{name} did not finish within {timeout_s:.0f}s; deleted it")
        sleep(poll_s)


def run_trainjob_task(stage: str, workspace: str, params: Mapping[str, Any], inputs: Mapping[str, Artifact],
                      image: str, num_nodes: int, num_proc_per_node: int, timeout_s: int, task_config: Any,
                      secrets: Optional[Mapping[str, Sequence[str]]] = None, api: Optional[CustomObjectsApi] = None,
                      namespace: Optional[str] = None) -> dict:
    """Launch the stage as a TrainJob, wait for it, return its summary (the stage's metrics file)."""
    spec = stages.get(stage)
    missing = [k for k in spec.outputs if not in_workspace(k)]
    if missing:
        raise StgtError(f"{stage}: output(s) {missing} are artifacts, which TrainJob nodes cannot publish; "
                        "a TrainJob stage writes workspace outputs only")
    ws = Path(workspace)
    if api is None:
        from kubernetes import client, config

        config.load_incluster_config()
        api = client.CustomObjectsApi()
    namespace = namespace or Path(NAMESPACE_FILE).read_text().strip()
    stage_inputs(spec, inputs, ws)
    join_pipeline_run()
    command = stage_command(spec, ws, write_params_file(stage, params, ws))
    body = trainjob_manifest(job_name(stage), namespace, image, command, num_nodes, num_proc_per_node,
                             task_config, timeout_s, env=node_env(task_config.env, secrets or {}))
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    wait_for(api, body["metadata"]["name"], namespace, timeout_s)
    return json.loads((ws / spec.metrics).read_text())
