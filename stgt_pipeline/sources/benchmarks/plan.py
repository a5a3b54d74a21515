"""From a benchmark's entries to prepare's `SourcePlan`: find each video, stream its manifest row, and at the end
check the missing share, run the quality suite and write the data card.

Missing videos are left out of the manifest and listed per id in missing_videos.csv (with the names looked for):
a few dead links should not stop a 10k-video benchmark, but past prepare.benchmark.max_missing_share the stage
fails, because a benchmark missing that much is no longer the benchmark. Under a URL root (s3://bucket/prefix) the
manifest keeps the URL as its data root, and each video found is downloaded to a temporary file to be probed
(several at a time; stgt_pipeline/io/remote.py).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from stgt_pipeline.errors import StageFailed, StgtError
from stgt_pipeline.io.remote import FETCH_THREADS, is_remote, join, ordered_map
from stgt_pipeline.params import PrepareConfig
from stgt_pipeline.quality.datacard import DatasetStats, render
from stgt_pipeline.sources import Row, SourcePlan, manifest_row
from stgt_pipeline.sources.benchmarks.common import Annotations, VideoEntry
from stgt_pipeline.sources.benchmarks.lookup import VideoIndex
from stgt_pipeline.sources.benchmarks.quality import check
from stgt_pipeline.sources.folder import file_facts

MISSING_REPORT = "missing_videos.csv"
DATA_CARD = "data_card.md"
EXAMPLES = 10


@dataclass
class BenchmarkPlan(SourcePlan):
    # Filled once `clips` is exhausted: data card, missing count, quality result, answer coverage. Paths are
    # relative to the dataset folder.
    report: dict[str, Any] = field(default_factory=dict)


def build_plan(cfg: PrepareConfig, dataset_dir: Path, annotations: Annotations, suite: str) -> BenchmarkPlan:
    root = cfg.benchmark.root or ""
    index = VideoIndex.scan(root)
    vocab = annotations.answer_vocab
    stats = DatasetStats(answer_vocab=frozenset(vocab) if vocab is not None else None)
    data_root = root.rstrip("/") if is_remote(root) else Path(root).resolve()
    plan = BenchmarkPlan(data_root=data_root, total=annotations.total, clips=iter(()))
    plan.clips = _clips(cfg, dataset_dir, annotations, index, stats, plan, suite)
    return plan


def _clips(cfg: PrepareConfig, dataset_dir: Path, annotations: Annotations, index: VideoIndex, stats: DatasetStats,
           plan: BenchmarkPlan, suite: str) -> Iterator[list[Row]]:
    bench = cfg.benchmark
    examples: list[str] = []
    root = plan.data_root

    def found(missing: Any) -> Iterator[tuple[VideoEntry, str]]:
        for entry in annotations.entries:
            stats.add_annotated(entry.split, [q["answer"] for q in entry.qa])
            rel = index.find(entry.names)
            if rel is None:
                stats.add_missing(entry.split)
                missing.writerow([entry.video_id, entry.split, "|".join(entry.names)])
                if len(examples) < EXAMPLES:
                    examples.append(entry.video_id)
            else:
                yield entry, rel

    def row(item: tuple[VideoEntry, str]) -> list[Row]:  # may run in a download thread: touches no shared state
        entry, rel = item
        captions = entry.captions[:1] if bench.captions == "first" else entry.captions
        video = join(root, rel) if isinstance(root, str) else root / rel
        return [manifest_row(entry.video_id, rel, entry.split, captions, entry.qa, **file_facts(video))]

    with open(dataset_dir / MISSING_REPORT, "w", encoding="utf-8", newline="") as fh:
        missing = csv.writer(fh)
        missing.writerow(["video_id", "split", "looked_for"])
        threads = FETCH_THREADS if isinstance(root, str) else 1
        for rows in ordered_map(row, found(missing), threads):
            stats.add_present(rows[0]["split"], rows[0]["captions"])
            yield rows
    _finish(cfg, dataset_dir, annotations, stats, examples, plan, suite)


def _finish(cfg: PrepareConfig, dataset_dir: Path, annotations: Annotations, stats: DatasetStats, examples: list[str],
            plan: BenchmarkPlan, suite: str) -> None:
    bench = cfg.benchmark
    share = stats.missing / max(stats.annotated, 1)
    if share > bench.max_missing_share:
        raise StgtError(f"prepare: {stats.missing:,} of {stats.annotated:,} {cfg.source} videos ({share:.1%}) not found "
                        f"under {bench.root} (prepare.benchmark.max_missing_share {bench.max_missing_share}); "
                        f"e.g. {', '.join(examples)}")
    title = cfg.source + (f" (preset {cfg.preset})" if cfg.preset else "")
    result = check(stats, bench, suite, dataset_dir, title)
    verdict = "passed" if result.success else "FAILED: " + "; ".join(result.summary)
    facts = {"source": cfg.source, "preset": cfg.preset or "none", "videos root": str(bench.root),
             "captions kept": bench.captions, "manifest rows": f"{sum(s.present for s in stats.splits.values()):,}"}
    card = render(title, stats, facts=facts, files=annotations.files, expected=dict(bench.expected_videos),
                  missing_examples=examples, notes=annotations.notes,
                  quality=f"Suite `{suite}` {verdict} (`quality.html`, `quality.json`).")
    (dataset_dir / DATA_CARD).write_text(card, encoding="utf-8")
    plan.report.update({
        "data_card": DATA_CARD,
        "missing_videos": stats.missing,
        "missing_report": MISSING_REPORT,
        "annotated": {k: s.annotated for k, s in stats.splits.items()},
        "answer_coverage": {k: stats.coverage(k) for k in stats.splits if stats.coverage(k) is not None},
        "quality": {"suite": suite, "success": result.success, "summary": result.summary},
    })
    if not result.success:
        raise StageFailed(f"prepare: {suite} suite failed on {cfg.source} ({len(result.summary)} expectation(s)):\n"
                          + "\n".join(f"- {s}" for s in result.summary))
