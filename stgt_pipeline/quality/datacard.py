"""The data card of a prepared dataset (data_card.md): what is in it, what is missing, how it was read.

`DatasetStats` counts while the source streams its videos (histograms, not lists, so a 10M-clip corpus costs no
more memory than MSR-VTT); `render` turns the counts into Markdown.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WORD_BUCKETS = ((1, 5), (6, 10), (11, 15), (16, 20), (21, 30), (31, 50), (51, 100), (101, None))


@dataclass
class SplitStats:
    annotated: int = 0  # videos the annotation files name
    present: int = 0  # of those, found under the root (rows of the manifest)
    missing: int = 0
    captions: int = 0
    captions_per_video: Counter = field(default_factory=Counter)
    caption_words: Counter = field(default_factory=Counter)
    questions: int = 0  # every annotated question, video found or not
    questions_in_vocab: int = 0


@dataclass
class DatasetStats:
    answer_vocab: frozenset[str] | None = None
    splits: dict[str, SplitStats] = field(default_factory=dict)

    def split(self, name: str) -> SplitStats:
        stats = self.splits.get(name)
        if stats is None:  # not setdefault: building a throwaway SplitStats per row is a third of a 10M-row run
            stats = self.splits[name] = SplitStats()
        return stats

    def add_annotated(self, split: str, answers: list[str]) -> None:
        s = self.split(split)
        s.annotated += 1
        s.questions += len(answers)
        if self.answer_vocab is not None:
            s.questions_in_vocab += sum(a in self.answer_vocab for a in answers)

    def add_present(self, split: str, captions: list[str]) -> None:
        s = self.split(split)
        s.present += 1
        s.captions += len(captions)
        s.captions_per_video[len(captions)] += 1
        s.caption_words.update(len(c.split()) for c in captions)

    def add_missing(self, split: str) -> None:
        self.split(split).missing += 1

    @property
    def annotated(self) -> int:
        return sum(s.annotated for s in self.splits.values())

    @property
    def missing(self) -> int:
        return sum(s.missing for s in self.splits.values())

    def coverage(self, split: str) -> float | None:
        """Share of the split's questions whose answer is in the vocabulary: the ceiling on its accuracy, since
        out-of-vocabulary answers are scored wrong (ClipBERT #35), not dropped (VIOLET #8)."""
        s = self.splits[split]
        return round(s.questions_in_vocab / s.questions, 4) if self.answer_vocab is not None and s.questions else None


def quantile(counts: Counter, q: float) -> int | None:
    """The q-quantile (lower value) of integers given as value -> count."""
    total = sum(counts.values())
    if not total:
        return None
    seen, target = 0, q * (total - 1)
    for value in sorted(counts):
        seen += counts[value]
        if seen > target:
            return value
    return max(counts)


def _bucket_counts(words: Counter) -> list[str]:
    out = []
    for low, high in WORD_BUCKETS:
        n = sum(c for w, c in words.items() if w >= low and (high is None or w <= high))
        out.append(f"{n:,}")
    return out


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return lines


def render(
    title: str,
    stats: DatasetStats,
    *,
    facts: dict[str, str],
    files: dict[str, list[str]],
    expected: dict[str, int],
    missing_examples: list[str],
    notes: list[str],
    quality: str,
) -> str:
    order = [s for s in ("train", "val", "test") if s in stats.splits] + sorted(set(stats.splits) - {"train", "val", "test"})
    out = [f"# Data card: {title}", ""]
    out += [f"- **{k}**: {v}" for k, v in facts.items()]
    out += ["", "## Annotation files", ""]
    out += [f"- {split}: " + ", ".join(f"`{Path(p).name}`" for p in paths) for split, paths in files.items()]

    out += ["", "## Videos per split", ""]
    rows = []
    for name in order:
        s = stats.splits[name]
        per = s.captions_per_video
        spread = f"{min(per)} / {s.captions / s.present:.1f} / {max(per)}" if s.present else "-"
        rows.append([name, f"{s.annotated:,}", f"{expected[name]:,}" if name in expected else "-", f"{s.present:,}",
                     f"{s.missing:,}", f"{s.captions:,}", spread, f"{s.questions:,}"])
    out += _table(["split", "annotated", "expected", "in manifest", "missing", "captions",
                   "captions/video min / mean / max", "questions"], rows)

    out += ["", "## Caption length (words)", ""]
    buckets = [f"{lo}-{hi}" if hi else f">{lo - 1}" for lo, hi in WORD_BUCKETS]
    rows = []
    for name in order:
        w = stats.splits[name].caption_words
        if w:
            rows.append([name, min(w), quantile(w, 0.5), quantile(w, 0.95), max(w), *_bucket_counts(w)])
    out += _table(["split", "min", "median", "p95", "max", *buckets], rows) if rows else ["No captions."]

    out += ["", "## Missing videos", ""]
    if stats.missing:
        share = stats.missing / max(stats.annotated, 1)
        out += [f"{stats.missing:,} of {stats.annotated:,} annotated videos ({share:.1%}) were not found and are not in "
                "the manifest; every one is listed in `missing_videos.csv`. Results on a split with missing videos "
                "are not comparable with published numbers.",
                "", "First missing: " + ", ".join(f"`{v}`" for v in missing_examples)]
    else:
        out += ["None: every annotated video was found."]

    if stats.answer_vocab is not None or any(s.questions for s in stats.splits.values()):
        out += ["", "## Answer vocabulary", ""]
        if stats.answer_vocab is None:
            out += ["No answer vocabulary (no training answers and no prepare.benchmark.answer_vocab): coverage unknown."]
        else:
            out += [f"{len(stats.answer_vocab):,} answers (`answer_vocab.json`). Questions whose answer is outside it "
                    "are kept and count as wrong, so coverage is the ceiling on accuracy.", ""]
            out += _table(["split", "questions", "answer in vocabulary", "coverage"],
                          [[n, f"{stats.splits[n].questions:,}", f"{stats.splits[n].questions_in_vocab:,}",
                            f"{stats.coverage(n):.2%}" if stats.coverage(n) is not None else "-"] for n in order])
    if notes:
        out += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    out += ["", "## Data quality", "", quality, ""]
    return "\n".join(out)
