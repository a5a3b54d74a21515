"""How fast search and indexing are: the vector search's growth with the index, the whole search path, indexing.

Three measurements, each repeated (--repeats, default 3; mean and spread reported) with its machine (CPU model,
cores, torch and faiss threads, load average) and seed, written to bench/results/search.json:

1. growth (always): the exact vector search alone, `VideoIndex.coarse` (stgt_pipeline/search/index.py: faiss-cpu
   IndexFlatIP over every video's Q query vectors, the best top*Q vectors, max over each video's), against synthetic
   indexes of 1k, 10k and 100k VIDEOS, with faiss's default OpenMP threads and with 1 (--faiss-threads). Each video has Q vectors of E dims (random unit vectors, seeded), so the
   faiss index holds videos x Q vectors (100k videos at Q=32, E=256: 3.2M vectors, 3.3 GB of float32). Q and E are
   those of --index's index.json when given, else Q=32, E=256 (the reference model). One query vector per call,
   as a search makes; latency per query and queries per second.
2. search path (--index DIR, and the model it was built with: --model, default models:/stgt-retrieval@champion,
   with MLFLOW_TRACKING_URI pointing at the registry): `Searcher.search` on that index, the text encoding alone,
   and the whole search with no re-ranking (text encode + vector search) and with the model's default re-ranking.
3. indexing (--index-source SOURCE with --model): `stgt index`'s build_index over SOURCE (a folder, a prepared
   dataset, an s3:// prefix; --split to narrow a dataset) into a fresh folder each repeat: clips per second
   embedded (decode + sampling + frozen backbone + model; the index's own timer) and the wall time of the build.

    python bench/search.py                                   # growth only: ~5 minutes and 4 GB on 2 cores
    python bench/search.py --sizes 1000,10000                # smaller
    python bench/search.py --index data/index --index-source data/prepared --split test   # all three
Run it on a quiet machine: other busy processes stretch every number (the load average is recorded).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "search.json"
DEFAULT_Q, DEFAULT_E = 32, 256
QUERIES = ["a red circle moves left", "a blue square appears", "a green triangle disappears",
           "two shapes move towards each other", "a yellow circle changes colour", "a square moves up then down",
           "the circle grows", "a small shape moves right slowly"]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    import faiss
    import torch

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "faiss_threads": faiss.omp_get_max_threads(), "load_average": [round(x, 2) for x in os.getloadavg()],
            "platform": platform.platform(), "python": platform.python_version(),
            "versions": {p: version(p) for p in ("faiss-cpu", "numpy", "torch")}}


def spread(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation, min and max of per-repeat figures."""
    return {"mean": round(statistics.fmean(values), 4),
            "stdev": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
            "min": round(min(values), 4), "max": round(max(values), 4)}


def timed(fn: Callable[[], Any], calls: int) -> float:
    """Seconds per call of `fn`, over `calls` calls."""
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - started) / calls


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    rows = rng.standard_normal((n, dim), dtype=np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# 1. growth of the vector search alone


def synthetic_index(videos: int, queries: int, dim: int, rng: np.random.Generator) -> Any:
    """A VideoIndex whose faiss index holds `videos` x `queries` random unit vectors (added in chunks, so only the
    index itself is held in memory), searched by the real `VideoIndex.coarse`."""
    import faiss

    from stgt_pipeline.search.index import VideoIndex

    flat = faiss.IndexFlatIP(dim)
    chunk = max(1, 200_000 // queries)  # videos per chunk
    for start in range(0, videos, chunk):
        flat.add(unit_rows(rng, min(chunk, videos - start) * queries, dim))

    class SyntheticIndex(VideoIndex):
        @property
        def faiss_index(self) -> Any:
            return flat

    table = pd.DataFrame({"video_id": [f"v{i:06d}" for i in range(videos)]})
    return SyntheticIndex(Path(tempfile.gettempdir()), {"queries": queries, "embed_dim": dim}, table)


def growth(sizes: list[int], queries: int, dim: int, top: int, calls: int, repeats: int, seed: int,
           thread_counts: list[int]) -> dict:
    import faiss

    rng = np.random.default_rng(seed)
    probes = unit_rows(rng, calls, dim)
    default_threads = faiss.omp_get_max_threads()
    rows = []
    for videos in sizes:
        started = time.perf_counter()
        index = synthetic_index(videos, queries, dim, rng)
        build_s = time.perf_counter() - started
        row: dict[str, Any] = {"videos": videos, "vectors": videos * queries, "index_bytes": videos * queries * dim * 4,
                               "build_seconds": round(build_s, 2), "by_faiss_threads": {}}
        for threads in thread_counts:
            faiss.omp_set_num_threads(threads)
            index.coarse(probes[0], top)  # warm-up
            per_query = []
            for _ in range(repeats):
                it = iter(range(calls))
                per_query.append(timed(lambda: index.coarse(probes[next(it)], top), calls))
            row["by_faiss_threads"][str(threads)] = {"ms_per_query": spread([s * 1000 for s in per_query]),
                                                     "queries_per_second": spread([1 / s for s in per_query])}
            print(f"growth: {videos:>7} videos ({videos * queries:>8} vectors), {threads} faiss thread(s): "
                  f"{row['by_faiss_threads'][str(threads)]['ms_per_query']['mean']:8.2f} ms/query", file=sys.stderr)
        faiss.omp_set_num_threads(default_threads)
        rows.append(row)
        del index
    return {"what": "VideoIndex.coarse alone (faiss IndexFlatIP, exact): one query vector per call, top "
                    f"{top} videos from the best {top}*Q vectors, max over each video's Q vectors",
            "vectors_means": "videos x Q (each video contributes Q vectors of E dims)",
            "faiss_threads": f"{default_threads} is faiss's default here (what `stgt search` uses); each size is "
                             "also timed with the other counts listed",
            "Q": queries, "E": dim, "top": top, "calls_per_repeat": calls, "repeats": repeats, "seed": seed,
            "data": "random unit vectors (numpy default_rng(seed), standard normal, L2-normalised)",
            "sizes": rows}


# ---------------------------------------------------------------------------------------------------------------
# 2. the search path, on a real index with its model


def search_path(index_dir: Path, model_uri: str, calls: int, repeats: int) -> dict:
    from stgt_pipeline.search.index import Searcher, VideoIndex

    searcher = Searcher(VideoIndex.open(index_dir), model_uri)
    texts = [QUERIES[i % len(QUERIES)] for i in range(calls)]
    searcher.search(texts[0], top=10, rerank=0)  # warm-up: first calls pay for lazy loading
    figures: dict[str, list[float]] = {"encode_text": [], "search_no_rerank": [], "search_default_rerank": []}
    for _ in range(repeats):
        for name, fn in (("encode_text", lambda q: searcher.text_feature(q)),
                         ("search_no_rerank", lambda q: searcher.search(q, top=10, rerank=0)),
                         ("search_default_rerank", lambda q: searcher.search(q, top=10))):
            it = iter(texts)
            figures[name].append(timed(lambda: fn(next(it)), calls))
    info = searcher.index.info
    return {"index": str(index_dir), "model": info.get("model"), "videos": len(searcher.index.videos),
            "Q": info.get("queries"), "E": info.get("embed_dim"), "default_rerank": searcher.default_rerank,
            "calls_per_repeat": calls, "repeats": repeats, "queries": QUERIES,
            **{name: {"ms_per_query": spread([s * 1000 for s in values]),
                      "queries_per_second": spread([1 / s for s in values])} for name, values in figures.items()}}


# ---------------------------------------------------------------------------------------------------------------
# 3. indexing


def indexing(source: str, model_uri: str, split: str | None, repeats: int) -> dict:
    from stgt_pipeline.search.index import build_index

    clips_per_s, walls, summaries = [], [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="bench-index-") as tmp:
            started = time.perf_counter()
            summary = build_index(source, Path(tmp) / "index", model_uri, split, progress=False)
            walls.append(time.perf_counter() - started)
        summaries.append(summary)
        embedded = summary["embedded_now"]
        clips_per_s.append(embedded / summary["seconds_embedding"] if summary["seconds_embedding"] else 0.0)
        print(f"indexing: {embedded} clips in {summary['seconds_embedding']} s", file=sys.stderr)
    return {"source": source, "split": split, "model": summaries[-1]["model"], "repeats": repeats,
            "clips": summaries[-1]["videos"], "embedded": summaries[-1]["embedded_now"],
            "quarantined": summaries[-1]["quarantined"],
            "what": "build_index into a fresh folder: clips per second over the embedding loop (decode, sample, "
                    "frozen backbone, model, thumbnail; the index's seconds_embedding), and the whole build's wall "
                    "seconds (listing, model loading, writing the index too)",
            "clips_per_second": spread(clips_per_s), "wall_seconds": spread(walls)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000", help="indexed videos for the growth curve")
    parser.add_argument("--index", type=Path, default=None, help="a built index: its Q and E, and the search path")
    parser.add_argument("--model", default=None, help="registered retrieval model (default: the index's own URI, "
                        "else models:/stgt-retrieval@champion)")
    parser.add_argument("--index-source", default=None, help="videos to time `stgt index` on (needs a model)")
    parser.add_argument("--split", default=None, help="only this split of a prepared dataset (--index-source)")
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--calls", type=int, default=20, help="queries per repeat")
    parser.add_argument("--faiss-threads", default="default,1",
                        help="OpenMP thread counts to time the vector search with ('default': faiss's own)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import torch

    torch.manual_seed(args.seed)
    queries, dim = DEFAULT_Q, DEFAULT_E
    model_uri = args.model
    if args.index is not None:
        info = json.loads((args.index / "index.json").read_text(encoding="utf-8"))
        queries, dim = int(info["queries"]), int(info["embed_dim"])
        model_uri = model_uri or info["model"]["uri"]
    model_uri = model_uri or "models:/stgt-retrieval@champion"

    result: dict[str, Any] = {"machine": machine(), "seed": args.seed, "command": " ".join(sys.argv)}
    sizes = [int(s) for s in args.sizes.split(",") if s]
    import faiss

    threads = [faiss.omp_get_max_threads() if t == "default" else int(t) for t in args.faiss_threads.split(",")]
    threads = list(dict.fromkeys(threads))  # once each, the default first
    result["growth"] = growth(sizes, queries, dim, args.top, args.calls, args.repeats, args.seed, threads)
    result["search_path"] = (search_path(args.index, model_uri, args.calls, args.repeats) if args.index else
                             "not measured: give --index DIR (and its model)")
    result["indexing"] = (indexing(args.index_source, model_uri, args.split, args.repeats) if args.index_source
                          else "not measured: give --index-source SOURCE and --model URI")
    result["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
