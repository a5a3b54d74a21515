"""Ablations of the embedded default: what the graph, CSAL and frame order each contribute.

Each variant runs pretrain -> finetune (retrieval, qa) -> evaluate on the same prepared corpus and cached
features (the frozen backbone does not change between variants), with params.yaml plus its overrides:

  full         the embedded default
  plain_attn   graph attention replaced by plain attention over all patch tokens (model.stgt.graph_mode=plain)
  vtc_not_csal CSAL replaced by VTC in pretrain stage 2 and retrieval fine-tuning
  mean_pool    frame-order-blind baseline: the mean of the frames' tokens instead of STGT (model.temporal=mean_pool)

Reports t2v R@1, temporal-order pair accuracy, QA accuracy and train time (pretrain + finetune wall seconds) as
bench/results/ablation.{md,json}. Run after the pipeline's data stages (or point --dataset/--features elsewhere):

    python bench/ablation.py                       # ~4 x the training time of `make run` on 2 CPU cores
    python bench/ablation.py --variants full mean_pool --work /tmp/ablation
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
os.environ.setdefault("STGT_TRACKING", "off")

from stgt_pipeline.runner import run_stage  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "full": ("full STGT", []),
    "plain_attn": ("graph attention -> plain attention", ["model.stgt.graph_mode=plain"]),
    "vtc_not_csal": ("CSAL -> VTC",
                     ["pretrain.stage2.losses=[vtc,vtm,twin]", "finetune.retrieval.losses=[vtc,vtm,twin]"]),
    "mean_pool": ("frame-order-blind mean pool", ["model.temporal=mean_pool"]),
}


def run_variant(name: str, overrides: list[str], args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.work) / name
    data = {"dataset": args.dataset, "features": args.features}
    ckpt = {"pretrained": work / "pretrain", "retrieval": work / "finetune" / "retrieval",
            "qa": work / "finetune" / "qa"}
    common = {"params_path": args.params, "overrides": [*args.set, *overrides]}
    started = time.perf_counter()
    pre = run_stage("pretrain", **common, inputs=data, outputs={"checkpoint": ckpt["pretrained"]},
                    metrics_path=work / "pretrain.json")
    fine = run_stage("finetune", **common, inputs={**data, "pretrained": ckpt["pretrained"]},
                     outputs={"retrieval": ckpt["retrieval"], "qa": ckpt["qa"]}, metrics_path=work / "finetune.json")
    train_seconds = time.perf_counter() - started
    ev = run_stage("evaluate", **common, inputs={**data, **ckpt}, outputs={"report": work / "evaluate"},
                   metrics_path=work / "evaluate.json")
    return {"variant": name, "description": VARIANTS[name][0], "overrides": overrides,
            "t2v_R@1": round(ev["t2v_R@1"], 2), "chance_R@1": round(ev["chance_R@1"], 2),
            "pair_accuracy": round(ev["pair_accuracy"], 2), "qa_accuracy": round(ev["qa_accuracy"], 2),
            "qa_majority_accuracy": round(ev["qa_majority_accuracy"], 2),
            "train_seconds": round(train_seconds, 1),
            "train_seconds_by_stage": {"pretrain": pre["seconds"], "finetune": fine["seconds"]}}


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| variant | t2v R@1 (%) | temporal-order pair acc. (%) | QA acc. (%) | train time (s) |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['description']} | {r['t2v_R@1']:.1f} | {r['pair_accuracy']:.1f} | {r['qa_accuracy']:.1f} "
                     f"| {r['train_seconds']:.0f} |")
    first = rows[0]
    lines.append("")
    lines.append(f"Test split: chance R@1 {first['chance_R@1']:.2f}%; QA majority-answer accuracy "
                 f"{first['qa_majority_accuracy']:.1f}%. Train time = pretrain + finetune wall seconds on "
                 f"{platform.machine()} with {os.cpu_count()} CPUs (shared machine: noisy).")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--dataset", default="data/prepared")
    parser.add_argument("--features", default="data/features")
    parser.add_argument("--work", default="data/ablation", help="scratch folder for the variants' checkpoints")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every variant")
    parser.add_argument("--output", default=str(RESULTS / "ablation"), help="writes <output>.md and <output>.json")
    args = parser.parse_args()
    rows = []
    for name in args.variants:
        rows.append(run_variant(name, VARIANTS[name][1], args))
        print(json.dumps(rows[-1]), flush=True)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = markdown(rows)
    out.with_suffix(".md").write_text("# STGT ablation on the embedded default\n\n" + table, encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps({"params": args.params, "set": args.set, "results": rows},
                                                   indent=2) + "\n", encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
