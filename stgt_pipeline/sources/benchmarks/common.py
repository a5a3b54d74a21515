"""What every benchmark reader shares: the entry type, strict file readers whose errors name file, line or record
and field, and the assembly of splits from annotation files, id lists and a captions database.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Iterator

from stgt_pipeline.errors import StgtError
from stgt_pipeline.params import BenchmarkSource, PrepareConfig


@dataclass
class VideoEntry:
    """One video of a benchmark split, before its file is looked up."""

    video_id: str
    split: str = ""
    captions: list[str] = field(default_factory=list)
    qa: list[dict[str, str]] = field(default_factory=list)
    names: tuple[str, ...] = ()  # file names or root-relative paths to look for, best first


@dataclass
class Annotations:
    """A benchmark's entries plus what the data card should say about how they were read."""

    entries: Iterable[VideoEntry]
    total: int  # entries, for the progress bar (0 when unknown before streaming)
    files: dict[str, list[str]]  # split -> the files read
    notes: list[str] = field(default_factory=list)
    answer_vocab: list[str] | None = None


Reader = Callable[[Path, str], dict[str, VideoEntry]]  # (file, split) -> entries by video id


def fail(path: Path, where: str | int | None, problem: str, field_name: str | None = None) -> StgtError:
    """`file:line: field 'x': problem` (an int is a line; a string such as "record 12" is used as given)."""
    at = f":{where}" if isinstance(where, int) else (f": {where}" if where else "")
    name = f"field '{field_name}': " if field_name else ""
    return StgtError(f"{path}{at}: {name}{problem}")


# ---------------------------------------------------------------------------------------------------------------
# readers


def resolve(given: str, bench: BenchmarkSource, key: str) -> Path:
    """An annotation path as given, or relative to prepare.benchmark.annotations_dir."""
    path = Path(given)
    if not path.is_absolute() and bench.annotations_dir:
        path = Path(bench.annotations_dir) / path
    if not path.is_file():
        raise StgtError(f"prepare.benchmark.{key}: {path} not found")
    return path


def load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise fail(path, exc.lineno, f"invalid JSON ({exc.msg} at column {exc.colno}); truncated or not JSON?") from None
    except UnicodeDecodeError as exc:
        raise fail(path, None, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def text(obj: dict[str, Any], key: str, path: Path, where: str | int) -> str:
    """A required, non-empty string field."""
    if key not in obj or obj[key] is None:
        raise fail(path, where, "missing", key)
    value = obj[key]
    if not isinstance(value, str):
        raise fail(path, where, f"expected a string, got {type(value).__name__}", key)
    if not value.strip():
        raise fail(path, where, "empty", key)
    return value.strip()


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, object) for each non-blank line of a JSON-lines file."""
    with open(path, encoding="utf-8") as fh:
        for line, raw in enumerate(fh, start=1):
            if raw.strip():
                try:
                    obj = json.loads(raw)
                except json.JSONDecodeError as exc:
                    raise fail(path, line, f"invalid JSON ({exc.msg} at column {exc.colno})") from None
                if not isinstance(obj, dict):
                    raise fail(path, line, f"expected an object, got {type(obj).__name__}")
                yield line, obj


def records(data: Any, path: Path, what: str) -> list[dict[str, Any]]:
    """A JSON list of objects (the LAVIS/STGT annotation layout)."""
    if not isinstance(data, list):
        raise fail(path, None, f"expected a JSON list of {what}, got {type(data).__name__}")
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise fail(path, f"record {i}", f"expected an object, got {type(item).__name__}")
    return data


def csv_rows(path: Path, header: list[str], delimiter: str = ",", extra_columns: bool = False) -> Iterator[tuple[int, dict[str, str]]]:
    """(line, row) pairs of a CSV whose header must be `header` (or contain it when `extra_columns`)."""
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        found = [h.strip() for h in next(reader, [])]
        ok = set(header) <= set(found) if extra_columns else found == header
        if not ok:
            want = ("columns including " if extra_columns else "") + delimiter.join(header)
            raise fail(path, 1, f"wrong CSV header: expected {want}, found {delimiter.join(found) or 'nothing'}")
        for values in reader:
            if not any(v.strip() for v in values):
                continue
            if len(values) != len(found):
                raise fail(path, reader.line_num, f"expected {len(found)} columns ({delimiter.join(found)}), found {len(values)}")
            yield reader.line_num, dict(zip(found, values))


def read_id_list(path: Path) -> list[str]:
    """A split list: .txt with one id a line (collaborative-experts) or a CSV with the single column video_id
    (CLIP4Clip's MSRVTT_train.9k.csv). Order kept, duplicates refused."""
    if path.suffix.lower() == ".csv":
        ids = [row["video_id"].strip() for _, row in csv_rows(path, ["video_id"])]
    else:
        with open(path, encoding="utf-8") as fh:
            ids = [line.strip() for line in fh if line.strip()]
    seen: set[str] = set()
    for i, vid in enumerate(ids):
        if vid in seen:
            raise fail(path, None, f"id {vid!r} listed twice (entry {i + 1})")
        seen.add(vid)
    return ids


def stem(name: str) -> str:
    """`video9770.mp4` -> `video9770`; a name without a suffix is kept."""
    return PurePosixPath(name).stem if PurePosixPath(name).suffix else PurePosixPath(name).name


def read_caption_json(path: Path, split: str) -> dict[str, VideoEntry]:
    """The LAVIS/STGT/VindLU layout, a list of {"video", "caption": str | [str]} (one item per pair in train
    files, a caption list in eval files), or VIOLET's {"train": [...], "val": [...], "test": [...]} of the same
    items, from which the entry named like the split is taken. The video id is the file name without extension."""
    data = load_json(path)
    if isinstance(data, dict):
        if split not in data:
            raise fail(path, None, f"no {split!r} entry; this file holds {', '.join(sorted(data))}")
        data = data[split]
    entries: dict[str, VideoEntry] = {}
    for i, item in enumerate(records(data, path, '{"video", "caption"} items')):
        where = f"record {i}"
        video = text(item, "video", path, where)
        caption = item.get("caption")
        captions = [caption] if isinstance(caption, str) else caption
        if not isinstance(captions, list) or not captions or not all(isinstance(c, str) and c.strip() for c in captions):
            raise fail(path, where, "expected a non-empty string or a list of them", "caption")
        entry = entries.setdefault(stem(video), VideoEntry(stem(video), names=(video,)))
        entry.captions += [c.strip() for c in captions]
    return entries


# ---------------------------------------------------------------------------------------------------------------
# splits


def file_names(video_id: str, extensions: tuple[str, ...]) -> tuple[str, ...]:
    """The usual lookup: the id plus each of the benchmark's extensions (MSR-VTT video9770 -> video9770.mp4)."""
    return tuple(f"{video_id}{ext}" for ext in extensions)


def read_splits(
    cfg: PrepareConfig,
    read_annotation: Reader,
    extensions: tuple[str, ...],
    read_captions_db: Callable[[Path], dict[str, list[str]]] | None = None,
    candidates: Callable[[str, tuple[str, ...]], tuple[str, ...]] = file_names,
) -> Annotations:
    """Entries of every configured split.

    A split's annotation files give its videos and text; its id lists, when given, keep only the listed videos
    (as CLIP4Clip intersects DiDeMo's JSON with the split list; both counts go to the data card). A split given
    by id lists alone takes its captions from prepare.benchmark.captions_db (MSRVTT_data.json, MSVD captions).
    A video in two splits is refused: it would leak test videos into training.
    """
    bench = cfg.benchmark
    exts = tuple(bench.extensions) or extensions
    db: dict[str, list[str]] | None = None
    entries: list[VideoEntry] = []
    files: dict[str, list[str]] = {}
    notes: list[str] = []
    owner: dict[str, str] = {}
    for split, spec in bench.splits.items():
        key = f"splits.{split}"
        ann_paths = [resolve(p, bench, f"{key}.annotations") for p in spec.annotations]
        id_paths = [resolve(p, bench, f"{key}.ids") for p in spec.ids]
        files[split] = [str(p) for p in ann_paths + id_paths]
        listed: list[str] = []
        for p in id_paths:
            listed += read_id_list(p)
        if ann_paths:
            annotated: dict[str, VideoEntry] = {}
            for p in ann_paths:
                for vid, entry in read_annotation(p, split).items():
                    if vid in annotated:
                        annotated[vid].captions += entry.captions
                        annotated[vid].qa += entry.qa
                    else:
                        annotated[vid] = entry
            chosen = list(annotated.values())
            if id_paths:
                wanted = set(listed)
                chosen = [e for e in chosen if e.video_id in wanted]
                unlisted = len(wanted - set(annotated))
                notes.append(f"{split}: {len(annotated):,} videos annotated, {len(wanted):,} in the split list(s), "
                             f"{len(chosen):,} in both (kept); {unlisted:,} listed without annotation")
        elif id_paths:
            if read_captions_db is None or not bench.captions_db:
                raise StgtError(f"prepare.benchmark.{key}: only id lists given; set prepare.benchmark.captions_db "
                                "(the captions file) or give annotation files")
            if db is None:
                db_path = resolve(bench.captions_db, bench, "captions_db")
                db = read_captions_db(db_path)
                files.setdefault("captions_db", [str(db_path)])
            absent = [v for v in listed if v not in db]
            if absent:
                raise StgtError(f"{id_paths[0]}: {len(absent):,} listed id(s) have no caption in {bench.captions_db}, "
                                f"e.g. {', '.join(absent[:5])}")
            chosen = [VideoEntry(v, captions=list(db[v])) for v in listed]
        else:
            raise StgtError(f"prepare.benchmark.{key}: give annotations or ids")
        for entry in chosen:
            if entry.video_id in owner:
                raise StgtError(f"prepare.benchmark.splits: video {entry.video_id!r} is in both {owner[entry.video_id]} "
                                f"and {split}; splits must not share videos")
            owner[entry.video_id] = split
            entry.split = split
            entry.names = entry.names + tuple(n for n in candidates(entry.video_id, exts) if n not in entry.names)
        entries += chosen
    return Annotations(entries=entries, total=len(entries), files=files, notes=notes)
