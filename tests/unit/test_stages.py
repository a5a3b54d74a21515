import pytest

from stgt_pipeline import dvc_yaml as dvcgen
from stgt_pipeline import stages
from tests.conftest import REPO_ROOT


def test_dvc_yaml_is_generated_from_the_stage_table():
    assert dvcgen.is_current(REPO_ROOT / "dvc.yaml"), "dvc.yaml drifted from the stage table: run `stgt dvc-yaml`"


def test_stages_are_in_dependency_order_and_inputs_are_produced():
    seen: set[str] = set()
    produced = {p for s in stages.STAGES for p in s.outputs.values()}
    for stage in stages.STAGES:
        assert set(stage.upstream) <= seen, f"{stage.name} runs before its inputs' producers"
        assert set(stage.inputs.values()) <= produced
        seen.add(stage.name)
    assert [s.name for s in stages.STAGES][:3] == ["prepare", "validate", "extract_frames"]


def test_every_stage_module_has_run_and_declared_params_exist():
    from stgt_pipeline.params import Params

    for stage in stages.STAGES:
        assert callable(getattr(stage.load(), "run", None)), stage.name
        for section in stage.params:
            assert Params().section(section) is not None


def test_one_lookup_says_which_stage_makes_a_path():
    stage, key = stages.producer_of("data/frames")
    assert (stage.name, key) == ("extract_frames", "frames")
    assert stages.producer_of("data/not_made_by_anyone") is None
    assert stages.get("build_graphs").upstream == ["extract_frames", "prepare"]


def test_dvc_deps_are_the_stage_folder_and_its_code_found_by_import(tmp_path):
    deps = dvcgen.code_deps(stages.get("prepare"), REPO_ROOT)
    assert deps[0] == "components/prepare" and "stgt_pipeline/sources" in deps and "stgt_pipeline/io/manifest.py" in deps
    with pytest.raises(ValueError, match="outside the project"):
        stages.source_path("stgt_pipeline.training", tmp_path)
    with pytest.raises(ModuleNotFoundError, match="no_such_module"):
        stages.source_path("stgt_pipeline.no_such_module", REPO_ROOT)
