"""Stage `pretrain`: stage 1 (VTC + VTM + VTG), then stage 2 (CSAL + VTM + VTG) from stage 1's weights.

stgt-reference §3.1: the paper labels VTC "Stage 1" and CSAL "Stage 2"; lengths and loss weights are params
(pretrain.stage1 / pretrain.stage2). The model trains on the frozen-backbone features build_graphs cached.

Resuming: each phase trains with stgt_model.engine.train into `<checkpoint>.work/<phase>/`, a folder beside the
output that DVC does not delete before re-running the stage. A killed run, re-run with the same params, resumes
from its last checkpoint and ends with the same weights; the finished output is then written whole (atomic_dir)
and the work folder removed. Re-run with other params, it stops with one line naming the folder: `--restart`
(`STGT_RESTART=1`) deletes it and starts over. Output folder:
  model.pt              trainable weights + buffers (the frozen backbone comes from its constructor)
  curves.csv            step, phase, loss/* and lr of every logged step (the evaluate stage plots it)
  config.resolved.yaml  the model and pretrain sections

What the training stages share (model building, the corpus, the video-text phase, curves) is stgt_pipeline.training.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from stgt_model.data import VideoTextDataset
from stgt_model.engine import init_distributed
from stgt_pipeline.io.atomic import rank_zero_dir
from stgt_pipeline.params import ContrastivePhase, Params, write_resolved
from stgt_pipeline.training import (
    CURVES_FILE,
    CURVES_LOG,
    MODEL_FILE,
    build_model,
    curve_logger,
    open_corpus,
    open_work_dir,
    resuming,
    save_model,
    train_contrastive,
    write_curves,
)

SECTIONS = ["model", "pretrain"]
PHASES = ("stage1", "stage2")


def run(params: Params, inputs: dict[str, Path], outputs: dict[str, Path]) -> dict[str, Any]:
    cfg = params.pretrain
    out_dir = Path(outputs["checkpoint"])
    manifest, store = open_corpus(inputs["dataset"], inputs["features"])
    model = build_model(params.model)
    rank, _, _ = init_distributed()  # under torchrun: every rank trains, rank 0 alone writes
    work = open_work_dir(out_dir, rank)
    summary: dict[str, Any] = {}
    for name in PHASES:
        phase: ContrastivePhase = getattr(cfg, name)
        dataset = VideoTextDataset(store, manifest, "train", caption_mode="random", seed=phase.seed)
        with resuming(work):
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
