"""`stgt index`, `stgt search`, `stgt ask` and `stgt serve` (stgt_pipeline.search.page): the registered models put
to use."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from stgt_pipeline.errors import StgtError

INDEX_HELP = "embed a folder of videos, a prepared dataset or an s3:// prefix into a searchable index"
SEARCH_HELP = "search an index by text: ranked video ids, scores and paths"
ASK_HELP = "answer a question about a video with the registered QA model"


def add_search_commands(sub: argparse._SubParsersAction) -> None:
    from stgt_pipeline.search.index import DEFAULT_INDEX
    from stgt_pipeline.search.models import DEFAULT_QA, DEFAULT_RETRIEVAL

    p = sub.add_parser("index", help=INDEX_HELP, description=INDEX_HELP + ". Re-running embeds only new or changed "
                       "videos and drops removed ones; an interrupted run resumes.")
    p.add_argument("source", metavar="SOURCE", help="a folder of videos, a prepared dataset folder (with "
                   "manifest.parquet, e.g. data/prepared) or a URL prefix such as s3://bucket/videos")
    p.add_argument("--out", default=str(DEFAULT_INDEX), metavar="DIR", help="index folder (default: %(default)s)")
    p.add_argument("--model", default=DEFAULT_RETRIEVAL, metavar="URI",
                   help="registered retrieval model: models:/<name>@<alias> or models:/<name>/<version> "
                        "(default: %(default)s)")
    p.add_argument("--split", default=None, help="only this split of a prepared dataset (e.g. test)")
    p.set_defaults(func=_index_command)

    p = sub.add_parser("search", help=SEARCH_HELP, description=SEARCH_HELP + ". Ranks by the coarse similarity, "
                       "then re-ranks the best with the matching head, as the evaluation does.")
    p.add_argument("query", metavar="TEXT", help="what to look for, e.g. 'a red circle moves left'")
    p.add_argument("--index", default=str(DEFAULT_INDEX), metavar="DIR", help="index folder (default: %(default)s)")
    p.add_argument("--top", type=int, default=10, help="how many results (default: %(default)s)")
    p.add_argument("--rerank", type=int, default=None, metavar="K",
                   help="re-rank the best K with the matching head (default: the model's evaluation k_test)")
    p.add_argument("--no-rerank", dest="rerank", action="store_const", const=0, help="coarse similarity only")
    p.add_argument("--model", default=DEFAULT_RETRIEVAL, metavar="URI",
                   help="must be the model version the index was built with (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the hits as JSON lines")
    p.set_defaults(func=_search_command)

    p = sub.add_parser("ask", help=ASK_HELP, description=ASK_HELP + ": prints the answer and its probability.")
    p.add_argument("video", metavar="VIDEO", help="a video file (or an http(s):// URL)")
    p.add_argument("question", metavar="QUESTION", help="e.g. 'what colour is the square?'")
    p.add_argument("--model", default=DEFAULT_QA, metavar="URI", help="registered QA model (default: %(default)s)")
    p.set_defaults(func=_ask_command)

    from stgt_pipeline.search.page import add_serve_command

    add_serve_command(sub)


def _index_command(args: argparse.Namespace) -> int:
    from stgt_pipeline.search.index import build_index

    summary = build_index(args.source, Path(args.out), args.model, args.split)
    model = summary["model"]
    print(f"index: {summary['indexed']} videos in {summary['index']} ({summary['embedded_now']} embedded now, "
          f"{summary['reused']} reused, {summary['removed']} removed, {summary['quarantined']} quarantined) with "
          f"{model['name']} version {model['version']}")
    if summary["quarantined"]:
        print(f"index: unreadable videos and why: {Path(args.out) / 'quarantine.json'}")
    return 0


def _search_command(args: argparse.Namespace) -> int:
    from stgt_pipeline.search.index import Searcher, VideoIndex

    searcher = Searcher(VideoIndex.open(args.index), args.model)
    hits = searcher.search(args.query, top=args.top, rerank=args.rerank)
    for hit in hits:
        if args.json:
            print(json.dumps({"rank": hit.rank, "video_id": hit.video_id, "score": round(hit.score, 6),
                              "similarity": round(hit.similarity, 6), "path": hit.path}))
        else:
            print(f"{hit.rank:>3}  {hit.score:7.4f}  {hit.video_id}  {hit.path}")
    return 0


def _ask_command(args: argparse.Namespace) -> int:
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from stgt_pipeline.search import models

    video = args.video
    if "://" not in video and not Path(video).is_file():
        raise StgtError(f"ask: {video}: no such file")
    ref, python_model = models.load(args.model)
    if python_model.packaged.task != "qa":
        raise StgtError(f"{args.model} is a {python_model.packaged.task} model; `stgt ask` needs a QA model")
    try:
        out = python_model.predict(None, pd.DataFrame({"video": [video], "question": [args.question]}))
    except MlflowException as exc:
        raise StgtError(f"ask: {exc.message}") from None
    answer, probability = out["answer"][0], float(out["probability"][0])
    print(f"{answer if answer is not None else '(no answer in the vocabulary)'}  (p={probability:.3f}, "
          f"{ref.name} version {ref.version})")
    return 0
