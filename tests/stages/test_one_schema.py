"""One definition of every training setting: the params sections of the training stages are the engine's own
TrainConfig, so a key left out of params.yaml reaches the optimizer as the schema's one default."""
from __future__ import annotations

import pytest

from stgt_model.config import TrainConfig
from stgt_pipeline import training
from stgt_pipeline.components.finetune import stage as finetune
from stgt_pipeline.components.pretrain import stage as pretrain
from stgt_pipeline.params import ContrastivePhase, Params, QAPhase
from tests.stages.tiny_corpus import corpus, tiny_params  # noqa: F401 - the session fixture

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
GIVEN = {"steps": 2}  # the only training keys the params file below sets


class Captured(Exception):
    pass


def capture_engine_config(monkeypatch, module) -> list[TrainConfig]:
    """Replace `module.train` (stgt_model.engine.train as the module imported it) by a spy that keeps its config
    and stops the stage."""
    seen: list[TrainConfig] = []

    def spy(model, loss_fn, dataset, cfg, out_dir, **kwargs):
        seen.append(cfg)
        raise Captured

    monkeypatch.setattr(module, "train", spy)
    return seen


def test_the_phases_are_the_engine_config_and_repeat_none_of_its_fields():
    for phase in (ContrastivePhase, QAPhase):
        assert issubclass(phase, TrainConfig)
        for name, field in TrainConfig.model_fields.items():
            assert phase.model_fields[name].default == field.default, (phase.__name__, name)
            assert name not in vars(phase).get("__annotations__", {}), f"{phase.__name__} redefines {name}"


@pytest.mark.parametrize("section, stage, module", [
    ("pretrain", pretrain, training),
    ("finetune", finetune, finetune),
], ids=["pretrain stage1 (video-text phase)", "finetune qa"])
def test_a_key_absent_from_params_reaches_the_engine_as_the_schema_default(corpus, tmp_path, monkeypatch,  # noqa: F811
                                                                         section, stage, module):
    if section == "pretrain":
        params = tiny_params(tmp_path, pretrain={"stage1": {**GIVEN, "losses": ["vtc"]}})
        inputs, outputs = corpus, {"checkpoint": tmp_path / "out"}
        schema_default = Params().pretrain.stage1
    else:
        params = tiny_params(tmp_path, finetune={"tasks": ["qa"], "qa": GIVEN})
        pretrained = tmp_path / "pretrained"
        pretrained.mkdir()
        training.save_model(training.build_model(params.model), pretrained / training.MODEL_FILE)
        inputs = {**corpus, "pretrained": pretrained}
        outputs = {"qa": tmp_path / "qa", "retrieval": tmp_path / "retrieval"}
        schema_default = Params().finetune.qa
    # tiny_params' own training keys are replaced wholesale by the minimal section above
    phase = params.pretrain.stage1 if section == "pretrain" else params.finetune.qa
    assert phase.model_fields_set <= {*GIVEN, "losses"}
    seen = capture_engine_config(monkeypatch, module)
    with pytest.raises(Captured):
        stage.run(params, inputs, outputs)
    engine_cfg = seen[0]
    for name in TrainConfig.model_fields:
        if name in GIVEN:
            assert getattr(engine_cfg, name) == GIVEN[name]
            continue
        expected = getattr(schema_default, name)
        if name == "batch_size" and getattr(phase, "pair_twins", False):
            expected = max(expected // 2, 1)  # twin pairs: two clips an item, so half as many items a batch
        assert getattr(engine_cfg, name) == expected, name
        assert expected == TrainConfig.model_fields[name].default or name == "batch_size", name
