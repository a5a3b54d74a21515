"""Open-ended video QA: MSRVTT-QA, MSVD-QA, ActivityNet-QA, scored by answer classification.

Files, as published:
- MSRVTT-QA / MSVD-QA: the original `{train,val,test}_qa.json` lists of {"question", "answer", "video_id", "id"}
  (MSRVTT-QA's int video_id n is `video<n>`; MSVD-QA's is `vid<n>` of `youtube_mapping.txt`, given as
  prepare.benchmark.video_id_map), the ALPRO/LAVIS JSON or JSON-lines files ({"video" or "video_id", "question",
  "answer", "answer_type", "question_id"}), and VIOLET's {"train", "val", "test", "vocab"} whose answers are ints
  indexing its `vocab`.
- ActivityNet-QA: `{split}_q.json` [{"video_name", "question", "question_id"}] and `{split}_a.json`
  [{"answer", "type", "question_id"}], joined on question_id; both go in the split's annotations.

Answer vocabulary: the top-k (prepare.benchmark.answer_vocab_size) training answers by count, ties alphabetical,
or a given list. Test answers outside it are kept with in_vocab false in qa.parquet and count as wrong (ClipBERT
#35, ALPRO); dropping them, as VIOLET did (its issue #8), inflates accuracy. Question type: the file's own
(ActivityNet-QA's int codes named per its dataset README), else the question's wh-word, else "other".
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from stgt_pipeline.errors import StgtError
from stgt_pipeline.params import PrepareConfig
from stgt_pipeline.sources.benchmarks import activitynet
from stgt_pipeline.sources.benchmarks.common import (
    Annotations,
    VideoEntry,
    fail,
    file_names,
    load_json,
    read_jsonl,
    records,
    resolve,
    stem,
    text,
)
from stgt_pipeline.sources.benchmarks.plan import BenchmarkPlan, build_plan

EXTENSIONS = {"msrvtt_qa": (".mp4",), "msvd_qa": (".avi", ".mp4"), "activitynet_qa": activitynet.EXTENSIONS}
# MILVLG/activitynet-qa dataset/README.md: question types 0-2, answer types 3-8.
ACTIVITYNET_TYPES = {0: "motion", 1: "spatial_relation", 2: "temporal_relation", 3: "yes_no", 4: "color",
                     5: "object", 6: "location", 7: "number", 8: "other"}
WH_WORDS = ("what", "who", "how", "when", "where", "why", "which", "whose", "whom")
QA_TABLE = "qa.parquet"
VOCAB_FILE = "answer_vocab.json"


@dataclass
class Question:
    video_id: str
    question_id: str
    question: str
    answer: str
    type: str


def question_type(given: Any, question: str) -> str:
    if isinstance(given, str) and given.strip():
        return given.strip()
    first = question.split()[0].lower() if question.split() else ""
    return first if first in WH_WORDS else "other"


def read_id_map(path: Path) -> dict[str, str]:
    """youtube_mapping.txt: `<clip> vid<n>` lines -> {"vid<n>": clip}."""
    mapping: dict[str, str] = {}
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise fail(path, line_no, f"expected '<clip> vid<n>', found {line.strip()[:60]!r}")
            mapping[parts[1]] = parts[0]
    return mapping


def _video_id(item: dict[str, Any], source: str, id_map: dict[str, str] | None, path: Path, where: str | int) -> str:
    value = item.get("video_id", item.get("video"))
    if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
        raise fail(path, where, "missing (expected video_id or video)", "video_id")
    if isinstance(value, str):
        return stem(value.strip())
    if source == "msrvtt_qa":
        return f"video{value}"
    if id_map is None:
        raise fail(path, where, "an int video id needs prepare.benchmark.video_id_map (youtube_mapping.txt)", "video_id")
    if f"vid{value}" not in id_map:
        raise fail(path, where, f"vid{value} is not in the video id map", "video_id")
    return id_map[f"vid{value}"]


def read_qa_file(path: Path, split: str, source: str, id_map: dict[str, str] | None) -> list[Question]:
    """MSRVTT-QA / MSVD-QA in any of the published layouts (see the module docstring)."""
    vocab = None  # VIOLET's files carry the answer list their int answers index
    if path.suffix.lower() == ".jsonl":
        items: list[tuple[int | str, dict[str, Any]]] = list(read_jsonl(path))
    else:
        data = load_json(path)
        if isinstance(data, dict):
            if split not in data:
                raise fail(path, None, f"no {split!r} entry; this file holds {', '.join(sorted(data))}")
            vocab = data.get("vocab")
            data = data[split]
        items = [(f"record {i}", obj) for i, obj in enumerate(records(data, path, "questions"))]
    out = []
    for where, item in items:
        question = text(item, "question", path, where)
        answer = item.get("answer")
        if isinstance(answer, int) and not isinstance(answer, bool):
            if not isinstance(vocab, list) or not 0 <= answer < len(vocab):
                raise fail(path, where, f"answer index {answer} but the file's vocab has "
                                        f"{len(vocab) if isinstance(vocab, list) else 'no'} entries", "answer")
            answer = vocab[answer]
        answer = text({**item, "answer": answer}, "answer", path, where)
        qid = item.get("question_id", item.get("id", f"{path.name}:{where}"))
        out.append(Question(_video_id(item, source, id_map, path, where), str(qid), question, answer,
                            question_type(item.get("answer_type", item.get("type")), question)))
    return out


def read_activitynet_pair(paths: list[Path]) -> list[Question]:
    """ActivityNet-QA: the split's question and answer files, told apart by their fields, joined on question_id."""
    questions: dict[str, tuple[Path, int, dict[str, Any]]] = {}
    answers: dict[str, tuple[Path, dict[str, Any]]] = {}
    for path in paths:
        for i, item in enumerate(records(load_json(path), path, "questions or answers")):
            where = f"record {i}"
            qid = text(item, "question_id", path, where)
            if "video_name" in item or "question" in item:
                questions[qid] = (path, i, item)
            elif "answer" in item:
                answers[qid] = (path, item)
            else:
                raise fail(path, where, "neither a question (video_name, question) nor an answer (answer, type)")
    out = []
    for qid, (path, i, item) in questions.items():
        where = f"record {i}"
        if qid not in answers:
            raise fail(path, where, f"question {qid!r} has no answer in {', '.join(str(p) for p in paths)}", "question_id")
        a_path, answer = answers.pop(qid)
        kind = answer.get("type")
        if kind not in ACTIVITYNET_TYPES:
            raise fail(a_path, f"question {qid!r}", f"expected an int 0-8, got {kind!r}", "type")
        question = text(item, "question", path, where)
        out.append(Question(f"v_{text(item, 'video_name', path, where)}", qid, question,
                            text(answer, "answer", a_path, f"question {qid!r}"), ACTIVITYNET_TYPES[kind]))
    if answers:
        qid, (a_path, _) = next(iter(answers.items()))
        raise StgtError(f"{a_path}: {len(answers):,} answer(s) without a question, e.g. question_id {qid!r}")
    return out


def read_questions(cfg: PrepareConfig) -> tuple[dict[str, list[Question]], dict[str, list[str]]]:
    bench = cfg.benchmark
    id_map = read_id_map(resolve(bench.video_id_map, bench, "video_id_map")) if bench.video_id_map else None
    by_split: dict[str, list[Question]] = {}
    files: dict[str, list[str]] = {}
    for split, spec in bench.splits.items():
        if spec.ids or not spec.annotations:
            raise StgtError(f"prepare.benchmark.splits.{split}: QA takes annotation files only (no id lists)")
        paths = [resolve(p, bench, f"splits.{split}.annotations") for p in spec.annotations]
        files[split] = [str(p) for p in paths]
        if cfg.source == "activitynet_qa":
            by_split[split] = read_activitynet_pair(paths)
        else:
            by_split[split] = [q for p in paths for q in read_qa_file(p, split, cfg.source, id_map)]
    return by_split, files


def answer_vocab(cfg: PrepareConfig, by_split: dict[str, list[Question]]) -> tuple[list[str] | None, str]:
    """(vocabulary, where it came from); None when there is neither a given list nor a training split."""
    bench = cfg.benchmark
    if bench.answer_vocab:
        path = resolve(bench.answer_vocab, bench, "answer_vocab")
        data = load_json(path)
        if isinstance(data, dict):  # ans2label: {answer: index}
            return [a for a, _ in sorted(data.items(), key=lambda kv: kv[1])], str(path)
        if isinstance(data, list) and all(isinstance(a, str) for a in data):
            return data, str(path)
        raise fail(path, None, "expected a JSON list of answers or an {answer: index} map")
    if "train" not in by_split:
        return None, "none (no training split)"
    counts = Counter(q.answer for q in by_split["train"])
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [a for a, _ in ranked[: bench.answer_vocab_size]], f"top {bench.answer_vocab_size} training answers"


def read(cfg: PrepareConfig) -> tuple[Annotations, pd.DataFrame, str]:
    """The entries (one per video), the question table for qa.parquet, and where the vocabulary came from."""
    by_split, files = read_questions(cfg)
    vocab, vocab_source = answer_vocab(cfg, by_split)
    exts = tuple(cfg.benchmark.extensions) or EXTENSIONS[cfg.source]
    candidates = activitynet.candidates if cfg.source == "activitynet_qa" else file_names
    entries: dict[str, VideoEntry] = {}
    rows = []
    known = frozenset(vocab) if vocab is not None else None
    for split, questions in by_split.items():
        for q in questions:
            entry = entries.setdefault(q.video_id, VideoEntry(q.video_id, split, names=candidates(q.video_id, exts)))
            if entry.split != split:
                raise StgtError(f"prepare.benchmark.splits: video {q.video_id!r} has questions in both {entry.split} "
                                f"and {split}; splits must not share videos")
            entry.qa.append({"question": q.question, "answer": q.answer, "type": q.type})
            rows.append({"video_id": q.video_id, "split": split, "question_id": q.question_id, "question": q.question,
                         "answer": q.answer, "type": q.type, "in_vocab": None if known is None else q.answer in known})
    notes = [f"{split}: {len(qs):,} questions over {len({q.video_id for q in qs}):,} videos"
             for split, qs in by_split.items()]
    notes.append(f"answer vocabulary: {vocab_source}" + ("" if vocab is None else
                 f"; out-of-vocabulary answers are kept (in_vocab false in {QA_TABLE}) and count as wrong"))
    table = pd.DataFrame(rows, columns=["video_id", "split", "question_id", "question", "answer", "type", "in_vocab"])
    annotations = Annotations(entries=list(entries.values()), total=len(entries), files=files, notes=notes,
                              answer_vocab=vocab)
    return annotations, table, vocab_source


def build(cfg: PrepareConfig, dataset_dir: Path) -> BenchmarkPlan:
    annotations, table, vocab_source = read(cfg)
    table.to_parquet(dataset_dir / QA_TABLE, index=False)
    if annotations.answer_vocab is not None:
        (dataset_dir / VOCAB_FILE).write_text(
            json.dumps({"source": vocab_source, "answers": annotations.answer_vocab}, indent=1) + "\n", encoding="utf-8")
    return build_plan(cfg, dataset_dir, annotations, "benchmark_qa")
