"""The stgt Kubeflow pipeline, built from the stage registry: adding a registry stage adds its task.

Each stage's task runs the same stage function as dvc.yaml (components.kfp.stage_components); its upstream tasks
are those producing its inputs, wired through typed artifacts. Sharded stages fan out with dsl.ParallelFor and
are collected by a task named as the stage. A `foreach` stage (finetune) is one task per item, `<stage>-<item>`, as
dvc.yaml's `<stage>@<item>`: each passes [item] for the stage's list param (finetune.tasks) and produces the outputs
keyed by the item, so the items run side by side and a consumer waits for the items whose outputs it reads. A
multi-node stage (pretrain) runs in its pod or as a Kubeflow Trainer TrainJob, as `<stage>_num_nodes` says
(components.kfp.distributed). The first task opens the MLflow parent run the stage runs nest under; the whole DAG
sits in an exit handler that closes it (components.kfp.parent_run).

Pipeline parameters: every params.yaml key as `section__key` (defaults from params.yaml), plus the cluster
settings in CLUSTER_PARAMETERS and those of the multi-node stages.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Sequence

from kfp import compiler, dsl
from kfp.dsl import PipelineTask

from components import registry
from components.config import load_params
from components.errors import StgtError
from components.kfp import distributed, fanout, task_config
from components.kfp.params import PipelineParam
from components.kfp.parent_run import finish_run_component, open_run_component
from components.kfp.stage_components import (StageInterface, check_shardable, collect_component, shard_component,
                                             stage_component)
from components.registry import Stage

PIPELINE_NAME = "stgt-pipeline"
COMPILED = Path(__file__).with_name("stgt_pipeline.yaml")
WORKSPACE_SIZE = "100Gi"
WORKSPACE = dsl.WORKSPACE_PATH_PLACEHOLDER

# name -> (type, default). Secret names point at infra/k8s/base/secrets. GPU placement applies to GPU tasks only;
# clusters with the ExtendedResourceToleration admission plugin (GKE, EKS) tolerate GPU taints by themselves, others
# pass e.g. [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]. (Defaults stay empty: the
# compiler writes dict defaults in hash order, which would make the compiled YAML differ between runs.)
CLUSTER_PARAMETERS: dict[str, tuple[type, Any]] = {
    "fanout_shards": (int, 2),
    "mlflow_secret": (str, "stgt-mlflow"),
    "s3_secret": (str, "stgt-s3"),
    "gpu_node_selector": (dict, {}),
    "gpu_tolerations": (list, []),
    **distributed.parameters(),
}


def tunables(interfaces: Sequence[StageInterface]) -> list[PipelineParam]:
    """Each params key once, in stage order (sections may be shared by stages)."""
    seen: dict[str, PipelineParam] = {}
    for iface in interfaces:
        for p in iface.params:
            seen.setdefault(p.key, p)
    return list(seen.values())


def _signature(params: Sequence[PipelineParam]) -> inspect.Signature:
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    return inspect.Signature(
        [inspect.Parameter(p.name, kind, annotation=p.annotation, default=p.default) for p in params]
        + [inspect.Parameter(n, kind, annotation=t, default=d) for n, (t, d) in CLUSTER_PARAMETERS.items()])


def _add_stage(iface: StageInterface, args: dict[str, Any], channels: dict[str, Any],
               cluster: task_config.ClusterParams) -> PipelineTask:
    """Add the stage's (or foreach item's) task; `channels` maps each output path made so far to its output."""
    stage = iface.stage
    params = iface.param_values(args)
    try:
        inputs = {k: channels[path] for k, path in stage.inputs.items()}
    except KeyError as exc:
        raise StgtError(f"{stage.name}: listed before the stage producing its input ({exc})") from None
    if stage.name in distributed.STAGES:
        return distributed.add_stage(iface, WORKSPACE, params, inputs, args, cluster)
    if fanout.sharded_input(stage) is None:
        task = stage_component(iface)(workspace=WORKSPACE, **params, **inputs)
        return task_config.configure_stage_task(task, stage.resources, cluster,
                                                cacheable=stage.cacheable and not iface.writes_workspace)
    if iface.item:
        raise StgtError(f"{stage.name}: a stage cannot be both sharded and foreach")
    # Shards and their collect write to the per-run workspace, which a later run's cache hit would not have.
    plan = fanout.plan_component()(manifest=inputs[check_shardable(iface)], num_shards=args["fanout_shards"])
    plan.set_caching_options(enable_caching=False)
    with dsl.ParallelFor(plan.output) as shard:
        shard_task = shard_component(iface)(workspace=WORKSPACE, shard=shard, **params, **inputs)
        task_config.configure_stage_task(shard_task, stage.resources, cluster, cacheable=False)
    collect = collect_component(iface)(workspace=WORKSPACE, **params).after(shard_task)
    return task_config.configure_stage_task(collect, stage.resources, cluster, cacheable=False)


def build_pipeline(params_path: str | Path = "params.yaml", stages: Sequence[Stage] = registry.STAGES,
                   workspace_size: str = WORKSPACE_SIZE) -> dsl.graph_component.GraphComponent:
    """The pipeline for `stages` (in dependency order), parameter defaults from `params_path`."""
    params = load_params(params_path)
    interfaces = [iface for s in stages for iface in StageInterface.all_of(s, stages, params)]
    keys = tunables(interfaces)
    signature = _signature(keys)

    def stgt_pipeline(*values: Any) -> None:
        args = dict(zip(signature.parameters, values))
        cluster = task_config.ClusterParams(args["mlflow_secret"], args["s3_secret"], args["gpu_node_selector"],
                                            args["gpu_tolerations"])
        finish = finish_run_component()(kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        task_config.use_secrets(finish, cluster).set_caching_options(False)
        with dsl.ExitHandler(finish):
            opener = open_run_component(keys)(kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                                              kfp_run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                                              **{p.name: args[p.name] for p in keys})
            task_config.use_secrets(opener, cluster).set_caching_options(False)
            channels: dict[str, Any] = {}  # output path -> the task output producing it
            for iface in interfaces:
                task = _add_stage(iface, args, channels, cluster)
                if not iface.stage.inputs:  # the DAG's sources; every other stage runs after one of them
                    task.after(opener)
                channels.update({path: task.outputs[key] for key, path in iface.stage.outputs.items()
                                 if key in iface.outputs})

    stgt_pipeline.__signature__ = signature  # type: ignore[attr-defined]
    workspace = dsl.WorkspaceConfig(
        size=workspace_size,
        # Shards and multi-node training mount the workspace from several nodes at once.
        kubernetes=dsl.KubernetesWorkspaceConfig(pvcSpecPatch={"accessModes": ["ReadWriteMany"]}))
    return dsl.pipeline(
        name=PIPELINE_NAME,
        description="stgt: " + " -> ".join(s.name for s in stages) + " (built from components/registry.py)",
        pipeline_config=dsl.PipelineConfig(workspace=workspace),
    )(stgt_pipeline)


def compile_pipeline(output: str | Path = COMPILED, params_path: str | Path = "params.yaml",
                     stages: Sequence[Stage] = registry.STAGES) -> Path:
    compiler.Compiler().compile(build_pipeline(params_path, stages), str(output))
    return Path(output)
