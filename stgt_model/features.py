"""From a video file to the frozen-backbone tokens the model reads: one definition for training and serving.

build_graphs caches these tokens for training; the served model (components/register/pyfunc.py) computes them from
a video at request time. Both call `feature_extractor` and `clip_tokens` here, and a served clip goes through the
same sampling as evaluation (`FrameSpec`, the extract_frames settings recorded with the model), so a model never
sees features made another way than those it was trained and evaluated on (no training-serving skew).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor

from stgt_model.backbones import VisionBackbone
from stgt_model.config import BackboneConfig
from stgt_model.data import normalise_frames
from stgt_model.video.decode import DecodedClip, read_clip
from stgt_model.video.sampling import SamplingMode

# Cached features are stored as float16 (build_graphs); served features are rounded the same way.
FEATURE_DTYPE = torch.float16


@dataclass(frozen=True)
class FrameSpec:
    """How frames are taken from a video: extract_frames' num_frames, size and evaluation sampling."""

    num_frames: int
    size: int
    sampling: SamplingMode = "uniform"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FrameSpec:
        return cls(int(data["num_frames"]), int(data["size"]), data.get("sampling", "uniform"))


def read_frames(path: str | Path, spec: FrameSpec) -> DecodedClip:
    """The clip's sampled frames as evaluation reads them (deterministic modes only: no generator is needed)."""
    return read_clip(path, spec.num_frames, spec.size, spec.sampling)


def build_frozen_backbone(cfg: BackboneConfig, state_dict: Mapping[str, Tensor] | None = None) -> VisionBackbone:
    """The backbone as build_graphs runs it, before any inference rewrite: weights from `state_dict` when given
    (a packaged model), else the configured pretrained ones; a random-init backbone (tiny_vit) is seeded, so that
    every build of it is the same network."""
    from stgt_model.factory import build_vision_backbone  # transformers loads only when a backbone is built

    cfg = cfg.model_copy(update={"frozen": True})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        backbone = build_vision_backbone(cfg, load_weights=state_dict is None)
    if state_dict is not None:
        backbone.load_state_dict(dict(state_dict), strict=True)
    return backbone.eval()


def feature_extractor(backbone: VisionBackbone, device: torch.device | str = "cpu") -> VisionBackbone:
    """A frozen backbone rewritten for feature extraction: channels-last (the layout normalise_frames hands over;
    about a third faster for convolutions on CPU) and folded BatchNorm (EfficientNet; another third). The result
    cannot train and its state_dict changes shape: never save it."""
    return backbone.to(device=device, memory_format=torch.channels_last).eval().optimize_for_inference()


def clip_tokens(extractor: VisionBackbone, frames: Tensor | np.ndarray) -> Tensor:
    """uint8 frames (B, T, S, S, 3) -> float16 tokens (B, T, 1 + h*w, C), on the extractor's device."""
    frames = torch.as_tensor(frames)
    device = next(extractor.parameters()).device
    with torch.inference_mode():
        images = normalise_frames(frames.to(device), extractor.mean, extractor.std, extractor.image_size)
        return extractor(images).to(FEATURE_DTYPE)
