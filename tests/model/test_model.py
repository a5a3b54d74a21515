import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

from stgt_model.config import preset_config
from stgt_model.factory import count_parameters, create_model, parameter_breakdown
from stgt_model.qformer import minilm_path, read_bert_state_dict

BATCH = 4


def tiny_model(**overrides):
    torch.manual_seed(0)
    return create_model(preset_config("tiny", overrides))


def text_batch(cfg, batch=BATCH):
    torch.manual_seed(1)
    ids = torch.randint(1000, 2000, (batch, cfg.qformer.max_text_len))
    ids[:, 0] = 101
    mask = torch.ones_like(ids)
    ids[0, 6:], mask[0, 6:] = 0, 0  # one padded caption
    return ids, mask


def frames_for(cfg, batch=BATCH):
    return torch.randn(batch, cfg.stgt.num_frames, 3, cfg.backbone.image_size, cfg.backbone.image_size)


@pytest.mark.parametrize("losses", [("vtc", "vtm", "vtg"), ("csal", "vtm", "vtg")])
def test_forward_backward_reaches_every_trainable_parameter(losses):
    model = tiny_model()
    cfg = model.config
    ids, mask = text_batch(cfg)
    out = model(ids, mask, frames=frames_for(cfg), losses=losses)
    assert set(out) == {*losses, "total"}
    assert all(torch.isfinite(value) for value in out.values())
    assert torch.allclose(out["total"], sum(out[name] for name in losses))
    out["total"].backward()
    no_grad = [name for name, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert no_grad == []
    assert all(p.grad is None for p in model.backbone.parameters())
    assert count_parameters(model.backbone)["trainable"] == 0


def test_cached_features_equal_frames():
    model = tiny_model().eval()
    frames = frames_for(model.config, batch=2)
    with torch.no_grad():
        from_frames = model.video_tokens(frames=frames)
        from_features = model.video_tokens(features=model.backbone(frames))
    cfg = model.config
    grid = cfg.backbone.image_size // cfg.backbone.tiny_vit.patch_size
    assert from_frames.shape == (2, cfg.stgt.num_frames * (1 + 2 * grid), cfg.stgt.width)
    assert torch.equal(from_frames, from_features)
    with pytest.raises(ValueError, match="exactly one"):
        model.video_tokens()


def test_encoders_and_scores():
    model = tiny_model().eval()
    cfg = model.config
    ids, mask = text_batch(cfg, batch=3)
    with torch.no_grad():
        tokens = model.video_tokens(frames=frames_for(cfg, batch=3))
        query_states, video_feat = model.encode_video(tokens)
        cls_state, text_feat = model.encode_text(ids, mask)
        sim = model.similarity(video_feat, text_feat)
        scores = model.itm_scores(tokens, ids, mask)
    q, e = cfg.qformer.num_query_tokens, cfg.embed_dim
    assert query_states.shape == (3, q, cfg.qformer.hidden_size) and video_feat.shape == (3, q, e)
    assert cls_state.shape == (3, cfg.qformer.hidden_size) and text_feat.shape == (3, e)
    assert torch.allclose(video_feat.norm(dim=-1), torch.ones(3, q)) and torch.allclose(
        text_feat.norm(dim=-1), torch.ones(3)
    )
    assert sim.shape == (3, 3) and sim.abs().max() <= 1 + 1e-5
    assert scores.shape == (3,) and ((scores >= 0) & (scores <= 1)).all()


def test_mean_pool_baseline_is_frame_order_blind():
    model = tiny_model(temporal="mean_pool").eval()
    assert not hasattr(model, "graph_cross_model")
    cfg = model.config
    features = torch.randn(2, cfg.stgt.num_frames, 17, cfg.backbone.tiny_vit.width)
    with torch.no_grad():
        tokens = model.video_tokens(features=features)
        shuffled = model.video_tokens(features=features.flip(1))
    assert tokens.shape == (2, 17, cfg.stgt.width)
    assert torch.allclose(tokens, shuffled, atol=1e-5)
    ids, mask = text_batch(cfg, batch=2)
    model.train()
    model(ids, mask, features=features)["total"].backward()


def test_loss_weights_and_selection():
    model = tiny_model(loss={"weights": {"vtm": 0.0, "vtg": 2.0}})
    ids, mask = text_batch(model.config)
    torch.manual_seed(0)
    out = model(ids, mask, frames=frames_for(model.config))
    assert torch.allclose(out["total"], out["vtc"] + 2.0 * out["vtg"])
    vtg_only = model(ids, mask, frames=frames_for(model.config), losses=("vtg",))
    assert set(vtg_only) == {"vtg", "total"}
    with pytest.raises(ValueError, match="subset"):
        model(ids, mask, frames=frames_for(model.config), losses=("itc",))


def test_twin_loss_pairs_each_clip_with_its_twin_and_needs_the_index():
    model = tiny_model()
    ids, mask = text_batch(model.config)
    frames = frames_for(model.config)
    twins = torch.tensor([1, 0, 3, 2])
    out = model(ids, mask, frames=frames, losses=("vtc", "twin"), twin_index=twins)
    assert torch.allclose(out["total"], out["vtc"] + out["twin"])
    out["total"].backward()
    assert model.temp.grad is not None
    # Clips without a twin in the batch take no part; with none at all the loss is zero.
    alone = model(ids, mask, frames=frames, losses=("twin",), twin_index=torch.full((BATCH,), -1))
    assert alone["twin"].item() == 0.0
    with pytest.raises(ValueError, match="twin_index"):
        model(ids, mask, frames=frames, losses=("vtc", "twin"))


@pytest.mark.parametrize(("clamp", "expected"), [(False, 1.0), (True, 0.5)])
def test_temperature_is_unclamped_unless_asked(clamp, expected):
    model = tiny_model(loss={"temp_clamp": clamp})
    with torch.no_grad():
        model.temp.fill_(1.0)
    ids, mask = text_batch(model.config)
    model(ids, mask, frames=frames_for(model.config), losses=("vtc",))
    assert model.temp.item() == pytest.approx(expected)


def test_state_dict_names_mirror_the_official_ones():
    keys = set(tiny_model().state_dict())
    for key in (
        "query_tokens",
        "temp",
        "ln_vision.weight",
        "vision_proj.weight",
        "text_proj.bias",
        "itm_head.weight",
        "graph_cross_model.time_embed",
        "graph_cross_model.proj",
        "graph_cross_model.resblocks.0.proj_fc.weight",
        "graph_cross_model.resblocks.0.message_attn.attn.in_proj_weight",
        "graph_cross_model.resblocks.0.graphattn.W_Q.weight",
        "qformer.bert.encoder.layer.0.crossattention.attention.query.weight",
        "qformer.bert.encoder.layer.1.intermediate_query.dense.weight",
    ):
        assert key in keys, key


def test_paper_config_builds_on_meta_with_plausible_sizes():
    model = create_model("paper", device="meta")
    assert all(p.is_meta for p in model.parameters())
    parts = parameter_breakdown(model)
    totals = count_parameters(model)
    assert 0.95e9 <= parts["backbone"]["frozen"] <= 1.05e9  # EVA ViT-g/14, 39 blocks (~1.0B)
    assert parts["backbone"]["trainable"] == 0
    assert parts["graph_cross_model"]["trainable"] == pytest.approx(59.5e6, rel=0.01)  # reference §1.3
    assert 100e6 <= parts["qformer"]["trainable"] <= 190e6
    assert totals["frozen"] == parts["backbone"]["frozen"]
    assert model.backbone.grid == (16, 16)


def test_default_preset_loads_offline_weights():
    torch.manual_seed(0)
    model = create_model("default")
    assert model.backbone.frozen and model.backbone.grid == (7, 7) and model.backbone.out_dim == 1280
    assert model.graph_cross_model.input_proj.in_features == 1280
    minilm = read_bert_state_dict(minilm_path())
    word = minilm["embeddings.word_embeddings.weight"]
    assert torch.equal(model.qformer.embeddings.word_embeddings.weight[: len(word)], word)


def test_padding_does_not_change_the_losses():
    """Every pass masks padding: trimming the pad columns (dynamic padding) gives the same losses."""
    model = tiny_model().eval()  # eval: no dropout, so the two runs are comparable
    ids, mask = text_batch(model.config)
    ids[:, 8:], mask[:, 8:] = 0, 0
    frames = frames_for(model.config)
    with torch.no_grad():
        torch.manual_seed(0)
        padded = model(ids, mask, frames=frames, losses=("csal", "vtm", "vtg"))
        torch.manual_seed(0)
        trimmed = model(ids[:, :8], mask[:, :8], frames=frames, losses=("csal", "vtm", "vtg"))
    for name in padded:
        assert torch.allclose(padded[name], trimmed[name], atol=1e-5), name


def test_mean_text_pooling_averages_the_caption_tokens_only():
    model = tiny_model(qformer={"text_pooling": "mean"}).eval()
    ids, mask = text_batch(model.config)
    with torch.no_grad():
        pooled, feat = model.encode_text(ids, mask)
        states = model.qformer.text_pass(ids, mask)
    assert torch.allclose(pooled[0], states[0, :6].mean(dim=0), atol=1e-6)  # the padded caption: its 6 tokens
    assert torch.allclose(pooled[1], states[1].mean(dim=0), atol=1e-6)
    assert torch.allclose(feat.norm(dim=-1), torch.ones(BATCH))
    cls_model = tiny_model().eval()
    with torch.no_grad():
        assert torch.allclose(cls_model.encode_text(ids, mask)[0], cls_model.qformer.text_pass(ids, mask)[:, 0])


def frozen_text_model(trainable_layers=0, pooling="mean"):
    from stgt_model.factory import freeze_text_layers

    model = tiny_model(qformer={"dropout": 0.0, "text_pooling": pooling})
    freeze_text_layers(model, trainable_layers)
    return model


@pytest.mark.parametrize("trainable_layers, pooling, group_rows",
                         [(0, "mean", 16), (1, "mean", 16), (1, "cls", 16), (1, "mean", 1), (1, "cls", 3)])
def test_frozen_text_cache_gives_the_uncached_features_and_encodes_each_caption_once(
    monkeypatch, trainable_layers, pooling, group_rows
):
    model = frozen_text_model(trainable_layers, pooling)
    model.TEXT_GROUP_ROWS = group_rows  # the trainable layers run on length groups of this many captions
    assert model.frozen_text_layers() == model.config.qformer.num_layers - trainable_layers
    ids, mask = text_batch(model.config)
    expected = model.encode_text(ids, mask)[1]
    model.cache_frozen_text(True)
    calls = []
    original = model.qformer.text_prefix
    monkeypatch.setattr(model.qformer, "text_prefix", lambda i, m, k: calls.append(len(i)) or original(i, m, k))
    first = model.encode_text(ids, mask)[1]
    # the same captions again, re-ordered and padded to another width: all from the cache
    order = torch.tensor([2, 0, 3, 1])
    wider_ids = torch.cat([ids[order], torch.zeros(BATCH, 3, dtype=ids.dtype)], dim=1)
    wider_mask = torch.cat([mask[order], torch.zeros(BATCH, 3, dtype=mask.dtype)], dim=1)
    again = model.encode_text(wider_ids, wider_mask)[1]
    assert calls == [BATCH]
    assert torch.allclose(first, expected, atol=1e-5) and torch.allclose(again, expected[order], atol=1e-5)
    first.sum().backward()  # text_proj, and the trainable layer, still train
    assert model.text_proj.weight.grad is not None and model.text_proj.weight.grad.any()
    last_ffn = model.qformer.bert.encoder.layer[-1].intermediate.dense.weight
    assert (last_ffn.grad is not None and last_ffn.grad.any()) == (trainable_layers > 0)
    model.cache_frozen_text(False)
    assert torch.allclose(model.encode_text(ids, mask)[1], expected, atol=1e-5)
    assert calls == [BATCH]


def test_text_prefix_and_suffix_make_the_text_pass():
    model = tiny_model().eval()
    ids, mask = text_batch(model.config)
    with torch.no_grad():
        whole = model.qformer.text_pass(ids, mask)
        for layers in range(model.config.qformer.num_layers + 1):
            prefix = model.qformer.text_prefix(ids, mask, layers)
            assert torch.allclose(model.qformer.text_suffix(prefix, mask, layers), whole, atol=1e-6)


def test_text_cache_refuses_a_trainable_text_path():
    with pytest.raises(ValueError, match="trainable_text_layers"):
        tiny_model(qformer={"dropout": 0.0}).cache_frozen_text(True)  # every text layer trains
    with pytest.raises(ValueError, match="dropout"):
        model = tiny_model(qformer={"dropout": 0.1})
        from stgt_model.factory import freeze_text_layers

        freeze_text_layers(model, 0)
        model.cache_frozen_text(True)
