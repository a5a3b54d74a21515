"""Does `stgt search` rank as the evaluate stage does? Every test caption is searched in an index of the test split;
the share whose own clip comes first is compared with evaluate's t2v R@1 (reports/evaluate/metrics.json).

    stgt index data/prepared --split test --out data/index
    python bench/search_agreement.py --dataset data/prepared --index data/index --report reports/evaluate

Writes bench/results/search_agreement.json: both R@1 figures, queries per second of the search path, the model.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from stgt_pipeline.io.manifest import read_manifest
from stgt_pipeline.search.index import Searcher, VideoIndex
from stgt_pipeline.search.models import DEFAULT_RETRIEVAL

RESULTS = Path(__file__).with_name("results") / "search_agreement.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="data/prepared", help="prepared dataset (default: %(default)s)")
    parser.add_argument("--index", default="data/index", help="index of its test split (default: %(default)s)")
    parser.add_argument("--report", default="reports/evaluate", help="evaluate's folder (default: %(default)s)")
    parser.add_argument("--model", default=DEFAULT_RETRIEVAL, help="default: %(default)s")
    parser.add_argument("--out", default=str(RESULTS), help="JSON result (default: %(default)s)")
    args = parser.parse_args()

    searcher = Searcher(VideoIndex.open(args.index), args.model)
    table = read_manifest(args.dataset).table
    test = table[table["split"] == "test"]
    queries = [(str(c), v) for v, captions in zip(test["video_id"], test["captions"]) for c in captions]
    started = time.perf_counter()
    hits = sum(searcher.search(caption, top=1)[0].video_id == video for caption, video in queries)
    seconds = time.perf_counter() - started
    reported = json.loads((Path(args.report) / "metrics.json").read_text())["retrieval"]
    result = {
        "model": searcher.ref.as_dict(),
        "videos_indexed": len(searcher.index.videos),
        "queries": len(queries),
        "search_R@1": round(100.0 * hits / len(queries), 4),
        "evaluate_R@1": reported["t2v"]["R@1"],
        "evaluate_num_texts": reported["num_texts"],
        "rerank_k": searcher.default_rerank,
        "queries_per_s": round(len(queries) / seconds, 2),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "load_avg_1m": os.getloadavg()[0]},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
