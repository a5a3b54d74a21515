"""From a benchmark's entries to prepare's `SourcePlan`: find each video, stream its manifest row, and at the end
check the missing share, run the quality suite and write the data card.

Missing videos are left out of the manifest and listed per id in missing_videos.csv (with the names looked for):
a few dead links should not stop a 10k-video benchmark, but past prepare.benchmark.max_missing_share the stage
fails, because a benchmark missing that much is no longer the benchmark.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from components.config import PrepareConfig
from components.datacard import DatasetStats, render
from components.errors import StageFailed, StgtError
from components.sources import Row, SourcePlan, manifest_row
from components.sources.benchmarks.common import Annotations
from components.sources.benchmarks.lookup import VideoIndex, is_remote
from components.sources.benchmarks.quality import check
from components.sources.folder import file_facts

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
    if is_remote(root):
        # The listing works on S3 (lookup.list_remote), but the manifest stores a local data root and file_facts
        # probes local files; until components/manifest.py takes URL roots, sync or mount the bucket.
        raise StgtError(f"prepare.benchmark.root: {root}: remote roots are not supported by the manifest yet; "
                        "mount or sync the bucket and give the local directory")
    index = VideoIndex.scan(root)
    vocab = annotations.answer_vocab
    stats = DatasetStats(answer_vocab=frozenset(vocab) if vocab is not None else None)
    plan = BenchmarkPlan(data_root=Path(root).resolve(), total=annotations.total, clips=iter(()))
    plan.clips = _clips(cfg, dataset_dir, annotations, index, stats, plan, suite)
    return plan


def _clips(cfg: PrepareConfig, dataset_dir: Path, annotations: Annotations, index: VideoIndex, stats: DatasetStats,
           plan: BenchmarkPlan, suite: str) -> Iterator[list[Row]]:
    bench = cfg.benchmark
    examples: list[str] = []
    with open(dataset_dir / MISSING_REPORT, "w", encoding="utf-8", newline="") as fh:
        missing = csv.writer(fh)
        missing.writerow(["video_id", "split", "looked_for"])
        for entry in annotations.entries:
            stats.add_annotated(entry.split, [q["answer"] for q in entry.qa])
            rel = index.find(entry.names)
            if rel is None:
                stats.add_missing(entry.split)
                missing.writerow([entry.video_id, entry.split, "|".join(entry.names)])
                if len(examples) < EXAMPLES:
                    examples.append(entry.video_id)
                continue
            captions = entry.captions[:1] if bench.captions == "first" else entry.captions
            stats.add_present(entry.split, captions)
            yield [manifest_row(entry.video_id, rel, entry.split, captions, entry.qa, **file_facts(plan.data_root / rel))]
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
