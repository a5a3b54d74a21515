"""params.yaml as typed config: one pydantic section per stage, validated at load.

Unknown keys and bad values fail with the dotted key path and what was expected, e.g.
``params.yaml: prepare.num_videos: expected a valid integer, got 'many'``.
"""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from stgt_model.config import PRESETS as MODEL_PRESETS
from stgt_model.config import THREADS_HELP, LossName, LossWeights, ModelConfig, TrainConfig, deep_merge
from stgt_pipeline.errors import ConfigError

DEFAULT_PARAMS = Path("params.yaml")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class FolderSource(Section):
    """A user's own videos: a directory plus a captions file (JSONL or CSV)."""

    root: str | None = Field(None, description="directory or s3://bucket/prefix holding the videos (paths in the captions "
                                                "file are relative to it; with s3:// the captions file is local)")
    captions: str | None = Field(None, description="captions file: .jsonl or .csv with video, caption(s), optional split, question, answer")
    default_split: Literal["train", "val", "test"] = "train"


SplitName = Literal["train", "val", "test"]
# Benchmark sources live in stgt_pipeline/sources/benchmarks; "synthetic" and "folder" stay last so error messages
# end with the two everyday choices.
BENCHMARK_SOURCES = ("msrvtt", "msvd", "didemo", "lsmdc", "activitynet", "webvid", "msrvtt_qa", "msvd_qa", "activitynet_qa")
SourceName = Literal[BENCHMARK_SOURCES + ("synthetic", "folder")]


class BenchmarkSplit(Section):
    annotations: list[str] = Field([], description="annotation files in the benchmark's published format (captions or QA)")
    ids: list[str] = Field([], description="split id lists (.txt, one id a line, or a one-column `video_id` CSV): "
                                           "restrict the annotations to these ids, or with captions_db define the split")


class BenchmarkSource(Section):
    """A standard benchmark read from its published annotation files (stgt_pipeline/sources/benchmarks)."""

    root: str | None = Field(None, description="the videos: a local directory, searched recursively, or s3://bucket/prefix "
                                                "(listed once; each video is downloaded to a temporary file to be probed "
                                                "and decoded; credentials and endpoint from AWS_* variables, as for DVC)")
    annotations_dir: str | None = Field(None, description="relative annotation paths are resolved against it")
    splits: dict[SplitName, BenchmarkSplit] = {}
    captions_db: str | None = Field(None, description="captions for splits given only as id lists "
                                                      "(MSRVTT_data.json, MSVD AllVideoDescriptions.txt or raw-captions.pkl)")
    captions: Literal["all", "first"] = Field("all", description="keep every caption of a video, or its first only")
    extensions: list[str] = Field([], description="video file extensions to try, overriding the benchmark's own")
    max_missing_share: float = Field(0.05, ge=0.0, le=1.0, description="fail when more videos than this are missing")
    expected_videos: dict[SplitName, int] = Field({}, description="videos each split's full annotation files hold")
    min_captions_per_video: int = Field(1, ge=0, description="the quality suite fails a split with a video below this")
    answer_vocab_size: int = Field(1500, ge=1, description="QA: answer vocabulary = the top-k training answers")
    answer_vocab: str | None = Field(None, description="QA: a fixed answer list (JSON list or ans2label map) instead")
    video_id_map: str | None = Field(None, description="MSVD-QA: youtube_mapping.txt turning vidN into clip names")


class PrepareConfig(Section):
    source: SourceName = "synthetic"
    preset: str | None = Field(None, description="a named recipe from stgt_pipeline/presets (e.g. msrvtt_1ka)")
    seed: int = 0
    num_videos: int = Field(120, ge=3, description="synthetic: clips to generate (train clips also get a time-reversed twin)")
    frames_per_video: int = Field(24, ge=4, le=600)
    fps: int = Field(8, ge=1, le=120)
    width: int = Field(112, ge=32, le=1920)
    height: int = Field(112, ge=32, le=1080)
    val_share: float = Field(0.1, ge=0.0, lt=1.0)
    test_share: float = Field(0.2, gt=0.0, lt=1.0)
    reversed_twins: bool = Field(True, description="add each train clip's time-reversed twin with its own caption")
    folder: FolderSource = FolderSource()
    benchmark: BenchmarkSource = BenchmarkSource()

    @model_validator(mode="after")
    def _shares(self) -> "PrepareConfig":
        if self.val_share + self.test_share >= 1.0:
            raise ValueError("val_share + test_share must be below 1 (something must be left for train)")
        if self.source == "folder" and (not self.folder.root or not self.folder.captions):
            raise ValueError("source 'folder' needs prepare.folder.root and prepare.folder.captions")
        if self.source in BENCHMARK_SOURCES and not (self.benchmark.root and self.benchmark.splits):
            raise ValueError(f"source {self.source!r} needs prepare.benchmark.root and prepare.benchmark.splits "
                             "(a prepare.preset names the splits)")
        return self


class Range(Section):
    min: float
    max: float

    @model_validator(mode="after")
    def _ordered(self) -> "Range":
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max})")
        return self


class ValidateConfig(Section):
    duration_s: Range = Range(min=0.1, max=3600.0)
    width: Range = Range(min=16, max=8192)
    height: Range = Range(min=16, max=8192)
    fps: Range = Range(min=1, max=240)
    min_caption_chars: int = Field(3, ge=1)
    required_splits: list[Literal["train", "val", "test"]] = ["train", "test"]
    max_failed_share: float = Field(0.0, ge=0.0, le=1.0, description="videos that fail a per-video expectation are "
                                    "quarantined, up to this share of the manifest; above it (default: any) the stage fails")


class ExtractFramesConfig(Section):
    num_frames: int = Field(8, ge=1, le=256)
    size: int = Field(224, ge=16, le=1024, description="frames are resized to size x size (aspect not kept, as the reference)")
    train_sampling: Literal["headtail", "uniform", "random"] = "headtail"
    eval_sampling: Literal["uniform", "middle"] = "uniform"
    shard_size: int = Field(128, ge=1, description="clips per shard file")
    workers: int = Field(2, ge=1, le=64)
    timeout_s: float = Field(60.0, gt=0, description="per-video decode timeout")
    max_failed_share: float = Field(0.2, ge=0.0, le=1.0, description="fail the stage when more videos than this are quarantined")
    seed: int = 0


class BuildGraphsConfig(Section):
    batch_size: int = Field(16, ge=1, description="clips per backbone forward pass")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto: cuda when available, else cpu")
    mode: Literal["cached", "online"] = Field("cached", description="cached: store frozen-backbone features and graphs; "
                                                                    "online: frames only, the backbone runs in training")
    sim_threshold: float | None = Field(None, ge=-1.0, le=1.0, description="graph edge threshold; None: model.stgt.sim_threshold")
    max_isolated_share: float = Field(0.5, ge=0.0, le=1.0, description="the graphs suite fails a clip whose share of "
                                                                        "nodes with no edge but their self loop is above this")


# --------------------------------------------------------------------------------------------------------------
# training and evaluation (stgt-reference §2-4)
#
# A training phase is the engine's own TrainConfig (stgt_model/config.py: every training setting is defined there
# once, with its one default, the official recipe) plus what the stage itself reads. The defaults of the sections
# below are that recipe; params.yaml holds the embedded default's deviations from it.


class TrainSettings(TrainConfig):
    """One training run: stgt_model.config.TrainConfig, plus the caption length the stage tokenizes to."""

    max_text_len: int | None = Field(None, gt=1, description="caption tokens; None: model.qformer.max_text_len")


class ContrastivePhase(TrainSettings):
    """A video-text phase: the losses it minimises and their weights (reference total: 1:1:1)."""

    losses: list[LossName] = Field(min_length=1)
    weights: LossWeights = LossWeights()
    pair_twins: bool = Field(True, description="put each clip and its time-reversed twin in the same batch, so the "
                                               "contrastive and matching losses see them as each other's negatives")

    @model_validator(mode="after")
    def _twin_needs_pairs(self) -> "ContrastivePhase":
        if "twin" in self.losses and not self.pair_twins:
            raise ValueError("loss 'twin' contrasts each clip with its time-reversed twin: it needs pair_twins: true")
        return self


class PretrainConfig(Section):
    """Stage 1 (VTC + VTM + VTG), then stage 2 (CSAL + VTM + VTG) from stage 1's weights (reference §3.1)."""

    stage1: ContrastivePhase = ContrastivePhase(losses=["vtc", "vtm", "vtg"], steps=300)
    stage2: ContrastivePhase = ContrastivePhase(losses=["csal", "vtm", "vtg"], steps=100)


class QAPhase(TrainSettings):
    answer_vocab_size: int = Field(1500, gt=0, description="answer classes: the top-k training answers")


FinetuneTask = Literal["retrieval", "qa"]
FINETUNE_TASKS: tuple[str, ...] = ("retrieval", "qa")


class FinetuneConfig(Section):
    """Fine-tuning from the pre-trained weights, one run per task (dvc.yaml: a foreach over the tasks).

    A benchmark preset (prepare.preset) sets the reference recipe here (stgt_pipeline/presets/*.yaml).
    """

    tasks: list[FinetuneTask] = Field(list(FINETUNE_TASKS), min_length=1, description="tasks this run fine-tunes")
    retrieval: ContrastivePhase = ContrastivePhase(losses=["csal", "vtm"], steps=100)
    qa: QAPhase = QAPhase(steps=150)


class EvaluateConfig(Section):
    compat: Literal["tie_aware", "clip4clip", "albef"] = Field(
        "tie_aware", description="rank convention (metrics-reference §2.6); the others reproduce CLIP4Clip / ALBEF")
    k_test: int = Field(32, gt=0, description="re-rank the top k by the matching head (reference: 32)")
    dual_softmax: bool = Field(False, description="also report inference-time dual softmax (never instead)")
    batch_size: int = Field(64, gt=0)
    max_text_len: int | None = Field(None, gt=1, description="None: model.qformer.max_text_len")
    threads: int | None = Field(None, ge=1, description=THREADS_HELP)


class GateMetrics(Section):
    """Per task, the evaluate metric (dotted key inside its metrics.json section) that decides a promotion."""

    retrieval: str = "t2v.R@1"
    qa: str = "accuracy"


class RegisterConfig(Section):
    """Stage register: log the fine-tuned models, register them as `<model_prefix>-<task>` and gate `champion`."""

    models: list[FinetuneTask] = Field(list(FINETUNE_TASKS), min_length=1, description="tasks whose model to register")
    model_prefix: str = Field("stgt", pattern=r"^[\w.-]+$", description="registered names are <prefix>-<task>")
    gate_metric: GateMetrics = GateMetrics()
    margin: float = Field(0.0, ge=0.0, description="promote only when the gate metric beats the champion's by more")


# Sections whose names shadow BaseModel attributes: held as `<name>_`, read and written as `<name>`.
ALIASED_SECTIONS = ("validate", "register")


class Params(Section):
    model: ModelConfig = ModelConfig()
    prepare: PrepareConfig = PrepareConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    extract_frames: ExtractFramesConfig = ExtractFramesConfig()
    build_graphs: BuildGraphsConfig = BuildGraphsConfig()
    pretrain: PretrainConfig = PretrainConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    register_: RegisterConfig = Field(RegisterConfig(), alias="register")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _model_preset(cls, data: Any) -> Any:
        """`model: {preset: tiny, stgt: {layers: 2}}` = the named preset with those keys overridden."""
        if isinstance(data, dict) and isinstance(data.get("model"), dict):
            spec = dict(data["model"])
            preset = spec.pop("preset", "default")
            if preset not in MODEL_PRESETS:
                raise ValueError(f"model.preset: unknown preset {preset!r}; expected one of {sorted(MODEL_PRESETS)}")
            data = {**data, "model": deep_merge(MODEL_PRESETS[preset], spec)}
        return data

    def section(self, name: str) -> Section:
        return getattr(self, f"{name}_" if name in ALIASED_SECTIONS else name)

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


# --------------------------------------------------------------------------------------------------------------
# loading, overrides, errors


def _describe(error: dict[str, Any]) -> str:
    msg = error["msg"]
    if error["type"] == "extra_forbidden":
        return "unknown key"
    msg = msg[0].lower() + msg[1:]
    msg = msg.replace("input should be", "expected").replace("value error, ", "")
    if error["type"] not in ("missing",) and "input" in error and not isinstance(error["input"], (dict, list)):
        msg += f", got {error['input']!r}"
    return msg


def _format_validation_error(origin: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        path = ".".join(str(p).removesuffix("_") if str(p).removesuffix("_") in ALIASED_SECTIONS else str(p)
                        for p in err["loc"])
        lines.append(f"{origin}: {path + ': ' if path else ''}{_describe(err)}")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=c` -> (["a", "b"], value). The value is parsed as YAML so numbers, bools and lists get their type."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE with a dotted key, e.g. prepare.num_videos=40")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".")]
    if not all(parts):
        raise ConfigError(f"--set {text!r}: empty part in key {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    data = copy.deepcopy(raw)
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part) if isinstance(node, dict) else None
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text}: {'.'.join(parts[: i + 1])} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return data


def check_params_file(path: str | Path) -> None:
    """A params file the user named must be there: a typo must not run the built-in defaults and replace outputs.

    Commands check what they were given before anything runs; load_params itself reads a missing file as all
    defaults (library callers and tests rely on that to get the schema's reference recipe).
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"params file {path} not found (check the --params path)")
    if not path.is_file():
        raise ConfigError(f"params file {path} is not a file")


def load_params(path: str | Path | None = None, overrides: list[str] | None = None) -> Params:
    """Load params.yaml, apply `--set` overrides, validate.

    `path` None means ./params.yaml. A file that does not exist gives the schema's defaults: commands refuse a
    missing file the user named first (check_params_file), so only the library and tests rely on this.
    """
    path = Path(path) if path is not None else DEFAULT_PARAMS
    raw: dict[str, Any] = {}
    if path.exists():
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f":{mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    origin = str(path)
    file_raw = raw
    if overrides:
        raw = apply_overrides(raw, overrides)
        origin = f"{path} (with --set)"
    preset = raw.get("prepare", {}).get("preset") if isinstance(raw.get("prepare"), dict) else None
    if preset:
        # Precedence: params.yaml < preset < --set. The shipped params.yaml spells out every key (source: synthetic
        # included), so a preset merged under it would never take effect.
        from stgt_pipeline.presets import load_preset, merge

        raw = apply_overrides(merge(file_raw, load_preset(preset)), overrides or [])
        origin = f"{origin} with preset {preset}"
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(origin, exc)) from None


def params_hash(params: Params, sections: list[str] | None = None) -> str:
    data = params.dump()
    if sections:
        data = {k: data[k] for k in sections}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def write_resolved(params: Params, sections: list[str], path: Path) -> None:
    """The resolved config next to a stage's outputs (timm writes args.yaml the same way)."""
    data = params.dump()
    path.write_text(yaml.safe_dump({k: data[k] for k in sections}, sort_keys=False), encoding="utf-8")
