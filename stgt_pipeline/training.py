"""What the training and evaluation stages share: the checkpoint folder they exchange, the model built the same way in
every stage and process, the corpus, and the video-text training phase (pretrain stages 1 and 2, retrieval
fine-tuning).

A training stage's output folder (written whole by the stage; resumable engine checkpoints live in `work_dir`
meanwhile, which DVC does not delete before a re-run; `STGT_RESTART=1`, which `stgt <stage> --restart` sets, empties
it first):
  model.pt              trainable weights and buffers (the frozen backbone comes from its own constructor)
  curves.csv            step, phase, loss/*, lr, grad_norm, throughput of every logged step (evaluate plots it;
                        the same numbers reach the stage's MLflow run as <phase>/<metric>: curve_logger)
  ans2label.json        qa only: the answer vocabulary
  skipped.json          instead of all the above, when the corpus has nothing for the task
  config.resolved.yaml
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import Dataset

from stgt_model.config import ModelConfig
from stgt_model.data import ClipStore, TwinPairs, VideoTextDataset, collate_twin_groups, collate_video_text
from stgt_model.engine import CheckpointMismatch, LogFn, TrainResult, train
from stgt_model.errors import ConfigurationError
from stgt_model.factory import create_model
from stgt_model.model import STGTModel
from stgt_model.qa import AnswerVocab
from stgt_model.qformer import TextProcessor, build_tokenizer
from stgt_pipeline.errors import StgtError
from stgt_pipeline.io.manifest import read_manifest
from stgt_pipeline.params import ContrastivePhase
from stgt_pipeline.tracking import runs

MODEL_FILE = "model.pt"
CURVES_FILE = "curves.csv"
CURVES_LOG = "curves.jsonl"
VOCAB_FILE = "ans2label.json"
SKIPPED_FILE = "skipped.json"  # a task the data cannot support
# An environment variable rather than a param: it says how to run, not what to train (params_hash, dvc.lock and
# the Kubeflow pipeline's parameters stay as they are), and dvc passes it on: `STGT_RESTART=1 dvc repro pretrain`.
RESTART_ENV = "STGT_RESTART"


def work_dir(out_dir: Path) -> Path:
    """Where a stage's resumable checkpoints live: beside its output, which DVC deletes before a re-run."""
    return out_dir.with_name(f"{out_dir.name}.work")


def restart_requested() -> bool:
    return os.environ.get(RESTART_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def open_work_dir(out_dir: Path, rank: int = 0) -> Path:
    """The stage's work folder, emptied first when a restart is asked for (a resumable run is otherwise resumed)."""
    work = work_dir(out_dir)
    if restart_requested():
        if rank == 0 and work.exists():
            shutil.rmtree(work)
            print(f"restart: removed {work}/", file=sys.stderr)
        if dist.is_initialized():
            dist.barrier()  # no rank may read a checkpoint rank 0 is deleting
    return work


@contextlib.contextmanager
def resuming(work: Path) -> Iterator[None]:
    """Training into `work`: a run left there with other settings becomes one line naming it and the way out."""
    try:
        yield
    except CheckpointMismatch as exc:
        raise ConfigurationError(
            f"{work}/ holds an unfinished run with other settings ({exc.detail}): add --restart to delete it and "
            f"start over (under dvc: {RESTART_ENV}=1 dvc repro), or put the settings back to resume it"
        ) from None


def open_corpus(dataset_dir: Path, features_dir: Path) -> tuple[pd.DataFrame, ClipStore]:
    return read_manifest(dataset_dir).table, ClipStore(features_dir)


# ---------------------------------------------------------------------------------------------------------------
# the model


def build_model(cfg: ModelConfig, seed: int = 0) -> STGTModel:
    """The model with its initial weights, identical in every process and stage (seeded)."""
    torch.manual_seed(seed)
    return create_model(cfg)


def qa_model_config(cfg: ModelConfig, num_answers: int) -> ModelConfig:
    """The model config with a QA head of `num_answers` classes (sized by the answer vocabulary)."""
    return cfg.model_copy(update={"qa": cfg.qa.model_copy(update={"num_answers": num_answers})})


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


def trained_model(cfg: ModelConfig, folder: Path) -> STGTModel:
    """The model of `cfg` with the weights a training stage wrote to `folder`."""
    model = build_model(cfg)
    load_model(model, Path(folder) / MODEL_FILE)
    return model


def trained_qa_model(cfg: ModelConfig, folder: Path) -> tuple[STGTModel, AnswerVocab]:
    """The QA model the finetune stage wrote to `folder`, with its answer vocabulary (which sizes its head)."""
    vocab = AnswerVocab.from_dict(json.loads((Path(folder) / VOCAB_FILE).read_text(encoding="utf-8")))
    return trained_model(qa_model_config(cfg, len(vocab)), folder), vocab


def text_processor(cfg: ModelConfig, max_text_len: int | None) -> TextProcessor:
    # Padding to the longest caption is much cheaper on CPU; cross-rank gathers (VTM) need equal widths.
    padding = "max_length" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "longest"
    return TextProcessor(build_tokenizer(cfg.qformer), max_text_len or cfg.qformer.max_text_len, padding=padding)


def set_threads(threads: int | None) -> None:
    if threads is not None:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------------------------
# the video-text phase


def weighted_total(losses: Mapping[str, Tensor], names: list[str], weights: Any) -> dict[str, Tensor]:
    """The losses with `total` re-weighted by the phase's weights (the model's own total uses model.loss)."""
    out = {name: losses[name] for name in names}
    out["total"] = sum(getattr(weights, name) * losses[name] for name in names)
    return out


def train_contrastive(model: STGTModel, model_cfg: ModelConfig, phase: ContrastivePhase, dataset: VideoTextDataset,
                      manifest: pd.DataFrame, out_dir: Path, log: LogFn) -> TrainResult:
    """One video-text phase (pretrain stage 1 or 2, retrieval fine-tuning) with resumable checkpoints in out_dir."""
    set_threads(phase.threads)
    processor = text_processor(model_cfg, phase.max_text_len)
    data: Dataset = dataset
    cfg = phase
    collate: Callable[[list[Any]], Any] = functools.partial(collate_video_text, tokenizer_fn=processor)
    if phase.pair_twins:
        data = TwinPairs(dataset, manifest)
        cfg = phase.model_copy(update={"batch_size": max(phase.batch_size // 2, 1)})  # pairs: two clips an item
        collate = functools.partial(collate_twin_groups, tokenizer_fn=processor)

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


# ---------------------------------------------------------------------------------------------------------------
# training curves


def curve_logger(path: Path, phase: str) -> LogFn:
    """The engine's log hook for one training phase: each logged step appended to a JSON-lines file (a resumed run
    appends after the steps it already logged) and handed to the stage's tracker under `<phase>/<metric>`
    (`stage1/loss/vtc`, `retrieval/lr`, `qa/grad_norm`, ...), so that the phases of one run (pretrain's two) keep
    curves of their own. The tracker batches them (runs.Tracker.log_step_metrics); the engine calls the hook on
    rank 0 only."""
    path.parent.mkdir(parents=True, exist_ok=True)

    def log(step: int, metrics: dict[str, float]) -> None:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"phase": phase, "step": step, **metrics}) + "\n")
        runs.current().log_step_metrics({f"{phase}/{name}": value for name, value in metrics.items()}, step)

    return log


def last_step(folder: Path, phase: str) -> int | None:
    """The optimizer step a training stage's output ends at (its last logged step of `phase`), None when unknown."""
    path = Path(folder) / CURVES_FILE
    if not path.exists():
        return None
    steps = pd.read_csv(path, usecols=["phase", "step"]).query("phase == @phase")["step"]
    return int(steps.max()) if len(steps) else None


def write_curves(log_path: Path, csv_path: Path) -> None:
    """The JSON-lines log as CSV. A resumed run re-logs the steps after its last checkpoint: keep the last."""
    rows = [json.loads(line) for line in log_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    frame = pd.DataFrame(rows).drop_duplicates(["phase", "step"], keep="last")
    frame.to_csv(csv_path, index=False)


def read_curves(folders: Mapping[str, Path]) -> pd.DataFrame:
    """Every training run's logged losses, one row per (run, phase, step)."""
    frames = []
    for run_name, folder in folders.items():
        path = Path(folder) / CURVES_FILE
        if path.exists():
            frames.append(pd.read_csv(path).assign(run=run_name))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["run", "phase", "step"])
