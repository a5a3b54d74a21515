"""How a stage becomes tasks of the pipeline, as its stage-table entry says: one task (or one per foreach item), a
fan-out over shards, or a multi-node branch.

Each stage folder's component.py holds a `StageComponent` for its stage: the pipeline adds the stage through it,
and a user can build the stage's components alone to use them in a pipeline of their own:

    from stgt_pipeline.components.validate.component import component
    validate, = component.build("params.yaml")     # kfp PythonComponents, parameter defaults from params.yaml
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from kfp import dsl
from kfp.dsl import PipelineTask
from kfp.dsl.python_component import PythonComponent

from stgt_pipeline import stages
from stgt_pipeline.errors import StgtError
from stgt_pipeline.kfp.build import distributed, task_config
from stgt_pipeline.kfp.build.components import (
    StageInterface,
    check_shardable,
    collect_component,
    plan_component,
    publish_component,
    shard_component,
    stage_component,
    trainjob_component,
)
from stgt_pipeline.params import Params, load_params


@dataclass(frozen=True)
class StageComponent:
    stage_name: str

    @property
    def stage(self) -> stages.Stage:
        return stages.get(self.stage_name)

    def interfaces(self, params: Params, table: Sequence[stages.Stage] = stages.STAGES) -> list[StageInterface]:
        """The stage's interface, or one per item of a foreach stage."""
        return StageInterface.all_of(self.stage, table, params)

    def build(self, params_path: str = "params.yaml") -> list[PythonComponent]:
        """Every component the stage runs as, parameter defaults from `params_path`."""
        params = load_params(params_path)
        built: list[PythonComponent] = []
        for iface in self.interfaces(params):
            if self.stage.multi_node:
                built += [stage_component(iface, distributed=True), trainjob_component(iface),
                          publish_component(iface)]
            elif self.stage.sharding:
                built += [plan_component(), shard_component(iface), collect_component(iface)]
            else:
                built.append(stage_component(iface))
        return built

    def add(self, iface: StageInterface, workspace: str, args: dict[str, Any], channels: dict[str, Any],
            cluster: task_config.ClusterParams) -> PipelineTask:
        """Add the stage's (or foreach item's) task; `channels` maps each output path made so far to its output.
        Returns the task whose outputs downstream stages read."""
        stage = iface.stage
        params = iface.param_values(args)
        try:
            inputs = {k: channels[path] for k, path in stage.inputs.items()}
        except KeyError as exc:
            raise StgtError(f"{stage.name}: listed before the stage producing its input ({exc})") from None
        if stage.multi_node:
            return distributed.add_stage(iface, workspace, params, inputs, args, cluster)
        if stage.sharding is None:
            task = stage_component(iface)(workspace=workspace, **params, **inputs)
            return task_config.configure_stage_task(task, stage.resources, cluster,
                                                    cacheable=stage.cacheable and not iface.writes_workspace)
        if iface.item:
            raise StgtError(f"{stage.name}: a stage cannot be both sharded and foreach")
        # Shards and their collect write to the per-run workspace, which a later run's cache hit would not have.
        plan = plan_component()(manifest=inputs[check_shardable(iface)], num_shards=args["fanout_shards"])
        plan.set_caching_options(enable_caching=False)
        with dsl.ParallelFor(plan.output) as shard:
            shard_task = shard_component(iface)(workspace=workspace, shard=shard, **params, **inputs)
            task_config.configure_stage_task(shard_task, stage.resources, cluster, cacheable=False)
        collect = collect_component(iface)(workspace=workspace, **params).after(shard_task)
        return task_config.configure_stage_task(collect, stage.resources, cluster, cacheable=False)
