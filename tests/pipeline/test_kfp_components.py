"""Each Kubeflow component compiles on its own; the pieces they are generated from behave."""
from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from kfp import compiler

from stgt_pipeline import stages
from stgt_pipeline.components.extract_frames import merge as frame_shards
from stgt_pipeline.io.manifest import COLUMNS, read_manifest, write_manifest
from stgt_pipeline.kfp.build.components import (
    StageInterface,
    collect_component,
    finish_run_component,
    open_run_component,
    plan_component,
    publish_component,
    shard_component,
    stage_component,
    trainjob_component,
)
from stgt_pipeline.kfp.build.params import pipeline_params, run_arguments
from stgt_pipeline.kfp.conventions import name_of, nested
from stgt_pipeline.kfp.run import artifacts
from stgt_pipeline.kfp.run import shards as fanout
from stgt_pipeline.params import load_params
from tests.conftest import REPO_ROOT

PARAMS = load_params(REPO_ROOT / "params.yaml")


def interface(name: str) -> StageInterface:
    return StageInterface.of(stages.get(name), stages.STAGES, PARAMS)


def compile_alone(component, tmp_path: Path) -> dict:
    path = tmp_path / "component.yaml"
    compiler.Compiler().compile(component, str(path))
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("stage", [s.name for s in stages.STAGES])
def test_each_stage_component_compiles_with_its_stage_table_interface(stage, tmp_path):
    iface = interface(stage)
    spec = compile_alone(stage_component(iface), tmp_path)
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert set(params) == {"workspace", *(p.name for p in iface.params)}
    assert set(spec["root"]["inputDefinitions"].get("artifacts", {})) == set(iface.stage.inputs)
    outputs = spec["root"]["outputDefinitions"]["artifacts"]
    assert outputs["summary"]["artifactType"]["schemaTitle"] == "system.Metrics"
    assert set(iface.stage.outputs) <= set(outputs)
    container = next(iter(spec["deploymentSpec"]["executors"].values()))["container"]
    assert "pip install" not in json.dumps(container)  # runs on our image, nothing installed at run time


def test_typed_artifacts_for_small_outputs_and_html_view(tmp_path):
    prepare = compile_alone(stage_component(interface("prepare")), tmp_path)["root"]["outputDefinitions"]
    validate = compile_alone(stage_component(interface("validate")), tmp_path)["root"]["outputDefinitions"]
    assert prepare["artifacts"]["dataset"]["artifactType"]["schemaTitle"] == "system.Dataset"
    assert validate["artifacts"]["report_html"]["artifactType"]["schemaTitle"] == "system.HTML"


def test_shard_collect_plan_mlflow_run_and_trainjob_components_compile(tmp_path):
    iface, pretrain = interface("extract_frames"), interface("pretrain")
    for component in (shard_component(iface), collect_component(iface), plan_component(),
                      finish_run_component(), open_run_component(iface.params), trainjob_component(pretrain),
                      publish_component(pretrain), stage_component(pretrain, distributed=True)):
        assert compile_alone(component, tmp_path)["deploymentSpec"]["executors"]


def test_distributed_stage_component_takes_procs_and_returns_its_summary(tmp_path):
    spec = compile_alone(stage_component(interface("pretrain"), distributed=True), tmp_path)
    assert spec["root"]["inputDefinitions"]["parameters"]["procs_per_node"]["parameterType"] == "NUMBER_INTEGER"
    assert spec["root"]["outputDefinitions"]["parameters"]["Output"]["parameterType"] == "STRUCT"
    source = inspect.getsource(trainjob_component(interface("pretrain")).python_func)
    assert "run_trainjob_task(" in source and "'MLFLOW_TRACKING_URI'" in source and "stgt-cuda" in source


def test_generated_source_is_what_kfp_ships():
    component = stage_component(interface("validate"))
    source = inspect.getsource(component.python_func)
    assert source.startswith("def validate(") and "run_stage_task(" in source
    assert "'validate.duration_s.min': validate__duration_s__min," in source


@pytest.mark.parametrize("stage", [s.name for s in stages.STAGES if s.foreach])
def test_each_foreach_item_has_its_own_component_with_only_its_outputs(stage, tmp_path):
    ifaces = StageInterface.all_of(stages.get(stage), stages.STAGES, PARAMS)
    assert [i.item for i in ifaces] == list(stages.get(stage).foreach)
    for iface in ifaces:
        spec = compile_alone(stage_component(iface), tmp_path)
        assert set(spec["root"]["outputDefinitions"]["artifacts"]) == {iface.item, "summary"}
        assert iface.param_values({p.name: p.default for p in iface.params})[
            name_of(iface.stage.foreach_param)] == [iface.item]
        assert f"item={iface.item!r}" in inspect.getsource(stage_component(iface).python_func)


def test_a_preset_override_is_passed_as_every_key_of_its_section():
    known = [p.name for p in pipeline_params(PARAMS, ["prepare", "model"])]
    arguments = run_arguments(["model.preset=tiny", "prepare.num_videos=6"], known, REPO_ROOT / "params.yaml")
    tiny = load_params(REPO_ROOT / "params.yaml", ["model.preset=tiny"])
    assert arguments == {"prepare__num_videos": 6,
                         **{p.name: p.default for p in pipeline_params(tiny, ["model"])}}
    with pytest.raises(Exception, match="not a pipeline parameter"):
        run_arguments(["model.preset=tiny"], known)  # no params file to resolve it against


def test_params_flatten_to_typed_section_keys_and_nest_back():
    params = {p.key: p for p in pipeline_params(PARAMS, ["prepare", "validate"])}
    assert params["prepare.num_videos"].annotation is int and params["prepare.num_videos"].name == "prepare__num_videos"
    assert params["prepare.folder.root"].nullable and params["prepare.folder.root"].default == ""
    assert params["validate.required_splits"].annotation is list
    assert name_of("validate.duration_s.min") == "validate__duration_s__min"
    assert nested({"a.b.c": 1, "a.d": 2}) == {"a": {"b": {"c": 1}, "d": 2}}


def test_summary_numbers_flatten_for_metrics():
    assert artifacts.numeric_leaves({"videos": 3, "ok": True, "source": "x", "splits": {"train": 2}}) == {
        "videos": 3.0, "ok": 1.0, "splits.train": 2.0}


@pytest.mark.parametrize("rows,count", [(10, 3), (2, 4), (7, 7), (5, 1)])
def test_blocks_cover_every_row_once_in_order(rows, count):
    covered = [i for k in range(count) for i in range(rows)[fanout.block(rows, k, count)]]
    assert covered == list(range(rows))


def _manifest(tmp_path: Path, n: int) -> Path:
    rows = [{c: None for c in COLUMNS} | {"video_id": f"v{i}", "path": f"videos/v{i}.mp4", "split": "train",
                                          "captions": ["a"], "qa": [], "duration": 1.0, "fps": 8.0, "width": 32,
                                          "height": 32} for i in range(n)]
    out = tmp_path / "dataset"
    out.mkdir()
    write_manifest(pd.DataFrame(rows), out, out, "synthetic")
    return out


def test_plan_never_makes_empty_shards_and_sub_manifests_keep_the_data_root(tmp_path):
    dataset = _manifest(tmp_path, 3)
    assert fanout.plan(dataset, 8) == ["0/3", "1/3", "2/3"]
    sub = read_manifest(fanout.write_sub_manifest(dataset, 1, 2, tmp_path / "shard"))
    assert list(sub.table["video_id"]) == ["v2"]
    assert sub.data_root.resolve() == dataset.resolve()


def _frames_part(root: Path, ids: list[str], shard_size: int) -> dict[str, Path]:
    frames = root / "frames"
    (frames / "shards").mkdir(parents=True)
    rows = []
    for s in range(0, len(ids), shard_size):
        np.save(frames / "shards" / f"frames-{s // shard_size:05d}.npy", np.zeros((len(ids[s:s + shard_size]), 1)))
        rows += [{"video_id": v, "split": "train", "shard": f"shards/frames-{s // shard_size:05d}.npy",
                  "offset": o, "decoder": "decord"} for o, v in enumerate(ids[s:s + shard_size])]
    pd.DataFrame(rows).to_parquet(frames / "index.parquet", index=False)
    (frames / "quarantine.json").write_text("[]")
    (frames / "frames_suite.html").write_text("<p>ok</p>")
    (frames / "frames_suite.json").write_text('{"success": true}')
    return {"frames": frames}


def test_frame_shards_merge_renumbers_shards_and_keeps_index_order(tmp_path):
    parts = [_frames_part(tmp_path / "a", ["v0", "v1", "v2"], 2), _frames_part(tmp_path / "b", ["v3"], 2)]
    summaries = [{"by_split": {"train": {"videos": 3}}}, {"by_split": {"train": {"videos": 1}}}]
    out = tmp_path / "merged"
    summary = frame_shards.merge(PARAMS, parts, summaries, {"frames": out})
    index = pd.read_parquet(out / "index.parquet")
    assert list(index["video_id"]) == ["v0", "v1", "v2", "v3"]
    assert list(index["shard"]) == ["shards/frames-00000.npy"] * 2 + ["shards/frames-00001.npy",
                                                                      "shards/frames-00002.npy"]
    assert sorted(p.name for p in (out / "shards").iterdir()) == [f"frames-{i:05d}.npy" for i in range(3)]
    assert summary["videos"] == 4 and summary["shards"] == 3 and summary["by_split"] == {"train": {"videos": 4}}
