"""Multi-node training as a Kubeflow Trainer TrainJob (trainer.kubeflow.org/v1alpha1, a torch-distributed runtime).

The launcher task creates a TrainJob whose nodes run `torchrun -m components.cli <stage>` (Trainer injects the
PET_* variables torchrun reads: nodes, rank, master), then polls the job's conditions until `Complete` or `Failed`,
surfacing the failure's reason and message, and deletes the job when it times out so it stops holding GPUs.
Resources, tolerations, node selector, affinity, env and volumes are the launcher task's own, forwarded through
KFP's task_config_passthroughs: set GPUs on the launcher task as on any other. The nodes read and write the run's
workspace (ReadWriteMany), so a TrainJob stage's inputs and outputs are workspace paths.
"""
import json
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Protocol

from kfp import dsl
from kfp.dsl import Metrics, Output

from components import registry
from components.errors import StgtError
from components.kfp import artifacts, images
from components.kfp.stage_task import write_params_file

if TYPE_CHECKING:  # kfp's build-time modules do not import inside a running task (_KFP_RUNTIME)
    from kfp.dsl.python_component import PythonComponent

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


def stage_command(stage: registry.Stage, workspace: Path, params_file: Path) -> list[str]:
    """`torchrun -m components.cli <stage>` with the stage's paths inside the workspace."""
    paths = [arg for key, path in {**stage.inputs, **stage.outputs}.items()
             for arg in (f"--{key.replace('_', '-')}", str(workspace / path))]
    return ["torchrun", "-m", "components.cli", stage.name, "--params", str(params_file), *paths,
            "--metrics", str(workspace / stage.metrics)]


def _pod_patch(task_config: Any) -> dict:
    spec = {"volumes": task_config.volumes, "nodeSelector": task_config.node_selector,
            "tolerations": task_config.tolerations, "affinity": task_config.affinity}
    if task_config.volume_mounts:
        spec["containers"] = [{"name": TRAINER_JOB, "volumeMounts": task_config.volume_mounts}]
    return {k: v for k, v in spec.items() if v}


def trainjob_manifest(name: str, namespace: str, image: str, command: list[str], num_nodes: int,
                      num_proc_per_node: int, task_config: Any, timeout_s: int) -> dict:
    trainer = {"image": image, "command": command, "numNodes": num_nodes, "numProcPerNode": num_proc_per_node}
    if task_config.resources:
        trainer["resourcesPerNode"] = task_config.resources
    if task_config.env:
        trainer["env"] = task_config.env
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


def run_trainjob_task(stage: str, workspace: str, params: Mapping[str, Any], image: str, num_nodes: int,
                      num_proc_per_node: int, timeout_s: int, task_config: Any, summary: Metrics,
                      api: Optional[CustomObjectsApi] = None, namespace: Optional[str] = None) -> dict:
    spec = registry.get(stage)
    ws = Path(workspace)
    if api is None:
        from kubernetes import client, config

        config.load_incluster_config()
        api = client.CustomObjectsApi()
    namespace = namespace or Path(NAMESPACE_FILE).read_text().strip()
    command = stage_command(spec, ws, write_params_file(stage, params, ws))
    body = trainjob_manifest(job_name(stage), namespace, image, command, num_nodes, num_proc_per_node,
                             task_config, timeout_s)
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    wait_for(api, body["metadata"]["name"], namespace, timeout_s)
    result = json.loads((ws / spec.metrics).read_text())
    artifacts.log_summary(summary, result)
    return result


def trainjob_component() -> "PythonComponent":
    @dsl.component(
        base_image=images.cpu_image(), install_kfp_package=False,
        task_config_passthroughs=[
            dsl.TaskConfigField.RESOURCES, dsl.TaskConfigField.ENV, dsl.TaskConfigField.KUBERNETES_TOLERATIONS,
            dsl.TaskConfigField.KUBERNETES_NODE_SELECTOR, dsl.TaskConfigField.KUBERNETES_AFFINITY,
            dsl.TaskConfigField.KUBERNETES_VOLUMES,
        ])
    def launch_trainjob(stage: str, workspace: str, params: dict, image: str, num_nodes: int,
                        num_proc_per_node: int, timeout_s: int, task_config: dsl.TaskConfig,
                        summary: Output[Metrics]):
        """Run a stage as a multi-node Kubeflow Trainer TrainJob and wait for it; params: {dotted key: value}."""
        from components.kfp.trainjob import run_trainjob_task

        run_trainjob_task(stage, workspace, params, image, num_nodes, num_proc_per_node, timeout_s, task_config,
                          summary)

    return launch_trainjob
