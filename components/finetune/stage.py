"""Stage `finetune`: from the pre-trained weights, one run per task in finetune.tasks.

- retrieval: CSAL + VTM (VTG optional: add it to finetune.retrieval.losses), as the released fine-tuning configs
  (stgt-reference §3.2, §7.8).
- qa: answer classification over the top-k training answers with ALPRO's MLP head on the matching pass
  (§4.3, §7.11); questions whose answer is outside the vocabulary carry no training signal.

dvc.yaml runs each task as its own `foreach` item (`--set finetune.tasks=[<task>]`), so one task's params or
code can change without re-training the other; the Kubeflow pipeline runs one task per item too. Each task's output
folder (written whole; resumable checkpoints in `<folder>.work/` meanwhile, which `--restart` deletes first, see
stgt_pipeline/training.py):
  model.pt, curves.csv, config.resolved.yaml    and, for qa, ans2label.json (the answer vocabulary)
  or only skipped.json when the corpus has nothing for the task (no captions, or no QA pairs)
A benchmark preset (prepare.preset) sets the reference recipe: epochs, lr, batch size, text length.
"""
from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
from torch import Tensor, nn

from stgt_model.data import ClipStore, VideoQADataset, VideoTextDataset, collate_video_qa
from stgt_model.engine import LogFn, TrainResult, init_distributed, train
from stgt_model.model import STGTModel
from stgt_model.qa import AnswerVocab, qa_loss
from stgt_pipeline.io.atomic import rank_zero_dir
from stgt_pipeline.params import Params, QAPhase, write_resolved
from stgt_pipeline.training import (
    CURVES_FILE,
    CURVES_LOG,
    MODEL_FILE,
    SKIPPED_FILE,
    VOCAB_FILE,
    curve_logger,
    open_corpus,
    open_work_dir,
    qa_model_config,
    resuming,
    save_model,
    text_processor,
    train_contrastive,
    trained_model,
    write_curves,
)

SECTIONS = ["model", "finetune"]


def run(params: Params, inputs: dict[str, Path], outputs: dict[str, Path]) -> dict[str, Any]:
    manifest, store = open_corpus(inputs["dataset"], inputs["features"])
    rank, _, _ = init_distributed()  # under torchrun: every rank trains, rank 0 alone writes
    summary: dict[str, Any] = {}
    for task in params.finetune.tasks:
        out_dir = Path(outputs[task])
        missing = missing_data(task, manifest)
        if missing:
            # A caption-only benchmark has no QA to learn (and a QA set may have no captions): say so, and let
            # evaluate skip the task, rather than failing the pipeline.
            with rank_zero_dir(out_dir, rank) as tmp:
                (tmp / SKIPPED_FILE).write_text(json.dumps({"skipped": missing}) + "\n", encoding="utf-8")
            summary[task] = {"skipped": missing}
            continue
        work = open_work_dir(out_dir, rank)
        curves = curve_logger(work / CURVES_LOG, task)
        with rank_zero_dir(out_dir, rank) as tmp, resuming(work):
            if task == "retrieval":
                model, result = finetune_retrieval(params, inputs["pretrained"], manifest, store, work, curves)
            else:
                model, result, vocab = finetune_qa(params, inputs["pretrained"], manifest, store, work, curves)
                (tmp / VOCAB_FILE).write_text(json.dumps(vocab.to_dict(), indent=1), encoding="utf-8")
            save_model(model, tmp / MODEL_FILE)
            if rank == 0:  # the curves are rank 0's log
                write_curves(work / CURVES_LOG, tmp / CURVES_FILE)
            write_resolved(params, SECTIONS, tmp / "config.resolved.yaml")
        if rank == 0:
            shutil.rmtree(work)
        summary[task] = {"steps": result.step, "seconds": round(result.seconds, 1),
                         **{k: round(v, 4) for k, v in result.losses.items()}}
    return summary


def missing_data(task: str, manifest: pd.DataFrame) -> str | None:
    train = manifest[manifest["split"] == "train"]
    if task == "retrieval" and not any(len(c) for c in train["captions"] if c is not None):
        return "the train split has no captions"
    if task == "qa" and not any(len(q) for q in train["qa"] if q is not None):
        return "the train split has no question-answer pairs"
    return None


def finetune_retrieval(params: Params, pretrained_dir: Path, manifest: pd.DataFrame, store: ClipStore, work: Path,
                       log: LogFn) -> tuple[STGTModel, TrainResult]:
    phase = params.finetune.retrieval
    model = trained_model(params.model, pretrained_dir)
    dataset = VideoTextDataset(store, manifest, "train", caption_mode="random", seed=phase.seed)
    return model, train_contrastive(model, params.model, phase, dataset, manifest, work / "retrieval", log)


def finetune_qa(params: Params, pretrained_dir: Path, manifest: pd.DataFrame, store: ClipStore, work: Path,
                log: LogFn) -> tuple[STGTModel, TrainResult, AnswerVocab]:
    phase: QAPhase = params.finetune.qa
    train_rows = manifest[manifest["split"] == "train"]
    answers = [qa["answer"] for qas in train_rows["qa"] if qas is not None for qa in qas]
    vocab = AnswerVocab.build(answers, phase.answer_vocab_size)
    # The head is sized by the vocabulary built here; the pre-trained weights have none (load_model allows it).
    cfg = qa_model_config(params.model, len(vocab))
    model = trained_model(cfg, pretrained_dir)
    dataset = VideoQADataset(store, manifest, "train", vocab)
    processor = text_processor(cfg, phase.max_text_len)

    def loss_fn(m: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        logits = m(batch["input_ids"], batch["attention_mask"], batch["video"])
        return {"total": qa_loss(logits, batch["answer_index"], vocab.unknown_index)}

    result = train(QAForward(model), loss_fn, dataset, phase, work / "qa", log=log,
                   collate_fn=functools.partial(collate_video_qa, tokenizer_fn=processor))
    return model, result, vocab


class QAForward(nn.Module):
    """qa_logits as `forward`: under DDP gradients are synchronised only for what runs through forward."""

    def __init__(self, model: STGTModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor, features: Tensor) -> Tensor:
        return self.model.qa_logits(input_ids, attention_mask, features=features)
