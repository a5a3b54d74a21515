"""Stage `evaluate`: retrieval both ways, the temporal-order probe and video QA on the test split.

Retrieval follows the reference protocol (stgt-reference §4.2): coarse ITC scores (max over queries, no
temperature), the top evaluate.k_test candidates of every query re-scored by the matching head, final score =
p_match + similarity. Ranks use evaluate.compat:
- tie_aware (default, metrics-reference §2.6 revised): candidates beyond the top k keep their coarse similarity,
  so they rank in coarse order below the re-ranked ones and R@5, R@10, MdR and MnR mean something at any k_test.
  A tie is scored by its expectation under random tie-breaking: with b candidates strictly better and m tied, rank
  b + m/2 and R@k hit clamp((k - b) / (m + 1), 0, 1) (a ground truth tied with one other at the top is half a hit
  toward R@1); a video with several captions takes the best one.
- clip4clip / albef: exactly as those code bases, including the -100 they put in every cell beyond the top k
  (all those candidates tie, so R@k for k > k_test, MdR and MnR there depend on how ties fall).
The recall-at-k plot follows the same convention. Inference-time dual softmax (evaluate.dual_softmax) is reported
beside the plain numbers, never instead of them. The maths is stgt_model.metrics; this stage only encodes and
writes.

Temporal-order probe: each test clip against its time-reversed twin (split `probe`, linked by twin_id). A pair
passes when both captions score higher, with the same final score, on their own clip; a tie fails. extract_frames
samples each twin on the mirror of its clip's frame indices, so the two show the same moments in opposite order
and a model blind to frame order sees the same pictures, up to the codec's noise (the twin is a file of its own),
in both. The same figures on the coarse similarity alone are reported under `coarse_only` (a diagnostic, not the
headline).

QA: accuracy over all test questions, per question type, with out-of-vocabulary answers counted wrong, next to
always answering the most frequent training answer.

Output folder (written whole):
  metrics.json                       every number (DVC metrics)
  ranks_t2v.parquet, ranks_v2t.parquet   per-query rank (0-based) under evaluate.compat
  probe.parquet, qa_predictions.parquet
  plots/recall_at_k.csv (k, t2v, v2t) + .png, plots/curves.csv (every phase) + training_curves.png,
  plots/curves/<phase>.csv (one per training phase, stages.TRAINING_PHASES): DVC plots, one line per direction and
  per phase
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from stgt_pipeline.components.evaluate.plots import plot_curves, plot_recall_at_k
from stgt_pipeline.io.atomic import atomic_dir
from stgt_pipeline.params import EvaluateConfig, Params, write_resolved
from stgt_pipeline.scoring import evaluate_probe, evaluate_qa, evaluate_retrieval
from stgt_pipeline.stages import CURVES_DIR, EVALUATE_PLOTS, RETRIEVAL_DIRECTIONS, TRAINING_PHASES
from stgt_pipeline.tracking import runs
from stgt_pipeline.training import (
    SKIPPED_FILE,
    last_step,
    open_corpus,
    read_curves,
    set_threads,
    text_processor,
    trained_model,
    trained_qa_model,
)

SECTIONS = ["model", "finetune", "evaluate"]


def run(params: Params, inputs: dict[str, Path], outputs: dict[str, Path]) -> dict[str, Any]:
    cfg: EvaluateConfig = params.evaluate
    manifest, store = open_corpus(inputs["dataset"], inputs["features"])
    out_dir = Path(outputs["report"])
    set_threads(cfg.threads)
    torch.set_grad_enabled(False)
    try:
        metrics: dict[str, Any] = {}
        tables: dict[str, pd.DataFrame] = {}
        retrieval_dir, qa_dir = Path(inputs["retrieval"]), Path(inputs["qa"])
        if skipped(retrieval_dir, metrics, "retrieval", "temporal_order"):
            recall_curve = pd.DataFrame(columns=["k", "direction", "recall"])
        else:
            model = trained_model(params.model, retrieval_dir).eval()
            processor = text_processor(params.model, cfg.max_text_len)
            metrics["retrieval"], ranks, recall_curve = evaluate_retrieval(model, processor, store, manifest, cfg)
            tables |= {f"ranks_{direction}": frame for direction, frame in ranks.items()}
            metrics["temporal_order"], tables["probe"] = evaluate_probe(model, processor, store, manifest)
        if not skipped(qa_dir, metrics, "qa"):
            qa_model, vocab = trained_qa_model(params.model, qa_dir)
            qa_processor = text_processor(params.model, params.finetune.qa.max_text_len)
            metrics["qa"], tables["qa_predictions"] = evaluate_qa(qa_model.eval(), vocab, qa_processor, store,
                                                                  manifest, cfg.batch_size)
    finally:
        torch.set_grad_enabled(True)
    log_at_checkpoint_steps(metrics, inputs)

    with atomic_dir(out_dir) as tmp:
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        for name, frame in tables.items():
            frame.to_parquet(tmp / f"{name}.parquet", index=False)
        plots = tmp / "plots"
        plots.mkdir()
        recall_by_direction(recall_curve).to_csv(plots / "recall_at_k.csv", index=False)
        plot_recall_at_k(recall_curve, plots / "recall_at_k.png")
        curves = read_curves({"pretrain": inputs["pretrained"], "retrieval": inputs["retrieval"],
                                  "qa": inputs["qa"]})
        curves.to_csv(plots / "curves.csv", index=False)
        write_phase_curves(curves, plots / Path(CURVES_DIR).relative_to(EVALUATE_PLOTS))
        plot_curves(curves, plots / "training_curves.png")
        write_resolved(params, SECTIONS, tmp / "config.resolved.yaml")
    return headline(metrics)


def log_at_checkpoint_steps(metrics: dict[str, Any], inputs: dict[str, Path]) -> None:
    """Each task's numbers in the stage's MLflow run at the step its checkpoint ended on, beside that phase's
    training curves: `retrieval/eval/t2v.R_1` (and the temporal-order probe, which scores the same model) at the last
    retrieval fine-tuning step, `qa/eval/accuracy` at the last QA step. The summary's headline is logged at step 0
    as for every stage (runner)."""
    tracker = runs.current()
    sections = {"retrieval": {**metrics.get("retrieval", {}), "temporal_order": metrics.get("temporal_order", {})},
                "qa": metrics.get("qa", {})}
    for task, section in sections.items():
        step = last_step(inputs[task], task)
        numbers = runs.numeric_metrics(section)
        if step is not None and numbers:
            tracker.log_metrics({f"{task}/eval/{key}": value for key, value in numbers.items()}, step=step)


def recall_by_direction(recall: pd.DataFrame) -> pd.DataFrame:
    """k, t2v, v2t: a column per direction, which DVC plots draws as a line each (the long table's rows would
    merge into one)."""
    wide = recall.pivot(index="k", columns="direction", values="recall") if len(recall) else pd.DataFrame()
    return wide.reindex(columns=list(RETRIEVAL_DIRECTIONS)).rename_axis(index="k", columns=None).reset_index()


def write_phase_curves(curves: pd.DataFrame, folder: Path) -> None:
    """`<phase>.csv` per training phase (stages.TRAINING_PHASES: pretrain-stage1, ..., finetune-qa), its logged
    steps in order, so that DVC plots draws each phase as its own line; a phase that did not train (a skipped
    task) gets the header alone."""
    folder.mkdir(parents=True)
    columns = list(dict.fromkeys(["step", "loss/total", "lr", *(c for c in curves.columns if c not in ("run", "phase"))]))
    for name in TRAINING_PHASES:
        phase = name.split("-", 1)[1]  # pretrain-stage1 -> stage1: phase names are unique across the stages
        rows = curves[curves["phase"] == phase].sort_values("step").reindex(columns=columns)
        # A column another phase logged (its own loss terms) is left out rather than written empty.
        keep = [c for c in columns if c in ("step", "loss/total", "lr") or rows[c].notna().any()]
        rows[keep].to_csv(folder / f"{name}.csv", index=False)


def skipped(folder: Path, metrics: dict[str, Any], *keys: str) -> bool:
    """A task finetune skipped (the corpus has nothing for it): its metrics say why."""
    marker = folder / SKIPPED_FILE
    if not marker.exists():
        return False
    for key in keys:
        metrics[key] = json.loads(marker.read_text(encoding="utf-8"))
    return True


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The stage summary: the numbers a run is judged by."""
    out: dict[str, Any] = {}
    retrieval, probe, qa = metrics["retrieval"], metrics["temporal_order"], metrics["qa"]
    if "t2v" in retrieval:
        out |= {"t2v_R@1": retrieval["t2v"]["R@1"], "t2v_R@5": retrieval["t2v"]["R@5"],
                "t2v_R@10": retrieval["t2v"]["R@10"], "v2t_R@1": retrieval["v2t"]["R@1"],
                "chance_R@1": retrieval["chance_R@1"]}
    if "pair_accuracy" in probe:
        out["pair_accuracy"] = probe["pair_accuracy"]
    if "accuracy" in qa:
        out |= {"qa_accuracy": qa["accuracy"], "qa_majority_accuracy": qa["majority_accuracy"]}
    return out
