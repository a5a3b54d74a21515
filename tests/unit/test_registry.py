from stgt_pipeline import dvc_yaml as dvcgen
from stgt_pipeline import stages
from tests.conftest import REPO_ROOT


def test_dvc_yaml_is_generated_from_registry():
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
