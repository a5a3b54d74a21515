"""Vision backbones: one interface, frozen handling, offline EfficientNet-Lite0 and local Hugging Face encoders."""

import pytest
import torch
from torch import nn

from stgt_model.backbones import (
    IMAGENET_MEAN,
    OPENAI_CLIP_MEAN,
    build_backbone,
    efficientnet_lite0_weights_path,
)


def test_efficientnet_lite0_pretrained_loads_strictly_and_gives_7x7_tokens():
    torch.manual_seed(0)
    backbone = build_backbone("efficientnet_lite0")  # the constructor loads with strict=True
    saved = torch.load(efficientnet_lite0_weights_path(), weights_only=True)
    assert set(backbone.network.state_dict()) == set(saved)
    torch.testing.assert_close(backbone.network._conv_stem.weight, saved["_conv_stem.weight"])
    assert (backbone.out_dim, backbone.grid, backbone.image_size, backbone.mean) == (1280, (7, 7), 224, IMAGENET_MEAN)

    tokens = backbone(torch.randn(1, 2, 3, 224, 224))
    assert tokens.shape == (1, 2, 1 + 49, 1280)
    torch.testing.assert_close(tokens[:, :, 0], tokens[:, :, 1:].mean(dim=2))  # summary = mean of the grid
    assert not tokens.requires_grad


def test_frozen_backbone_stays_in_eval_mode_inside_a_training_parent():
    backbone = build_backbone("efficientnet_lite0", pretrained=False, image_size=64)
    parent = nn.ModuleDict({"backbone": backbone, "head": nn.Linear(2, 2)}).train()
    assert parent["head"].training
    assert backbone.frozen and not any(m.training for m in backbone.modules())
    assert not any(p.requires_grad for p in backbone.parameters())
    assert backbone.grid == (2, 2)


@pytest.mark.parametrize("image_size", [96, 224])
def test_efficientnet_optimized_for_inference_matches_the_original(image_size):
    torch.manual_seed(0)
    frames = torch.rand(2, 3, 3, image_size, image_size)
    backbone = build_backbone("efficientnet_lite0", image_size=image_size)
    with torch.inference_mode():
        expected = backbone(frames)
        folded = backbone.optimize_for_inference()
        assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
        torch.testing.assert_close(folded(frames), expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(folded.optimize_for_inference()(frames), expected, atol=1e-4, rtol=1e-4)


def test_optimize_for_inference_refuses_a_training_backbone():
    backbone = build_backbone("efficientnet_lite0", pretrained=False, image_size=64, frozen=False).train()
    with pytest.raises(RuntimeError, match="eval mode"):
        backbone.optimize_for_inference()


def test_tiny_vit_shapes_and_trainable_mode():
    torch.manual_seed(0)
    backbone = build_backbone("tiny_vit", image_size=24, patch_size=8, width=16, depth=1, heads=2, frozen=False)
    backbone.train()
    assert backbone.training and (backbone.out_dim, backbone.grid) == (16, (3, 3))
    tokens = backbone(torch.randn(2, 3, 3, 24, 24))
    assert tokens.shape == (2, 3, 10, 16)
    tokens.sum().backward()
    assert backbone.patch_embed.weight.grad is not None


def test_wrong_frame_size_and_unknown_backbone_are_rejected():
    backbone = build_backbone("tiny_vit")
    with pytest.raises(ValueError, match="expected frames"):
        backbone(torch.randn(1, 2, 3, 16, 16))
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("resnet")


def _save_tiny_hf_model(kind: str, folder):
    from transformers import (
        Blip2VisionConfig,
        Blip2VisionModel,
        CLIPVisionConfig,
        CLIPVisionModel,
        ViTConfig,
        ViTModel,
    )

    shared = dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8
    )
    model = {
        "blip2": lambda: Blip2VisionModel(Blip2VisionConfig(**shared)),
        "clip": lambda: CLIPVisionModel(CLIPVisionConfig(**shared)),
        "vit": lambda: ViTModel(ViTConfig(**shared)),
    }[kind]()
    model.save_pretrained(folder)
    return model.eval()


@pytest.mark.parametrize("kind", ["blip2", "clip", "vit"])
@pytest.mark.parametrize("image_size", [None, 48])
def test_hf_vision_tiny_models_from_a_local_folder(kind, image_size, tmp_path):
    torch.manual_seed(0)
    reference = _save_tiny_hf_model(kind, tmp_path)
    backbone = build_backbone("hf_vision", path=str(tmp_path), image_size=image_size)
    side = (image_size or 32) // 8
    assert (backbone.out_dim, backbone.grid, backbone.image_size) == (32, (side, side), image_size or 32)
    assert backbone.frozen and not backbone.training
    assert backbone.mean == ((0.5,) * 3 if kind == "vit" else OPENAI_CLIP_MEAN)

    frames = torch.randn(1, 2, 3, side * 8, side * 8)
    tokens = backbone(frames)
    assert tokens.shape == (1, 2, 1 + side * side, 32)
    with torch.no_grad():
        expected = reference(pixel_values=frames.flatten(0, 1), interpolate_pos_encoding=image_size is not None)
    expected = expected.last_hidden_state.view_as(tokens)
    if kind == "blip2":  # tokens are taken before post_layernorm (= BLIP-2's ln_vision), see the backbone docstring
        expected_from_tokens = reference.post_layernorm(tokens)
        torch.testing.assert_close(expected_from_tokens, expected)
    else:
        torch.testing.assert_close(tokens, expected)


def test_hf_vision_unfrozen_is_trainable(tmp_path):
    _save_tiny_hf_model("clip", tmp_path)
    backbone = build_backbone("hf_vision", path=tmp_path, frozen=False).train()
    assert backbone.training
    backbone(torch.randn(1, 2, 3, 32, 32)).mean().backward()
    assert all(p.grad is not None for p in backbone.model.encoder.parameters())


def test_hf_vision_requires_an_existing_local_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        build_backbone("hf_vision", path=tmp_path / "missing")


def test_hf_vision_half_precision_weights_return_tokens_in_the_frames_dtype(tmp_path):
    reference = _save_tiny_hf_model("vit", tmp_path)
    reference.half().save_pretrained(tmp_path)
    backbone = build_backbone("hf_vision", path=tmp_path)
    assert backbone.model.dtype == torch.float16
    tokens = backbone(torch.randn(1, 2, 3, 32, 32))
    assert tokens.dtype == torch.float32 and tokens.shape == (1, 2, 17, 32)
