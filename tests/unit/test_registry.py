from components import dvcgen, registry
from tests.conftest import REPO_ROOT


def test_dvc_yaml_is_generated_from_registry():
    assert dvcgen.is_current(REPO_ROOT / "dvc.yaml"), "dvc.yaml drifted from components/registry.py: run `stgt dvc-yaml`"


def test_stages_are_in_dependency_order_and_inputs_are_produced():
    seen: set[str] = set()
    produced = {p for s in registry.STAGES for p in s.outputs.values()}
    for stage in registry.STAGES:
        assert set(stage.upstream) <= seen, f"{stage.name} runs before its inputs' producers"
        assert set(stage.inputs.values()) <= produced
        seen.add(stage.name)
    assert [s.name for s in registry.STAGES][:3] == ["prepare", "validate", "extract_frames"]


def test_every_stage_module_has_run_and_declared_params_exist():
    from components.config import Params

    for stage in registry.STAGES:
        assert callable(getattr(stage.load(), "run", None)), stage.name
        for section in stage.params:
            assert Params().section(section) is not None
