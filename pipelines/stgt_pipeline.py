"""The stgt Kubeflow pipeline, built from the stage table: adding a stage adds its task.

Each stage is added through its folder's component.py (a StageComponent, stgt_pipeline.kfp.build.stage_tasks), and
its task runs the same stage function as dvc.yaml (stgt_pipeline.kfp.build.components); its upstream tasks
are those producing its inputs, wired through typed artifacts. Sharded stages fan out with dsl.ParallelFor and
are collected by a task named as the stage. A `foreach` stage (finetune) is one task per item, `<stage>-<item>`, as
dvc.yaml's `<stage>@<item>`: each passes [item] for the stage's list param (finetune.tasks) and produces the outputs
keyed by the item, so the items run side by side and a consumer waits for the items whose outputs it reads. A
multi-node stage (pretrain) runs in its pod or as a Kubeflow Trainer TrainJob, as `<stage>_num_nodes` says
(stgt_pipeline.kfp.build.distributed). The first task opens the MLflow parent run the stage runs nest under; the
whole DAG sits in an exit handler that closes it (stgt_pipeline.kfp.run.parent_run).

Pipeline parameters: every params.yaml key as `section__key` (defaults from params.yaml), plus the cluster
settings in CLUSTER_PARAMETERS and those of the multi-node stages.
"""
from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any, Sequence

from kfp import compiler, dsl

from stgt_pipeline.kfp.build import distributed, task_config
from stgt_pipeline.kfp.build.components import StageInterface, finish_run_component, open_run_component
from stgt_pipeline.kfp.build.params import PipelineParam
from stgt_pipeline.kfp.build.stage_tasks import StageComponent
from stgt_pipeline.params import load_params
from stgt_pipeline.stages import STAGES, Stage

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


def stage_component(stage: Stage) -> StageComponent:
    """The StageComponent in the stage folder's component.py; a stage without one (a table entry that tests or a
    plugin add) gets the generated default."""
    try:
        return importlib.import_module(stage.component_module).component
    except ModuleNotFoundError as exc:
        if exc.name not in (stage.component_module, stage.package):
            raise
        return StageComponent(stage.name)


def build_pipeline(params_path: str | Path = "params.yaml", stages: Sequence[Stage] = STAGES,
                   workspace_size: str = WORKSPACE_SIZE) -> dsl.graph_component.GraphComponent:
    """The pipeline for `stages` (in dependency order), parameter defaults from `params_path`."""
    params = load_params(params_path)
    interfaces = [(stage_component(s), iface) for s in stages for iface in StageInterface.all_of(s, stages, params)]
    keys = tunables([iface for _, iface in interfaces])
    signature = _signature(keys)

    def stgt_pipeline(*values: Any) -> None:
        args = dict(zip(signature.parameters, values))
        cluster = task_config.ClusterParams(args["mlflow_secret"], args["s3_secret"], args["gpu_node_selector"],
                                            args["gpu_tolerations"])
        finish = finish_run_component()(kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        task_config.retry_transient(task_config.use_secrets(finish, cluster)).set_caching_options(False)
        with dsl.ExitHandler(finish):
            opener = open_run_component(keys)(kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                                              kfp_run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                                              **{p.name: args[p.name] for p in keys})
            task_config.retry_transient(task_config.use_secrets(opener, cluster)).set_caching_options(False)
            channels: dict[str, Any] = {}  # output path -> the task output producing it
            for component, iface in interfaces:
                task = component.add(iface, WORKSPACE, args, channels, cluster)
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
        description="stgt: " + " -> ".join(s.name for s in stages) + " (built from stgt_pipeline/stages.py)",
        pipeline_config=dsl.PipelineConfig(workspace=workspace),
    )(stgt_pipeline)


def compile_pipeline(output: str | Path = COMPILED, params_path: str | Path = "params.yaml",
                     stages: Sequence[Stage] = STAGES) -> Path:
    compiler.Compiler().compile(build_pipeline(params_path, stages), str(output))
    return Path(output)
