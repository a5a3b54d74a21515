"""Kubeflow components generated from the stage table: one per stage, plus plan, shard and collect for sharded ones.

Each is a lightweight component on the project's image whose signature is the stage's interface:
  workspace                the run's workspace path (dsl.WORKSPACE_PATH_PLACEHOLDER)
  <section>__<key> ...     the stage's params sections, one typed parameter per key (stgt_pipeline.kfp.build.params)
  <input>: Input[T]        each input, from the upstream stage that produces its path
  summary: Output[Metrics] the stage summary; <output>: Output[T] each output; <output>_html: Output[HTML] views
and whose body calls stgt_pipeline.kfp.run.stage_task (or .shards) in the installed project. Generated code names
the pod side's functions by module path only: this module imports nothing from stgt_pipeline.kfp.run.

A `foreach` stage (finetune) gets one component per item, `<stage>_<item>`, as dvc.yaml's `<stage>@<item>`: the
item narrows the list param `foreach_param` to [item] and the component has only the outputs keyed by the item.

A stage that can train on several nodes (stgt_pipeline.kfp.build.distributed) has three: the stage component with a
`procs_per_node` input (torchrun over the pod's GPUs) returning its summary, `<stage>_trainjob` launching it as a
Kubeflow Trainer TrainJob, and `publish_<stage>` giving downstream stages the outputs of whichever ran.
"""
# No `from __future__ import annotations`: kfp reads the annotations of finish_run and plan_shards as types.
from dataclasses import dataclass
from typing import List, Sequence

from kfp import dsl
from kfp.dsl import Dataset, Input
from kfp.dsl.python_component import PythonComponent

from stgt_pipeline.errors import StgtError
from stgt_pipeline.kfp import conventions
from stgt_pipeline.kfp.build import codegen, images, task_config
from stgt_pipeline.kfp.build.params import PipelineParam, pipeline_params
from stgt_pipeline.kfp.conventions import name_of
from stgt_pipeline.params import Params
from stgt_pipeline.stages import Stage, producer_of

RESERVED = {"workspace", "summary", "shard", "procs_per_node", "result"}
TRAINJOB_INPUTS = ["num_nodes: int", "procs_per_node: int", "timeout_s: int", "mlflow_secret: str",
                   "s3_secret: str", "task_config: dsl.TaskConfig"]
# What the launcher forwards to the TrainJob: GPUs, placement, env and volumes are set on its task as on any other.
# Resources are not applied to the launcher's own pod (it only waits); env and volumes are (it needs the workspace).
TRAINJOB_PASSTHROUGHS = [
    dsl.TaskConfigField.RESOURCES, dsl.TaskConfigField.KUBERNETES_TOLERATIONS,
    dsl.TaskConfigField.KUBERNETES_NODE_SELECTOR, dsl.TaskConfigField.KUBERNETES_AFFINITY,
    dsl.TaskConfigPassthrough(field=dsl.TaskConfigField.ENV, apply_to_task=True),
    dsl.TaskConfigPassthrough(field=dsl.TaskConfigField.KUBERNETES_VOLUMES, apply_to_task=True),
]


def param_signature(params: Sequence[PipelineParam]) -> list[str]:
    return [f"{p.name}: {p.annotation.__name__}" for p in params]


def params_argument(params: Sequence[PipelineParam]) -> str:
    """Source of the {dotted key: value} dict a component passes on ("" stands for a null default)."""
    items = "".join(f"            {p.key!r}: {p.name}{' or None' if p.nullable else ''},\n" for p in params)
    return "{\n" + items + "        }" if items else "{}"


def foreach_outputs(stage: Stage, item: str) -> dict[str, str]:
    """The outputs a foreach item owns: those keyed by the item (every output when the stage has no items)."""
    return {k: p for k, p in stage.outputs.items() if k == item} if item else dict(stage.outputs)


@dataclass(frozen=True)
class StageInterface:
    stage: Stage
    params: list[PipelineParam]
    inputs: dict[str, type]  # input key -> artifact class (that of its producer's output)
    sources: dict[str, str]  # input key -> the producer's output key
    outputs: dict[str, type]
    views: tuple[str, ...]  # output keys with an HTML view
    item: str = ""  # a foreach stage's item ("" for other stages)

    @property
    def name(self) -> str:
        """The component (and task) name: the stage's, `<stage>_<item>` for a foreach item."""
        return f"{self.stage.name}_{self.item}" if self.item else self.stage.name

    @classmethod
    def of(cls, stage: Stage, stages: Sequence[Stage], params: Params, item: str = "") -> "StageInterface":
        made_by = {k: producer_of(p, tuple(stages)) for k, p in stage.inputs.items()}
        missing = {k: stage.inputs[k] for k, made in made_by.items() if made is None}
        if missing:
            raise StgtError(f"{stage.name}: input(s) {missing} are produced by no stage, so the Kubeflow "
                            "pipeline cannot supply them")
        sources = {k: made[1] for k, made in made_by.items()}
        inputs = {k: conventions.artifact_type(source) for k, source in sources.items()}
        if item and not (item in stage.foreach and item in stage.outputs and stage.foreach_param):
            raise StgtError(f"{stage.name}: foreach item {item!r} needs an output of its name and foreach_param")
        own = foreach_outputs(stage, item)
        outputs = {k: conventions.artifact_type(k) for k in own}
        views = tuple(k for k in own if k in conventions.HTML_VIEWS)
        names = [*inputs, *outputs, *(conventions.view_name(k) for k in views)]
        clashes = {n for n in names if names.count(n) > 1 or n in RESERVED}
        if clashes:
            raise StgtError(f"{stage.name}: input/output names {sorted(clashes)} clash in its Kubeflow component")
        return cls(stage, pipeline_params(params, stage.params), inputs, sources, outputs, views, item)

    @classmethod
    def all_of(cls, stage: Stage, stages: Sequence[Stage], params: Params) -> list["StageInterface"]:
        """The stage's interface, or one per item of a foreach stage."""
        return [cls.of(stage, stages, params, item) for item in stage.foreach or ("",)]

    def param_values(self, args: dict) -> dict:
        """This component's param arguments from the pipeline's: a foreach item passes [item] for foreach_param."""
        values = {p.name: args[p.name] for p in self.params}
        if self.item:
            values[name_of(self.stage.foreach_param)] = [self.item]
        return values

    @property
    def writes_workspace(self) -> bool:
        return any(conventions.in_workspace(k) for k in self.outputs)

    @property
    def writes_only_workspace(self) -> bool:
        return all(conventions.in_workspace(k) for k in self.outputs)

    # -- source fragments -------------------------------------------------------------------------------------
    def param_signature(self) -> list[str]:
        return param_signature(self.params)

    def input_signature(self) -> list[str]:
        return [f"{k}: Input[{t.__name__}]" for k, t in self.inputs.items()]

    def output_signature(self) -> list[str]:
        return ["summary: Output[Metrics]", *(f"{k}: Output[{t.__name__}]" for k, t in self.outputs.items()),
                *(f"{conventions.view_name(k)}: Output[HTML]" for k in self.views)]

    def params_argument(self) -> str:
        return params_argument(self.params)

    @staticmethod
    def mapping(keys: Sequence[str], names: Sequence[str] | None = None) -> str:
        return "{" + ", ".join(f"{k!r}: {n}" for k, n in zip(keys, names or keys)) + "}"


def _source(name: str, doc: str, signature: list[str], module: str, function: str, arguments: dict[str, str],
            returns: str = "") -> str:
    call = codegen.call(function, arguments)
    return codegen.function_source(name, signature, doc, f"from {module} import {function}",
                                   "    return " + call.lstrip() if returns else call, returns)


def stage_component(iface: StageInterface, distributed: bool = False) -> PythonComponent:
    """`distributed`: takes `procs_per_node` and returns the stage summary (for publish_<stage>)."""
    s = iface.stage
    item = {"item": repr(iface.item)} if iface.item else {}
    procs = {"procs_per_node": "procs_per_node"} if distributed else {}
    source = _source(
        iface.name, f"{s.help} (item {iface.item})" if iface.item else s.help,
        ["workspace: str", *(["procs_per_node: int"] if distributed else []), *iface.param_signature(),
         *iface.input_signature(), *iface.output_signature()],
        "stgt_pipeline.kfp.run.stage_task", "run_stage_task",
        {"stage": repr(s.name), "workspace": "workspace", "params": iface.params_argument(),
         "inputs": iface.mapping(list(iface.inputs)), "outputs": iface.mapping(list(iface.outputs)),
         "views": iface.mapping(list(iface.views), [conventions.view_name(k) for k in iface.views]),
         "summary": "summary", **item, **procs}, returns="dict" if distributed else "")
    return codegen.lightweight_component(iface.name, source, images.image_for(s.resources.gpus))


def trainjob_component(iface: StageInterface) -> PythonComponent:
    """Launches the stage as a TrainJob on the CUDA image and returns its summary; runs on the CPU image."""
    s = iface.stage
    name = f"{s.name}_trainjob"
    secrets = "{mlflow_secret: %r, s3_secret: %r}" % (task_config.MLFLOW_SECRET_KEYS, task_config.S3_SECRET_KEYS)
    source = _source(
        name, f"Run {s.name} as a multi-node Kubeflow Trainer TrainJob and wait for it: {s.help}",
        ["workspace: str", *TRAINJOB_INPUTS, *iface.param_signature(), *iface.input_signature()],
        "stgt_pipeline.kfp.run.trainjob", "run_trainjob_task",
        {"stage": repr(s.name), "workspace": "workspace", "params": iface.params_argument(),
         "inputs": iface.mapping(list(iface.inputs)), "image": repr(images.cuda_image()), "num_nodes": "num_nodes",
         "num_proc_per_node": "procs_per_node", "timeout_s": "timeout_s", "task_config": "task_config",
         "secrets": secrets}, returns="dict")
    return codegen.lightweight_component(name, source, images.cpu_image(),
                                         task_config_passthroughs=TRAINJOB_PASSTHROUGHS)


def publish_component(iface: StageInterface) -> PythonComponent:
    """The outputs (workspace pointers) and summary of a stage that ran in another task."""
    s = iface.stage
    name = f"publish_{s.name}"
    source = _source(
        name, f"Publish the outputs of {s.name}, however it ran",
        ["workspace: str", "result: dict", "summary: Output[Metrics]",
         *(f"{k}: Output[{t.__name__}]" for k, t in iface.outputs.items())],
        "stgt_pipeline.kfp.run.stage_task", "publish_stage_task",
        {"stage": repr(s.name), "workspace": "workspace", "result": "result",
         "outputs": iface.mapping(list(iface.outputs)), "summary": "summary"})
    return codegen.lightweight_component(name, source, images.cpu_image())


def shard_component(iface: StageInterface) -> PythonComponent:
    s = iface.stage
    name = f"{s.name}_shard"
    source = _source(
        name, f"One shard of {s.name}: {s.help}",
        ["workspace: str", "shard: str", *iface.param_signature(), *iface.input_signature()],
        "stgt_pipeline.kfp.run.shards", "run_shard_task",
        {"stage": repr(s.name), "workspace": "workspace", "shard": "shard", "params": iface.params_argument(),
         "inputs": iface.mapping(list(iface.inputs))})
    return codegen.lightweight_component(name, source, images.image_for(s.resources.gpus))


def collect_component(iface: StageInterface) -> PythonComponent:
    """Named as the stage: downstream stages depend on it as they would on the unsharded stage."""
    s = iface.stage
    source = _source(
        s.name, f"Merge the shards of {s.name}: {s.help}",
        ["workspace: str", *iface.param_signature(), *iface.output_signature()],
        "stgt_pipeline.kfp.run.shards", "collect_shards_task",
        {"stage": repr(s.name), "workspace": "workspace", "params": iface.params_argument(),
         "outputs": iface.mapping(list(iface.outputs)),
         "views": iface.mapping(list(iface.views), [conventions.view_name(k) for k in iface.views]),
         "summary": "summary"})
    return codegen.lightweight_component(s.name, source, images.image_for(s.resources.gpus))


def check_shardable(iface: StageInterface) -> str:
    """The sharded input's key. Its manifest must travel as an artifact (the plan reads it) and the stage must
    write only to the workspace (its shards' outputs are merged there)."""
    key = iface.stage.sharding.input
    if key not in iface.sources or conventions.in_workspace(iface.sources[key]) or not iface.writes_only_workspace:
        raise StgtError(f"{iface.stage.name}: a sharded stage needs an artifact manifest input {key!r} and "
                        "workspace-only outputs")
    return key


def plan_component() -> PythonComponent:
    @dsl.component(base_image=images.cpu_image(), install_kfp_package=False)
    def plan_shards(manifest: Input[Dataset], num_shards: int) -> List[str]:
        """Split a manifest into at most num_shards contiguous blocks: returns shard specs 'i/n'."""
        from stgt_pipeline.kfp.run.shards import plan

        return plan(manifest.path, num_shards)

    return plan_shards


# --------------------------------------------------------------------------------------------------------------
# the MLflow parent run's two tasks (kfp.run.parent_run)


def open_run_component(params: Sequence[PipelineParam]) -> PythonComponent:
    """Takes every tunable, for the parent's params and params_hash; returns the parent run's id."""
    name = "open_mlflow_run"
    source = codegen.function_source(
        name, ["kfp_run_id: str", "kfp_run_name: str", *param_signature(params)],
        "Open the MLflow parent run of this pipeline run; returns its id ('' when tracking is off).",
        "from stgt_pipeline.kfp.run.parent_run import open_pipeline_run",
        "    return " + codegen.call("open_pipeline_run", {
            "run_id": "kfp_run_id", "run_name": "kfp_run_name", "params": params_argument(params)}).lstrip(),
        returns="str")
    return codegen.lightweight_component(name, source, images.cpu_image())


def finish_run_component() -> PythonComponent:
    @dsl.component(base_image=images.cpu_image(), install_kfp_package=False)
    def finish_run(status: dsl.PipelineTaskFinalStatus, kfp_run_id: str):
        """Mark the MLflow parent run FINISHED, FAILED or KILLED from the pipeline's final status."""
        from stgt_pipeline.kfp.run.parent_run import close_pipeline_run

        close_pipeline_run(kfp_run_id, status)

    return finish_run
