"""Build an STGTModel from a ModelConfig (open_clip / timm style) and count its parameters.

model = create_model("default")                       # offline pretrained backbone + MiniLM text init
model = create_model(preset_config("paper"), device="meta")   # no weights, no allocation; for sizes
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from stgt_model.backbones import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    HuggingFaceVisionBackbone,
    VisionBackbone,
    build_backbone,
)
from stgt_model.config import EVA_VIT_G, BackboneConfig, ModelConfig, resolve_model_config
from stgt_model.model import STGTModel
from stgt_model.qformer import load_text_weights, text_model_folder


class ConfiguredBlip2VisionBackbone(HuggingFaceVisionBackbone):
    """The hf_vision backbone built from a Blip2VisionConfig rather than a folder (random weights).

    Lets the `paper` model (EVA ViT-g) be built on the meta device for its sizes without any local weights.
    """

    def __init__(self, config: Any, frozen: bool) -> None:
        from transformers import Blip2VisionModel

        side = config.image_size // config.patch_size
        VisionBackbone.__init__(
            self,
            out_dim=config.hidden_size,
            grid=(side, side),
            image_size=config.image_size,
            mean=OPENAI_CLIP_MEAN,
            std=OPENAI_CLIP_STD,
            frozen=frozen,
        )
        self.model = Blip2VisionModel(config)
        self.model_type = "blip_2_vision_model"
        self.interpolate_pos_encoding = False
        self.freeze_if_configured()


def _blip2_vision_config(cfg: BackboneConfig) -> Any:
    """The folder's Blip2VisionConfig when a path is given, else BLIP-2's EVA ViT-g/14 (reference §1.2)."""
    from transformers import AutoConfig, Blip2VisionConfig

    if cfg.path is None:
        return Blip2VisionConfig(**{**EVA_VIT_G, "image_size": cfg.image_size})
    config = AutoConfig.from_pretrained(cfg.path, local_files_only=True)
    if not isinstance(config, Blip2VisionConfig):
        raise ValueError(
            f"a weightless hf_vision build needs a Blip2VisionConfig, {cfg.path} has {config.model_type!r}"
        )
    return config


def build_vision_backbone(cfg: BackboneConfig, load_weights: bool) -> VisionBackbone:
    if cfg.name == "efficientnet_lite0":
        return build_backbone(cfg.name, image_size=cfg.image_size, pretrained=load_weights, frozen=cfg.frozen)
    if cfg.name == "tiny_vit":
        t = cfg.tiny_vit
        return build_backbone(
            cfg.name,
            image_size=cfg.image_size,
            patch_size=t.patch_size,
            width=t.width,
            depth=t.depth,
            heads=t.heads,
            frozen=cfg.frozen,
        )
    if load_weights:
        if cfg.path is None:
            raise ValueError("backbone.path (a local Hugging Face folder) is required to load hf_vision weights")
        return build_backbone(cfg.name, path=cfg.path, image_size=cfg.image_size, frozen=cfg.frozen)
    return ConfiguredBlip2VisionBackbone(_blip2_vision_config(cfg), frozen=cfg.frozen)


def create_model(
    cfg: ModelConfig | str | Mapping[str, Any], device: str | torch.device = "cpu", pretrained: bool = True
) -> STGTModel:
    """Build the model. pretrained: load the backbone's weights and initialise the Q-Former text side from
    `qformer.text_model` (ignored for "random"). device="meta" builds the structure only (no weights, no memory).
    """
    cfg = resolve_model_config(cfg)
    if torch.device(device).type == "meta":
        with torch.device("meta"):
            model = STGTModel(cfg, build_vision_backbone(cfg.backbone, load_weights=False))
    else:
        model = STGTModel(cfg, build_vision_backbone(cfg.backbone, load_weights=pretrained))
        text_folder = text_model_folder(cfg.qformer.text_model)
        if pretrained and text_folder is not None:
            load_text_weights(model.qformer, cfg.qformer, text_folder)
    if cfg.qformer.trainable_text_layers is not None:
        freeze_text_layers(model, cfg.qformer.trainable_text_layers)
    return model.to(device)


def freeze_text_layers(model: STGTModel, trainable: int) -> None:
    """Freeze the text side of all but the last `trainable` Q-Former layers: word/position embeddings, the shared
    self-attention and the text FFN. The queries' FFN and the cross-attention stay trainable, so the video path
    still adapts everywhere (the calibration run trained only the last text layer of MiniLM)."""
    qformer = model.qformer
    num_layers = len(qformer.bert.encoder.layer)
    frozen = qformer.text_input_modules()
    for index in range(max(num_layers - trainable, 0)):
        frozen += qformer.text_layer_modules(index)
    for module in frozen:
        module.requires_grad_(False)


def count_parameters(model: nn.Module) -> dict[str, int]:
    """{"trainable": ..., "frozen": ...} parameter element counts (buffers such as pos_2D_embed not included)."""
    counts = {"trainable": 0, "frozen": 0}
    for parameter in model.parameters():
        counts["trainable" if parameter.requires_grad else "frozen"] += parameter.numel()
    return counts


def parameter_breakdown(model: nn.Module) -> dict[str, dict[str, int]]:
    """count_parameters per top-level component (backbone, graph_cross_model, qformer, ...); direct parameters
    such as query_tokens and temp are grouped under their own names."""
    breakdown = {name: count_parameters(child) for name, child in model.named_children()}
    for name, parameter in model.named_parameters(recurse=False):
        breakdown[name] = {
            "trainable": parameter.numel() if parameter.requires_grad else 0,
            "frozen": 0 if parameter.requires_grad else parameter.numel(),
        }
    return breakdown
