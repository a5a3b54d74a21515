import pytest
from pydantic import ValidationError

from stgt_model.config import (
    PRESETS,
    ModelConfig,
    parse_dotted_overrides,
    preset_config,
    resolve_model_config,
)


def test_every_preset_validates():
    for name in PRESETS:
        assert isinstance(preset_config(name), ModelConfig)


def test_default_preset_is_the_embedded_default():
    cfg = preset_config("default")
    assert cfg == ModelConfig()
    assert (cfg.backbone.name, cfg.backbone.frozen, cfg.backbone.image_size) == ("efficientnet_lite0", True, 224)
    assert (cfg.stgt.width, cfg.stgt.layers, cfg.stgt.heads, cfg.stgt.num_frames) == (256, 1, 4, 8)
    assert cfg.qformer.text_model == "minilm"
    assert (cfg.qformer.hidden_size, cfg.qformer.num_layers, cfg.qformer.max_text_len) == (384, 6, 32)
    assert 8 <= cfg.qformer.num_query_tokens <= 16
    assert cfg.embed_dim == 256 and cfg.temporal == "stgt"


def test_paper_preset_matches_the_reference():
    cfg = preset_config("paper")
    assert cfg.backbone.name == "hf_vision"
    assert (cfg.stgt.width, cfg.stgt.layers, cfg.stgt.heads, cfg.stgt.num_frames, cfg.stgt.sim_threshold) == (
        1408,
        1,
        16,
        8,
        0.5,
    )
    q = cfg.qformer
    assert (q.hidden_size, q.num_layers, q.num_heads, q.num_query_tokens, q.cross_attention_freq) == (
        768,
        12,
        12,
        32,
        2,
    )
    assert cfg.embed_dim == 256


def test_official_loss_constants_are_the_defaults():
    loss = ModelConfig().loss
    assert (loss.vtc_label_smoothing, loss.vtg_label_smoothing) == (0.1, 0.1)
    assert (loss.csal_scale, loss.csal_floor, loss.csal_smoothing) == (5.0, 0.05, 0.01)
    assert (loss.temp_init, loss.temp_clamp) == (0.07, False)
    assert (loss.weights.vtc, loss.weights.csal, loss.weights.vtm, loss.weights.vtg) == (1.0, 1.0, 1.0, 1.0)


def test_unknown_keys_fail_with_their_path():
    with pytest.raises(ValidationError, match="stgt.layerz"):
        preset_config("tiny", {"stgt": {"layerz": 2}})
    with pytest.raises(ValidationError, match="extra"):
        ModelConfig.model_validate({"qformer": {"text_modle": "random"}})


def test_bad_values_fail():
    with pytest.raises(ValidationError, match="not divisible"):
        preset_config("tiny", {"stgt": {"heads": 3}})
    with pytest.raises(ValidationError):
        preset_config("tiny", {"temporal": "lstm"})
    with pytest.raises(ValueError, match="unknown model preset"):
        preset_config("huge")


def test_overrides_merge_onto_the_preset():
    cfg = resolve_model_config({"preset": "tiny", "stgt": {"layers": 2}, "loss": {"weights": {"vtm": 0.5}}})
    assert cfg.stgt.layers == 2
    assert cfg.stgt.width == PRESETS["tiny"]["stgt"]["width"]  # the rest of the preset's section survives
    assert cfg.loss.weights.vtm == 0.5 and cfg.loss.weights.vtg == 1.0
    assert resolve_model_config("tiny") == preset_config("tiny")
    assert resolve_model_config(cfg) is cfg


def test_dotted_overrides_parse_json_values():
    overrides = parse_dotted_overrides(["stgt.layers=2", "qformer.text_model=random", "loss.temp_clamp=true"])
    assert overrides == {"stgt": {"layers": 2}, "qformer": {"text_model": "random"}, "loss": {"temp_clamp": True}}
    with pytest.raises(ValueError, match="dotted.key=value"):
        parse_dotted_overrides(["stgt.layers"])
