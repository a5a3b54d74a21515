"""The two ways a training stage runs in the pipeline: in its own pod, or across nodes as a Kubeflow Trainer TrainJob.

For each stage the stage table marks multi_node, the pipeline takes `<stage>_num_nodes` (default 1) and
`<stage>_procs_per_node` (default 1: processes, and GPUs, per node) and branches on the node count:
  > 1   `<stage>-trainjob` launches the TrainJob (stgt_pipeline.kfp.run.trainjob) with the GPUs, placement, env
        and volumes set on it, and waits;
  else  `<stage>` runs in its pod with `procs_per_node` GPUs: torchrun over them when there are several.
Either writes the stage's outputs to the workspace and returns its summary; `publish-<stage>` then points the
downstream stages at them (dsl.OneOf merges the branches' summaries: kfp.local cannot resolve a OneOf of
artifacts, and the outputs live in the workspace anyway). The stage must be rank-aware: only rank 0 writes.
"""
from __future__ import annotations

from typing import Any

from kfp import dsl
from kfp.dsl import PipelineTask

from stgt_pipeline import stages
from stgt_pipeline.errors import StgtError
from stgt_pipeline.kfp.build import task_config
from stgt_pipeline.kfp.build.components import StageInterface, publish_component, stage_component, trainjob_component

TIMEOUT_S = 3 * 24 * 3600  # a TrainJob still running after this is deleted, so it stops holding GPUs


def parameters() -> dict[str, tuple[type, Any]]:
    """Pipeline parameters of the multi-node stages: name -> (type, default)."""
    multi_node = [s.name for s in stages.STAGES if s.multi_node]
    return {name: value for stage in multi_node for name, value in {
        f"{stage}_num_nodes": (int, 1), f"{stage}_procs_per_node": (int, 1), f"{stage}_timeout_s": (int, TIMEOUT_S),
    }.items()}


def add_stage(iface: StageInterface, workspace: str, params: dict[str, Any], inputs: dict[str, Any],
              args: dict[str, Any], cluster: task_config.ClusterParams) -> PipelineTask:
    """The branch and its publish task, which is returned (it holds the stage's outputs)."""
    stage = iface.stage
    if not iface.writes_only_workspace or iface.item:
        raise StgtError(f"{stage.name}: a multi-node stage needs workspace-only outputs and no foreach items")
    nodes, procs = args[f"{stage.name}_num_nodes"], args[f"{stage.name}_procs_per_node"]
    with dsl.If(nodes > 1, name=f"{stage.name}-multi-node"):
        launch = trainjob_component(iface)(
            workspace=workspace, num_nodes=nodes, procs_per_node=procs, timeout_s=args[f"{stage.name}_timeout_s"],
            mlflow_secret=cluster.mlflow_secret, s3_secret=cluster.s3_secret, **params, **inputs)
        # GPUs and placement per node: forwarded to the TrainJob, not applied to the launcher's pod.
        # No retry of the launcher: its TrainJob reports its own failure, and a retry would start another job.
        task_config.configure_stage_task(launch, stage.resources, cluster, cacheable=False, gpus=procs, retries=0)
    with dsl.Else(name=f"{stage.name}-single-node"):
        single = stage_component(iface, distributed=True)(workspace=workspace, procs_per_node=procs, **params,
                                                          **inputs)
        task_config.configure_stage_task(single, stage.resources, cluster, cacheable=False, gpus=procs)
    result = dsl.OneOf(launch.outputs["Output"], single.outputs["Output"])
    return publish_component(iface)(workspace=workspace, result=result).set_caching_options(enable_caching=False)

