"""Kubernetes settings of a stage's task: resources from the stage table, GPUs, /dev/shm, secrets, the run id, caching.

kfp.local ignores all of these; they take effect on a cluster.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from kfp import kubernetes
from kfp.dsl import PipelineTask
from kfp.dsl.pipeline_channel import PipelineParameterChannel

from stgt_pipeline.kfp.conventions import RUN_ID_ENV, RUN_ID_LABEL
from stgt_pipeline.stages import Resources

GPU_RESOURCE = "nvidia.com/gpu"
SHM_VOLUME = "dshm"
TRANSIENT_RETRIES = 2
RETRY_BACKOFF = "60s"  # PyTorch DataLoader workers share batches through /dev/shm; the container default is 64 MiB

# Secret keys are the environment variable names they become (infra/k8s/base/secrets).
MLFLOW_SECRET_KEYS = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
S3_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL")


@dataclass(frozen=True)
class ClusterParams:
    """Pipeline parameters that place tasks on the cluster rather than tune a stage."""
    mlflow_secret: PipelineParameterChannel
    s3_secret: PipelineParameterChannel
    gpu_node_selector: PipelineParameterChannel
    gpu_tolerations: PipelineParameterChannel


def use_secrets(task: PipelineTask, cluster: ClusterParams) -> PipelineTask:
    """MLflow and S3 credentials as env, and the Kubeflow run id (for the MLflow parent run): the pod label rather
    than an input, which would change every cacheable task's cache key on every run."""
    kubernetes.use_secret_as_env(task, cluster.mlflow_secret, {k: k for k in MLFLOW_SECRET_KEYS})
    kubernetes.use_secret_as_env(task, cluster.s3_secret, {k: k for k in S3_SECRET_KEYS})
    kubernetes.use_field_path_as_env(task, RUN_ID_ENV, f"metadata.labels['{RUN_ID_LABEL}']")
    return task


def set_resources(task: PipelineTask, resources: Resources, cluster: ClusterParams,
                  gpus: Optional[Union[int, PipelineParameterChannel]] = None) -> PipelineTask:
    """`gpus`: overrides the stage table's count (a pipeline parameter: GPUs per node of a distributed stage)."""
    task.set_cpu_request(resources.cpu).set_cpu_limit(resources.cpu)
    task.set_memory_request(resources.memory).set_memory_limit(resources.memory)
    if resources.gpus > 0:
        task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(resources.gpus if gpus is None else gpus)
        kubernetes.empty_dir_mount(task, volume_name=SHM_VOLUME, mount_path="/dev/shm", medium="Memory")
        kubernetes.add_node_selector_json(task, cluster.gpu_node_selector)
        kubernetes.add_toleration_json(task, cluster.gpu_tolerations)
    return task


def retry_transient(task: PipelineTask, retries: int = TRANSIENT_RETRIES) -> PipelineTask:
    """Retry a task whose failure may be passing (a preempted node, an object store or MLflow briefly away).
    Stages may run again safely: outputs are written whole or not at all, and training resumes from its
    checkpoints."""
    return task.set_retry(num_retries=retries, backoff_duration=RETRY_BACKOFF, backoff_factor=2.0) if retries else task


def configure_stage_task(task: PipelineTask, resources: Resources, cluster: ClusterParams,
                         cacheable: bool, gpus: Optional[Union[int, PipelineParameterChannel]] = None,
                         retries: int = TRANSIENT_RETRIES) -> PipelineTask:
    set_resources(task, resources, cluster, gpus)
    use_secrets(task, cluster)
    retry_transient(task, retries)
    return task.set_caching_options(enable_caching=cacheable)
