"""The compiled Kubeflow pipeline against the stage table, dvc.yaml and the checked-in golden file."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable

import pytest
import yaml

from stgt_pipeline import stages
from stgt_pipeline.errors import StgtError
from stgt_pipeline.kfp import conventions
from stgt_pipeline.kfp.build import task_config
from stgt_pipeline.pipelines.stgt_pipeline import COMPILED, compile_pipeline
from stgt_pipeline.stages import Resources, Stage
from tests.conftest import REPO_ROOT

PARAMS = REPO_ROOT / "params.yaml"
SEPARATOR = "__"
FAKE_TRAIN = Stage(name="fake_train", help="A GPU training stage that exists only in this test.",
                   params=("extract_frames",), inputs={"frames": "data/frames"},
                   outputs={"checkpoint": "models/fake"}, resources=Resources(cpu="8", memory="32Gi", gpus=2),
                   cacheable=False)


# -- reading a compiled spec back ---------------------------------------------------------------------------------
def load(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pipeline spec, kubernetes platform spec) of a compiled pipeline file."""
    docs = list(yaml.safe_load_all(path.read_text()))
    return docs[0], docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def all_tasks(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every task of every DAG (root, exit handler, loops) by name."""
    dags = [spec["root"]["dag"], *(c["dag"] for c in spec["components"].values() if "dag" in c)]
    return {name: task for dag in dags for name, task in dag["tasks"].items()}


def units(stages: Iterable[Stage] = stages.STAGES) -> dict[str, tuple[Stage, str]]:
    """dvc.yaml stage name -> (stage, item): a foreach stage is one unit per item, `finetune@qa`."""
    return {f"{s.name}@{i}" if i else s.name: (s, i) for s in stages for i in (s.foreach or ("",))}


def task_name(unit: str) -> str:
    """The pipeline task of a dvc.yaml stage: `extract_frames` -> extract-frames, `finetune@qa` -> finetune-qa."""
    return unit.replace("@", "-").replace("_", "-")


def stage_tasks(spec: dict[str, Any], stages: Iterable[str]) -> dict[str, dict[str, Any]]:
    """dvc.yaml stage name (a stage's, or `<stage>@<item>`) -> its task."""
    tasks = all_tasks(spec)
    return {unit: tasks[task_name(unit)] for unit in stages if task_name(unit) in tasks}


def enclosing(spec: dict[str, Any]) -> dict[str, str]:
    """Task -> the task running the sub-DAG it sits in (exit handler, loop, condition), for nested tasks."""
    tasks = all_tasks(spec)
    runs = {t["componentRef"]["name"]: name for name, t in tasks.items()}
    return {name: runs[c] for c, comp in spec["components"].items() if "dag" in comp and c in runs
            for name in comp["dag"]["tasks"]}


def stage_upstream(spec: dict[str, Any], stages: Iterable[str]) -> dict[str, set[str]]:
    """Stage -> the stages it depends on directly, walking through helper tasks (shard plans, loops, publish
    tasks) and into the sub-DAGs (condition branches) a dependency runs; a task nested in a condition depends on
    what its condition group depends on."""
    tasks = all_tasks(spec)
    parent = enclosing(spec)
    unit_of = {task_name(u): u for u in stages if task_name(u) in tasks}
    inside = {name: [n for n, p in parent.items() if p == name] for name in tasks}

    def units_in(task: str) -> set[str]:
        found = {unit_of[task]} if task in unit_of else set()
        for child in inside[task]:
            found |= units_in(child)
        return found

    def upstream(task: str, seen: set[str]) -> set[str]:
        found: set[str] = set()
        for dep in tasks[task].get("dependentTasks", []):
            if dep in unit_of:
                found.add(unit_of[dep])
            elif dep not in seen:
                seen.add(dep)
                found |= units_in(dep) or upstream(dep, seen)
        if task in parent and parent[task] not in seen:  # a condition group's own dependencies
            seen.add(parent[task])
            found |= upstream(parent[task], seen)
        return found

    return {unit: upstream(task, set()) for task, unit in unit_of.items()}


def table_upstream(stages: Iterable[Stage] = stages.STAGES) -> dict[str, set[str]]:
    """Each unit's producers per the stage table: a foreach item produces the outputs keyed by its item."""
    stages = list(stages)
    made_by = {path: f"{s.name}@{key}" if key in s.foreach else s.name for s in stages
               for key, path in s.outputs.items()}
    return {unit: {made_by[p] for p in s.inputs.values()} for unit, (s, _) in units(stages).items()}


def param_sections(spec: dict[str, Any], task: dict[str, Any]) -> set[str]:
    """The params.yaml sections a task takes (its `section__key` inputs)."""
    inputs = spec["components"][task["componentRef"]["name"]].get("inputDefinitions", {}).get("parameters", {})
    return {name.split(SEPARATOR)[0] for name in inputs if SEPARATOR in name}


def executor_of(spec: dict[str, Any], task: dict[str, Any]) -> str:
    return spec["components"][task["componentRef"]["name"]]["executorLabel"]


# -- fixtures -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> tuple[dict[str, Any], dict[str, Any]]:
    return load(compile_pipeline(tmp_path_factory.mktemp("kfp") / "p.yaml", PARAMS))


@pytest.fixture(scope="module")
def with_gpu_stage(tmp_path_factory) -> tuple[dict[str, Any], dict[str, Any]]:
    path = tmp_path_factory.mktemp("kfp") / "gpu.yaml"
    return load(compile_pipeline(path, PARAMS, stages=(*stages.STAGES, FAKE_TRAIN)))


def dvc_upstream() -> tuple[list[str], dict[str, set[str]], dict[str, set[str]]]:
    """dvc.yaml's stage order, each stage's producing stages, and its params sections."""
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    # A foreach stage is rendered by DVC as one stage per item, `<stage>@<item>`, as the pipeline has one task each.
    stages = {unit: entry for name, s in stages.items() for unit, entry in (
        [(f"{name}@{item}", yaml.safe_load(yaml.safe_dump(s["do"]).replace("${item}", item))) for item in s["foreach"]]
        if "foreach" in s else [(name, s)])}
    made_by = {out: name for name, s in stages.items() for out in s.get("outs", [])}
    upstream = {name: {made_by[d] for d in s.get("deps", []) if d in made_by} for name, s in stages.items()}
    params = {name: {p.split(".")[0] if isinstance(p, str) else next(iter(p)) for p in s.get("params", [])}
              for name, s in stages.items()}
    return list(stages), upstream, params


# -- one source of truth ------------------------------------------------------------------------------------------
def test_every_stage_is_a_task_with_the_stage_table_dependencies(compiled):
    spec, _ = compiled
    names = list(units())
    assert set(stage_tasks(spec, names)) == set(names)
    assert stage_upstream(spec, names) == table_upstream()
    # Merging a foreach stage's items gives back the stage table's stage-level dependencies.
    merged = {s.name: {u.split("@")[0] for unit in units([s]) for u in table_upstream()[unit]}
              for s in stages.STAGES}
    assert merged == {s.name: set(s.upstream) for s in stages.STAGES}


def test_dvc_yaml_and_pipeline_have_the_same_stages_order_dependencies_and_params(compiled):
    spec, _ = compiled
    dvc_order, dvc_deps, dvc_params = dvc_upstream()
    assert dvc_order == list(units())
    assert stage_upstream(spec, dvc_order) == dvc_deps
    tasks = stage_tasks(spec, dvc_order)
    assert {name: param_sections(spec, t) for name, t in tasks.items()} == dvc_params


def test_checked_in_compiled_pipeline_is_current(tmp_path, monkeypatch):
    monkeypatch.delenv("STGT_IMAGE_CPU", raising=False)
    monkeypatch.delenv("STGT_IMAGE_CUDA", raising=False)
    fresh = compile_pipeline(tmp_path / "fresh.yaml", PARAMS).read_text()
    assert COMPILED.read_text() == fresh, "pipelines/stgt_pipeline.yaml is stale: run `stgt pipeline compile`"


def test_pipeline_parameters_mirror_params_yaml_keys(compiled):
    spec, _ = compiled
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert inputs["prepare__num_videos"]["defaultValue"] == yaml.safe_load(PARAMS.read_text())["prepare"]["num_videos"]
    assert inputs["validate__duration_s__min"]["parameterType"] == "NUMBER_DOUBLE"
    assert inputs["prepare__folder__root"]["defaultValue"] == ""  # null -> "" (KFP has no null)
    assert {"fanout_shards", "mlflow_secret", "s3_secret", "gpu_node_selector", "gpu_tolerations"} <= set(inputs)


# -- cluster settings ---------------------------------------------------------------------------------------------
def test_gpu_stage_requests_gpus_cpu_memory_shm_and_placement(with_gpu_stage):
    spec, executors = with_gpu_stage
    task = stage_tasks(spec, ["fake_train"])["fake_train"]
    label = executor_of(spec, task)
    container = spec["deploymentSpec"]["executors"][label]["container"]
    resources = container["resources"]
    accelerator = resources["accelerator"]
    assert (accelerator["resourceCount"], accelerator["resourceType"]) == ("2", task_config.GPU_RESOURCE)
    assert (resources["resourceCpuLimit"], resources["resourceMemoryLimit"]) == ("8", "32Gi")
    assert "stgt-cuda" in container["image"]
    k8s = executors[label]
    assert k8s["emptyDirMounts"] == [{"medium": "Memory", "mountPath": "/dev/shm", "volumeName": "dshm"}]
    assert k8s["nodeSelector"]["nodeSelectorJson"]["componentInputParameter"].endswith("gpu_node_selector")
    assert k8s["tolerations"][0]["tolerationJson"]["componentInputParameter"].endswith("gpu_tolerations")


def test_cpu_stages_get_their_stage_table_resources_and_no_gpu(compiled):
    spec, executors = compiled
    cpu_units = [u for u, (s, _) in units().items() if not s.resources.gpus]
    assert cpu_units  # the stage table decides which stages are GPU stages (pretrain, finetune, evaluate)
    for unit in cpu_units:
        stage = units()[unit][0]
        label = executor_of(spec, stage_tasks(spec, [unit])[unit])
        container = spec["deploymentSpec"]["executors"][label]["container"]
        assert "accelerator" not in container["resources"]
        assert container["resources"]["resourceMemoryRequest"] == stage.resources.memory
        assert "stgt-cpu" in container["image"] and "nodeSelector" not in executors[label]


def test_gpu_stages_request_their_gpus_on_the_cuda_image(compiled):
    spec, executors = compiled
    gpu_units = {u: s for u, (s, _) in units().items() if s.resources.gpus}
    for unit, stage in gpu_units.items():  # every item of a foreach GPU stage included
        label = executor_of(spec, stage_tasks(spec, [unit])[unit])
        resources = spec["deploymentSpec"]["executors"][label]["container"]["resources"]
        # A multi-node stage's pod takes its GPUs per node from a pipeline parameter (torchrun over them).
        gpus = gpu_parameter(stage.name) if stage.multi_node else str(stage.resources.gpus)
        assert resources["accelerator"]["resourceCount"] == gpus, unit
        assert (resources["resourceCpuLimit"], resources["resourceMemoryLimit"]) == (stage.resources.cpu,
                                                                                      stage.resources.memory)
        assert "stgt-cuda" in spec["deploymentSpec"]["executors"][label]["container"]["image"]
        assert executors[label]["emptyDirMounts"][0]["mountPath"] == "/dev/shm"


def test_foreach_stage_is_one_task_per_item_narrowing_its_list_param(compiled):
    spec, _ = compiled
    foreach = [s for s in stages.STAGES if s.foreach]
    assert foreach  # finetune: one task per task (retrieval, qa), as dvc.yaml's finetune@retrieval, finetune@qa
    tasks = all_tasks(spec)
    for stage in foreach:
        assert task_name(stage.name) not in tasks  # no task runs every item
        narrowed = stage.foreach_param.replace(".", SEPARATOR)
        for item in stage.foreach:
            task = tasks[task_name(f"{stage.name}@{item}")]
            assert task["inputs"]["parameters"][narrowed] == {"runtimeValue": {"constant": [item]}}
            outputs = spec["components"][task["componentRef"]["name"]]["outputDefinitions"]["artifacts"]
            assert set(outputs) == {item, "summary"}  # only the outputs keyed by its item
        # Consumers wait for the items whose outputs they read (evaluate and register: all of them).
        for consumer in stages.STAGES:
            read = {item for item in stage.foreach if stage.outputs[item] in consumer.inputs.values()}
            for unit in units([consumer]):
                deps = set(tasks[task_name(unit)].get("dependentTasks", []))
                assert {task_name(f"{stage.name}@{i}") for i in stage.foreach} & deps == {
                    task_name(f"{stage.name}@{i}") for i in read}, unit


def test_secrets_and_run_id_are_env_on_every_stage_shard_launcher_and_mlflow_task(compiled):
    spec, executors = compiled
    # Helpers that touch neither MLflow nor S3: shard plans, publish tasks.
    labels = {executor_of(spec, t) for n, t in all_tasks(spec).items() if "dag" not in spec["components"][
        t["componentRef"]["name"]] and not n.startswith(("plan-shards", "publish-"))}
    assert labels >= {"exec-prepare", "exec-validate", "exec-extract-frames", "exec-extract-frames-shard",
                      "exec-finish-run", "exec-open-mlflow-run", "exec-pretrain", "exec-pretrain-trainjob"}
    for label in labels:
        mounted = {s["secretNameParameter"]["componentInputParameter"].split("--")[-1]:
                   {k["envVar"] for k in s["keyToEnv"]} for s in executors[label]["secretAsEnv"]}
        assert mounted == {"mlflow_secret": set(task_config.MLFLOW_SECRET_KEYS),
                           "s3_secret": set(task_config.S3_SECRET_KEYS)}, label
        # The run id from the pod label, not an input: an input would change cacheable tasks' keys every run.
        assert executors[label]["fieldPathAsEnv"] == [
            {"fieldPath": f"metadata.labels['{conventions.RUN_ID_LABEL}']", "name": conventions.RUN_ID_ENV}], label


def test_caching_follows_the_stage_table_and_is_off_for_workspace_writers_and_mutable_state(with_gpu_stage):
    spec, _ = with_gpu_stage
    enabled = {n: t.get("cachingOptions", {}).get("enableCache", False) for n, t in all_tasks(spec).items()}
    assert enabled["prepare"] and enabled["validate"]  # cacheable, outputs are artifacts
    assert not enabled["extract-frames"] and not enabled["extract-frames-shard"]  # per-run workspace
    assert not enabled["fake-train"]  # stage table: cacheable=False
    assert not enabled["finish-run"]
    for unit, (stage, _) in units().items():
        if not stage.cacheable:  # register: the MLflow registry is state outside the pipeline
            assert not enabled[task_name(unit)], unit


def test_sharded_stage_fans_out_over_a_plan_and_is_collected(compiled):
    spec, _ = compiled
    tasks = all_tasks(spec)
    loop = next(n for n in tasks if n.startswith("for-loop"))
    assert "plan-shards" in tasks[loop]["dependentTasks"]
    assert tasks[loop]["parameterIterator"]["items"]["inputParameter"].endswith("plan-shards-Output")
    assert tasks["extract-frames"]["dependentTasks"] == [loop]


def test_stage_whose_input_no_stage_produces_is_refused(tmp_path):
    orphan = replace(FAKE_TRAIN, name="orphan", inputs={"frames": "data/nowhere"})
    with pytest.raises(StgtError, match="produced by no stage"):
        compile_pipeline(tmp_path / "p.yaml", PARAMS, stages=(*stages.STAGES, orphan))


# -- multi-node training and the MLflow parent run ------------------------------------------------------------------
def gpu_parameter(stage: str) -> str:
    return f"{{{{$.inputs.parameters['pipelinechannel--{stage}_procs_per_node']}}}}"


def test_multi_node_stage_branches_to_a_trainjob_launcher_or_its_own_pod(compiled):
    spec, executors = compiled
    tasks, parent = all_tasks(spec), enclosing(spec)
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    multi_node = [s.name for s in stages.STAGES if s.multi_node]
    assert multi_node == ["pretrain"]
    for stage in multi_node:
        name = task_name(stage)
        assert inputs[f"{stage}_num_nodes"]["defaultValue"] == 1
        assert inputs[f"{stage}_procs_per_node"]["defaultValue"] == 1
        launcher, single = tasks[f"{name}-trainjob"], tasks[name]
        # Two branches of one If/Else on the node count.
        branches = {parent[f"{name}-trainjob"]: "launcher", parent[name]: "single"}
        conditions = {branches[t]: tasks[t]["triggerPolicy"]["condition"] for t in branches}
        assert parent[parent[f"{name}-trainjob"]] == parent[parent[name]]
        assert conditions["launcher"] == f"int(inputs.parameter_values['pipelinechannel--{stage}_num_nodes']) > 1"
        assert conditions["single"] == f"!({conditions['launcher']})"
        # Both ask for GPUs per node from procs_per_node; the launcher forwards them (and placement) to the TrainJob.
        for task in (launcher, single):
            label = executor_of(spec, task)
            container = spec["deploymentSpec"]["executors"][label]["container"]
            assert container["resources"]["accelerator"]["resourceCount"] == gpu_parameter(stage)
            assert executors[label]["tolerations"] and executors[label]["nodeSelector"]
            assert task["cachingOptions"] == {}  # off: both write the run's workspace
        launcher_component = spec["components"][launcher["componentRef"]["name"]]
        assert "stgt-cpu" in spec["deploymentSpec"]["executors"][executor_of(spec, launcher)]["container"]["image"]
        assert {"num_nodes", "procs_per_node", "timeout_s", "task_config"} <= set(
            launcher_component["inputDefinitions"]["parameters"])
        passthroughs = {p["field"]: p.get("applyToTask", False) for p in launcher_component["taskConfigPassthroughs"]}
        assert passthroughs["RESOURCES"] is False and passthroughs["KUBERNETES_VOLUMES"] is True
        assert single["inputs"]["parameters"]["procs_per_node"]["componentInputParameter"].endswith(
            f"{stage}_procs_per_node")
        # Downstream stages read the outputs through the publish task, which takes whichever branch's summary ran.
        publish = tasks[f"publish-{name}"]
        assert publish["dependentTasks"] == [parent[parent[name]]]
        assert "oneof" in json.dumps(publish["inputs"]["parameters"]["result"])


def test_a_first_task_opens_the_mlflow_parent_run_and_the_exit_task_closes_it(compiled):
    spec, _ = compiled
    tasks = all_tasks(spec)
    opener = tasks["open-mlflow-run"]
    assert "dependentTasks" not in opener and opener["cachingOptions"] == {}
    given = opener["inputs"]["parameters"]
    assert given["kfp_run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
    assert given["kfp_run_name"]["runtimeValue"]["constant"] == "{{$.pipeline_job_name}}"
    assert "pretrain__stage1__steps" in given  # every tunable, for the parent's params and params_hash
    sources = [task_name(u) for u, (s, _) in units().items() if not s.inputs]
    assert sources and all("open-mlflow-run" in tasks[t]["dependentTasks"] for t in sources)
    finish = tasks["finish-run"]
    assert finish["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert finish["inputs"]["parameters"]["kfp_run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
    assert "status" in finish["inputs"]["parameters"]
