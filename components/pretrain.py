"""Stage `pretrain`: stage 1 (VTC + VTM + VTG), then stage 2 (CSAL + VTM + VTG) from stage 1's weights.

stgt-reference §3.1: the paper labels VTC "Stage 1" and CSAL "Stage 2"; lengths and loss weights are params
(pretrain.stage1 / pretrain.stage2). The model trains on the frozen-backbone features build_graphs cached.

Resuming: each phase trains with stgt_model.engine.train into `<checkpoint>.work/<phase>/`, a folder beside the
output that DVC does not delete before re-running the stage. A killed run, re-run with the same params, resumes
from its last checkpoint and ends with the same weights; the finished output is then written whole (atomic_dir)
and the work folder removed. Output folder:
  model.pt              trainable weights + buffers (the frozen backbone comes from its constructor)
  curves.csv            step, phase, loss/* and lr of every logged step (the evaluate stage plots it)
  config.resolved.yaml  the model and pretrain sections

The helpers below (model building, corpus, batches, curves) are shared by the finetune and evaluate stages.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from components.atomic import rank_zero_dir
from components.config import ContrastivePhase, Params, TrainSettings, write_resolved
from components.errors import StgtError
from components.manifest import read_manifest
from stgt_model.config import ModelConfig
from stgt_model.data import ClipStore, VideoTextDataset, collate_video_text
from stgt_model.engine import LogFn, TrainConfig, TrainResult, init_distributed, train
from stgt_model.factory import create_model
from stgt_model.model import STGTModel
from stgt_model.qformer import TextProcessor, build_tokenizer

SECTIONS = ["model", "pretrain"]
MODEL_FILE = "model.pt"
CURVES_FILE = "curves.csv"
CURVES_LOG = "curves.jsonl"
PHASES = ("stage1", "stage2")


def run(params: Params, inputs: dict[str, Path], outputs: dict[str, Path]) -> dict[str, Any]:
    cfg = params.pretrain
    out_dir = Path(outputs["checkpoint"])
    work = work_dir(out_dir)
    manifest, store = open_corpus(inputs["dataset"], inputs["features"])
    model = build_model(params.model)
    rank, _, _ = init_distributed()  # under torchrun: every rank trains, rank 0 alone writes
    summary: dict[str, Any] = {}
    for name in PHASES:
        phase: ContrastivePhase = getattr(cfg, name)
        dataset = VideoTextDataset(store, manifest, "train", caption_mode="random", seed=phase.seed)
        result = train_contrastive(model, params.model, phase, dataset, manifest, work / name,
                                   curve_logger(work / CURVES_LOG, name))
        summary[name] = {"steps": result.step, "seconds": round(result.seconds, 1),
                         **{k: round(v, 4) for k, v in result.losses.items()}}
    with rank_zero_dir(out_dir, rank) as tmp:
        save_model(model, tmp / MODEL_FILE)
        if rank == 0:  # the curves are rank 0's log
            write_curves(work / CURVES_LOG, tmp / CURVES_FILE)
        write_resolved(params, SECTIONS, tmp / "config.resolved.yaml")
    if rank == 0:  # train() returned on every rank after its closing barrier: nobody reads the work folder now
        shutil.rmtree(work)
    return {"train_videos": len(dataset.video_ids), **summary}


# ---------------------------------------------------------------------------------------------------------------
# helpers shared by the training and evaluation stages


def work_dir(out_dir: Path) -> Path:
    """Where a stage's resumable checkpoints live: beside its output, which DVC deletes before a re-run."""
    return out_dir.with_name(f"{out_dir.name}.work")


def open_corpus(dataset_dir: Path, features_dir: Path) -> tuple[pd.DataFrame, ClipStore]:
    return read_manifest(dataset_dir).table, ClipStore(features_dir)


def build_model(cfg: ModelConfig, seed: int = 0) -> STGTModel:
    """The model with its initial weights, identical in every process and stage (seeded), with the text layers
    that qformer.trainable_text_layers leaves out frozen: their weights are never saved, so they must re-build."""
    torch.manual_seed(seed)
    model = create_model(cfg)
    if cfg.qformer.trainable_text_layers is not None:
        freeze_text_layers(model, cfg.qformer.trainable_text_layers)
    return model


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


def save_model(model: nn.Module, path: Path) -> None:
    """Everything but the frozen backbone (rebuilt from its own pretrained weights)."""
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    torch.save(state, path)


def load_model(model: nn.Module, path: Path) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(("backbone.", "qa_head."))]
    if missing or unexpected:
        raise StgtError(f"{path} does not fit model: missing {missing[:5]}, unexpected {unexpected[:5]}: "
                        "was it trained with other model params?")


def text_processor(cfg: ModelConfig, max_text_len: int | None) -> TextProcessor:
    # Padding to the longest caption is much cheaper on CPU; cross-rank gathers (VTM) need equal widths.
    padding = "max_length" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "longest"
    return TextProcessor(build_tokenizer(cfg.qformer), max_text_len or cfg.qformer.max_text_len, padding=padding)


def set_threads(threads: int | None) -> None:
    if threads is not None:
        torch.set_num_threads(threads)


def train_config(settings: TrainSettings) -> TrainConfig:
    set_threads(settings.threads)
    return TrainConfig(
        steps=settings.steps, epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.lr,
        min_lr=min(settings.min_lr, settings.lr), warmup_steps=settings.warmup_steps,
        weight_decay=settings.weight_decay, betas=settings.betas, grad_clip=settings.grad_clip, amp=settings.amp,
        seed=settings.seed, checkpoint_every=settings.checkpoint_every, log_every=settings.log_every,
    )


class TwinPairs(Dataset):
    """Train items grouped with their time-reversed twins: item i is [clip, twin] (or [clip] without one).

    With the engine's batch size halved, a batch holds both halves of every pair, the hardest negatives the
    corpus has: the clip and its twin differ only in frame order, and so do their captions.
    """

    def __init__(self, base: VideoTextDataset, manifest: pd.DataFrame) -> None:
        self.base = base
        position = {video_id: i for i, video_id in enumerate(base.video_ids)}
        twin_of = dict(zip(manifest["video_id"], manifest["twin_id"]))
        self.groups: list[list[int]] = []
        seen: set[int] = set()
        for i, video_id in enumerate(base.video_ids):
            if i in seen:
                continue
            twin = position.get(twin_of.get(video_id))
            group = [i] if twin is None or twin in seen else [i, twin]
            seen.update(group)
            self.groups.append(group)

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, i: int) -> list[dict[str, Any]]:
        return [self.base[j] for j in self.groups[i]]

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)


def _collate_groups(groups: list[list[dict[str, Any]]], processor: TextProcessor) -> dict[str, Any]:
    """One batch of the groups' items, with `twin_index`: the batch position of each item's twin, -1 for none."""
    batch = collate_video_text([item for group in groups for item in group], processor)
    twin_index, start = [], 0
    for group in groups:
        twin_index += [start + 1, start] if len(group) == 2 else [-1]
        start += len(group)
    batch["twin_index"] = torch.tensor(twin_index, dtype=torch.long)
    return batch


def weighted_total(losses: Mapping[str, Tensor], names: list[str], weights: Any) -> dict[str, Tensor]:
    """The losses with `total` re-weighted by the phase's weights (the model's own total uses model.loss)."""
    out = {name: losses[name] for name in names}
    out["total"] = sum(getattr(weights, name) * losses[name] for name in names)
    return out


def train_contrastive(model: STGTModel, model_cfg: ModelConfig, phase: ContrastivePhase, dataset: VideoTextDataset,
                      manifest: pd.DataFrame, out_dir: Path, log: LogFn) -> TrainResult:
    """One video-text phase (pretrain stage 1 or 2, retrieval fine-tuning) with resumable checkpoints in out_dir."""
    processor = text_processor(model_cfg, phase.max_text_len)
    data: Dataset = dataset
    cfg = train_config(phase)
    collate: Callable[[list[Any]], Any] = functools.partial(collate_video_text, tokenizer_fn=processor)
    if phase.pair_twins:
        data = TwinPairs(dataset, manifest)
        cfg = cfg.model_copy(update={"batch_size": max(phase.batch_size // 2, 1)})
        collate = functools.partial(_collate_groups, processor=processor)

    def loss_fn(m: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        out = m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], features=batch["video"],
                losses=phase.losses, twin_index=batch.get("twin_index"))
        return weighted_total(out, phase.losses, phase.weights)

    # Frozen text layers: run them once per caption, not every step (a deterministic prefix of the text pass).
    model.cache_frozen_text(model.frozen_text_layers() > 0)
    try:
        return train(model, loss_fn, data, cfg, out_dir, log=log, collate_fn=collate)
    finally:
        model.cache_frozen_text(False)


def curve_logger(path: Path, phase: str) -> LogFn:
    """Append each logged step to a JSON-lines file (a resumed run appends after the steps it already logged)."""
    path.parent.mkdir(parents=True, exist_ok=True)

    def log(step: int, metrics: dict[str, float]) -> None:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"phase": phase, "step": step, **metrics}) + "\n")

    return log


def write_curves(log_path: Path, csv_path: Path) -> None:
    """The JSON-lines log as CSV. A resumed run re-logs the steps after its last checkpoint: keep the last."""
    rows = [json.loads(line) for line in log_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    frame = pd.DataFrame(rows).drop_duplicates(["phase", "step"], keep="last")
    frame.to_csv(csv_path, index=False)
