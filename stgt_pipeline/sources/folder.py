"""A user's own videos: a directory plus a captions file in JSONL or CSV (chosen by extension).

Fields: `video` (path relative to the root, required), `caption` (string) or `captions` (JSON list, JSONL only),
optional `split` (train/val/test), optional `question` + `answer` (+ `type`, default "other"). Several lines for
one video merge their captions and QA pairs (in CSV that is how a video gets several captions). The video id is
the file stem. Malformed input fails naming the file, the line and the field; missing or unreadable videos are
kept with empty probe fields so that the validate stage reports them by name. The root may be a URL
(s3://bucket/prefix; then the captions file is a local path): each video is downloaded to a temporary file to be
probed (stgt_pipeline/io/remote.py).
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

from stgt_model.video.probe import ProbeError, probe, sha256_file
from stgt_pipeline.errors import StgtError
from stgt_pipeline.io.manifest import SPLITS
from stgt_pipeline.io.remote import FETCH_THREADS, RemoteError, is_remote, join, local_copy, ordered_map
from stgt_pipeline.params import PrepareConfig
from stgt_pipeline.sources import Row, SourcePlan, manifest_row

FIELDS = ("video", "caption", "captions", "split", "question", "answer", "type")
CSV_REQUIRED = ("video", "caption")
CSV_OPTIONAL = ("split", "question", "answer", "type")


@dataclass
class Record:
    """One line of the captions file, checked."""

    line: int
    video: str
    captions: list[str]
    split: str | None
    qa: dict[str, str] | None


@dataclass
class Entry:
    """One video, merged over its lines."""

    path: str
    line: int  # first line naming it
    split: str | None = None
    captions: list[str] = field(default_factory=list)
    qa: list[dict[str, str]] = field(default_factory=list)


class Where:
    """Formats errors as `file:line: field 'x': problem`."""

    def __init__(self, file: Path, line: int):
        self.file, self.line = file, line

    def error(self, problem: str, field_name: str | None = None) -> StgtError:
        at = f"field '{field_name}': " if field_name else ""
        return StgtError(f"{self.file}:{self.line}: {at}{problem}")


def _text(value: Any, name: str, where: Where) -> str:
    if not isinstance(value, str):
        raise where.error(f"expected a string, got {type(value).__name__}", name)
    return value.strip()


def _record(obj: dict[str, Any], where: Where) -> Record:
    """Check one line's fields. Absent, null and (for CSV) empty optional fields mean 'not given'."""
    unknown = sorted(set(obj) - set(FIELDS))
    if unknown:
        raise where.error(f"unknown field(s) {', '.join(unknown)}; expected some of {', '.join(FIELDS)}")
    video = _text(obj["video"], "video", where) if obj.get("video") is not None else ""
    if not video:
        raise where.error("missing video path", "video")
    if PurePosixPath(video).is_absolute() or Path(video).is_absolute():
        raise where.error(f"{video!r} must be relative to prepare.folder.root", "video")
    if ".." in PurePosixPath(video).parts:  # ../../etc/passwd: nothing outside the root is read (nor s3 keys)
        raise where.error(f"{video!r} leaves prepare.folder.root ('..'); paths must stay under the root", "video")

    single = [_text(obj["caption"], "caption", where)] if obj.get("caption") is not None else []
    listed = obj.get("captions") or []
    if not isinstance(listed, list):
        raise where.error(f"expected a list of strings, got {type(listed).__name__}", "captions")
    listed = [_text(c, "captions", where) for c in listed]

    split = _text(obj["split"], "split", where) if obj.get("split") is not None else ""
    if split and split not in SPLITS:
        raise where.error(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}", "split")

    question = _text(obj["question"], "question", where) if obj.get("question") is not None else ""
    answer = _text(obj["answer"], "answer", where) if obj.get("answer") is not None else ""
    kind = _text(obj["type"], "type", where) if obj.get("type") is not None else ""
    if question and not answer:
        raise where.error("question without answer", "answer")
    if answer and not question:
        raise where.error("answer without question", "question")
    if "" in listed:
        raise where.error("empty caption in the list", "captions")
    if "" in single or not (single or listed or question):  # a line may carry only a QA pair
        raise where.error("missing or empty caption", "caption")
    captions = single + listed
    qa = {"question": question, "answer": answer, "type": kind or "other"} if question else None
    return Record(where.line, PurePosixPath(video).as_posix(), captions, split or None, qa)


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text), decoded line by line so that a bad byte is reported on its own line."""
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                yield number, raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise Where(path, number).error(f"not UTF-8 text ({exc.reason} at byte {exc.start + 1})") from None


def read_jsonl(path: Path) -> Iterator[Record]:
    for number, text in _lines(path):
        if not text.strip():
            continue
        where = Where(path, number)
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise where.error(f"invalid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise where.error(f"expected a JSON object, got {type(obj).__name__}")
        yield _record(obj, where)


def read_csv(path: Path) -> Iterator[Record]:
    reader = csv.reader(text for _, text in _lines(path))
    header = [h.strip() for h in next(reader, [])]
    if (
        not all(c in header for c in CSV_REQUIRED)
        or any(h not in CSV_REQUIRED + CSV_OPTIONAL for h in header)
        or len(set(header)) != len(header)
    ):
        expected = ", ".join(CSV_REQUIRED) + " (optional: " + ", ".join(CSV_OPTIONAL) + ")"
        found = ", ".join(header) or "nothing"
        raise Where(path, 1).error(f"wrong CSV header: expected columns {expected}, found {found}")
    for values in reader:
        where = Where(path, reader.line_num)  # the physical line (header is line 1), as an editor shows it
        if not any(v.strip() for v in values):
            continue
        if len(values) != len(header):
            raise where.error(f"expected {len(header)} columns ({', '.join(header)}), found {len(values)}")
        yield _record({k: v for k, v in zip(header, values) if v.strip()}, where)


READERS = {".jsonl": read_jsonl, ".csv": read_csv}


def merge(records: Iterator[Record], path: Path) -> list[Entry]:
    """Group lines by video (first-seen order); video ids (file stems) must be unique."""
    entries: dict[str, Entry] = {}
    by_id: dict[str, Entry] = {}
    for record in records:
        where = Where(path, record.line)
        entry = entries.get(record.video)
        if entry is None:
            video_id = PurePosixPath(record.video).stem
            if video_id in by_id:
                other = by_id[video_id]
                raise where.error(
                    f"video id {video_id!r} of {record.video} collides with {other.path} (line {other.line}); "
                    "video ids are file stems and must be unique",
                    "video",
                )
            entry = entries[record.video] = by_id[video_id] = Entry(record.video, record.line)
        if record.split and entry.split and record.split != entry.split:
            contradiction = f"split {record.split!r} contradicts {entry.split!r} given earlier for {record.video}"
            raise where.error(contradiction, "split")
        entry.split = entry.split or record.split
        entry.captions += record.captions
        entry.qa += [record.qa] if record.qa else []
    for entry in entries.values():
        if not entry.captions:
            raise Where(path, entry.line).error(f"{entry.path} has questions but no caption", "caption")
    return list(entries.values())


def file_facts(file: Path | str) -> dict[str, Any]:
    """Container facts of `file` (a path, or a URL read through a temporary copy) for the manifest.

    A missing or unreadable file gets none (its probe columns stay null): dropping its row here would hide the
    problem, whereas the validate stage reports it by name.
    """
    if is_remote(file):
        try:
            with local_copy(str(file)) as local:
                return file_facts(local)
        except RemoteError:
            return {}
    file = Path(file)
    if not file.is_file():
        return {}
    facts: dict[str, Any] = {"sha256": sha256_file(file)}
    try:
        info = probe(file)
    except ProbeError:
        return facts
    container = {"duration": info.duration, "fps": info.fps, "width": info.width, "height": info.height, "codec": info.codec,
                 "duration_from": info.duration_from}
    return facts | container


def _captions_file(given: str, root: Path | str) -> Path:
    """As given (absolute, or relative to the working directory) or else relative to a local root."""
    for candidate in (Path(given),) + (() if isinstance(root, str) else (root / given,)):
        if candidate.is_file():
            if candidate.suffix.lower() not in READERS:
                raise StgtError(f"prepare.folder.captions: {candidate}: expected a .jsonl or .csv file")
            return candidate
    where = "a local file is needed when prepare.folder.root is a URL" if isinstance(root, str) else f"nor under {root}"
    raise StgtError(f"prepare.folder.captions: {given} not found (as given, {where})")


def build(cfg: PrepareConfig, dataset_dir: Path) -> SourcePlan:
    folder = cfg.folder
    root: Path | str
    if folder.root and is_remote(folder.root):
        root = folder.root.rstrip("/")
    else:
        root = Path(folder.root or "").resolve()
        if not folder.root or not root.is_dir():
            raise StgtError(f"prepare.folder.root: {folder.root} is not a directory")
    path = _captions_file(folder.captions or "", root)
    entries = merge(READERS[path.suffix.lower()](path), path)
    if not entries:
        raise StgtError(f"{path}: lists no videos")

    def rows(entry: Entry) -> list[Row]:
        video_id = PurePosixPath(entry.path).stem
        split = entry.split or folder.default_split
        video = join(root, entry.path) if isinstance(root, str) else root / entry.path
        return [manifest_row(video_id, entry.path, split, entry.captions, entry.qa, **file_facts(video))]

    threads = FETCH_THREADS if isinstance(root, str) else 1  # downloads overlap; local probes stay in order
    return SourcePlan(data_root=root, total=len(entries), clips=ordered_map(rows, entries, threads))
