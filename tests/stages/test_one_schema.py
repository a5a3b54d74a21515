"""One definition of every training setting: the params sections of the training stages are the engine's own
TrainConfig, so a key left out of params.yaml reaches the optimizer as the schema's one default."""
from __future__ import annotations

import pytest

from stgt_model.config import TrainConfig
from stgt_model.engine import TrainResult
from stgt_pipeline import training
from stgt_pipeline.components.finetune import stage as finetune
from stgt_pipeline.components.pretrain import stage as pretrain
from stgt_pipeline.params import ContrastivePhase, Params, QAPhase
from tests.stages.tiny_corpus import corpus, tiny_params  # noqa: F401 - the session fixture

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
GIVEN = {"steps": 2}  # the only training keys the params file below sets


class Captured(Exception):
    pass


def capture_engine_config(monkeypatch, module, calls_before: int) -> list[TrainConfig]:
    """Replace `module.train` (stgt_model.engine.train as the module imported it) by a spy that lets the first
    `calls_before` engine calls return at once (earlier phases), then keeps the next call's config and stops the
    stage."""
    seen: list[TrainConfig] = []

    def spy(model, loss_fn, dataset, cfg, out_dir, **kwargs):
        seen.append(cfg)
        if len(seen) <= calls_before:
            return TrainResult(step=0, losses={}, checkpoint=out_dir, seconds=0.0)
        raise Captured

    monkeypatch.setattr(module, "train", spy)
    return seen


def test_the_phases_are_the_engine_config_and_repeat_none_of_its_fields():
    for phase in (ContrastivePhase, QAPhase):
        assert issubclass(phase, TrainConfig)
        for name, field in TrainConfig.model_fields.items():
            assert phase.model_fields[name].default == field.default, (phase.__name__, name)
            assert name not in vars(phase).get("__annotations__", {}), f"{phase.__name__} redefines {name}"


# (section, phase, the stage, the module whose `train` the phase reaches, engine calls made before it)
PHASES = [
    ("pretrain", "stage1", pretrain, training, 0),
    ("pretrain", "stage2", pretrain, training, 1),
    ("finetune", "retrieval", finetune, training, 0),
    ("finetune", "qa", finetune, finetune, 0),
]


@pytest.mark.parametrize("section, name, stage, module, calls_before", PHASES,
                         ids=[f"{p[0]}.{p[1]}" for p in PHASES])
def test_a_key_absent_from_params_reaches_the_engine_as_the_schema_default(corpus, tmp_path, monkeypatch,  # noqa: F811
                                                                         section, name, stage, module, calls_before):
    minimal = {**GIVEN, "losses": ["vtc"]} if name != "qa" else GIVEN
    if section == "pretrain":
        params = tiny_params(tmp_path, pretrain={name: minimal})
        inputs, outputs = corpus, {"checkpoint": tmp_path / "out"}
    else:
        params = tiny_params(tmp_path, finetune={"tasks": [name], name: minimal})
        pretrained = tmp_path / "pretrained"
        pretrained.mkdir()
        training.save_model(training.build_model(params.model), pretrained / training.MODEL_FILE)
        inputs = {**corpus, "pretrained": pretrained}
        outputs = {"qa": tmp_path / "qa", "retrieval": tmp_path / "retrieval"}
    schema_default = getattr(Params().section(section), name)
    # tiny_params' own keys of this phase are replaced wholesale by the minimal section above
    phase = getattr(params.section(section), name)
    assert phase.model_fields_set <= {*GIVEN, "losses"}
    seen = capture_engine_config(monkeypatch, module, calls_before)
    with pytest.raises(Captured):
        stage.run(params, inputs, outputs)
    engine_cfg = seen[calls_before]
    for field in TrainConfig.model_fields:
        if field in GIVEN:
            assert getattr(engine_cfg, field) == GIVEN[field]
            continue
        expected = getattr(schema_default, field)
        if field == "batch_size" and getattr(phase, "pair_twins", False):
            expected = max(expected // 2, 1)  # twin pairs: two clips an item, so half as many items a batch
        assert getattr(engine_cfg, field) == expected, field
        assert expected == TrainConfig.model_fields[field].default or field == "batch_size", field
