"""The dataset manifest: one Parquet table, one row per video, shared by every source and stage.

Paths are relative to the data root, and the data root is stored in the file's metadata relative to the
manifest's own folder when it lies inside it, so a prepared dataset can be moved or pulled elsewhere as a whole.
A data root may also be a URL (s3://bucket/prefix), kept as given; see stgt_pipeline/io/remote.py.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from stgt_pipeline.errors import StgtError
from stgt_pipeline.io.remote import is_remote, join

SCHEMA_VERSION = "1"
MANIFEST_NAME = "manifest.parquet"
SPLITS = ("train", "val", "test", "probe")  # probe: reversed twins of test clips (temporal-order probe only)

QA_TYPE = pa.struct([("question", pa.string()), ("answer", pa.string()), ("type", pa.string())])
SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("path", pa.string()),  # relative to the data root, POSIX separators
        ("split", pa.string()),
        ("captions", pa.list_(pa.string())),
        ("qa", pa.list_(QA_TYPE)),
        ("duration", pa.float64()),
        ("fps", pa.float64()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("codec", pa.string()),
        ("sha256", pa.string()),
        ("twin_id", pa.string()),  # the clip's time-reversed twin, when the corpus has one (temporal-order probe)
        # where `duration` was found: the video stream's or the container's header, or measured on the stream's
        # packets when neither header records one (Matroska/WebM without Duration); null when not probed
        ("duration_from", pa.string()),
    ]
)
COLUMNS = [f.name for f in SCHEMA]
OPTIONAL = ("duration_from",)  # absent from older manifests and hand-made frames: read and written as null


@dataclass
class Manifest:
    table: pd.DataFrame
    data_root: Path | str  # a folder (absolute or relative to the current directory), or a URL string
    source: str

    def video_path(self, row: Any) -> Path | str:
        return join(self.data_root, row["path"]) if isinstance(self.data_root, str) else self.data_root / row["path"]


class ManifestWriter:
    """Write the manifest in Parquet row groups, so web-scale corpora (WebVid-10M) never sit in memory at once."""

    def __init__(self, out_dir: Path, data_root: Path | str, source: str, extra: dict | None = None,
                 batch_rows: int = 10_000):
        if is_remote(data_root):
            root = str(data_root).rstrip("/")
        else:
            rel = Path(os.path.relpath(Path(data_root).resolve(), Path(out_dir).resolve()))
            if rel.parts and rel.parts[0] == "..":
                rel = Path(data_root).resolve()  # outside the dataset folder: keep absolute
            root = rel.as_posix()
        meta = {
            b"stgt.schema_version": SCHEMA_VERSION.encode(),
            b"stgt.data_root": root.encode(),
            b"stgt.source": source.encode(),
            b"stgt.extra": json.dumps(extra or {}, sort_keys=True).encode(),
        }
        self.path = Path(out_dir) / MANIFEST_NAME
        self.schema = SCHEMA.with_metadata(meta)
        self.batch_rows = batch_rows
        self.rows: list[dict[str, Any]] = []
        self.written = 0
        self._writer = pq.ParquetWriter(self.path, self.schema)

    def add(self, rows: Iterable[dict[str, Any]]) -> None:
        self.rows.extend(rows)
        if len(self.rows) >= self.batch_rows:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            frame = pd.DataFrame(self.rows, columns=COLUMNS)
            self._writer.write_table(pa.Table.from_pandas(frame, schema=self.schema, preserve_index=False))
            self.written += len(self.rows)
            self.rows = []

    def close(self) -> Path:
        self.flush()
        self._writer.close()
        return self.path

    def __enter__(self) -> "ManifestWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_manifest(df: pd.DataFrame, out_dir: Path, data_root: Path | str, source: str, extra: dict | None = None) -> Path:
    """Write `df` as out_dir/manifest.parquet. `data_root` is stored relative to out_dir when possible."""
    missing = [c for c in COLUMNS if c not in df.columns and c not in OPTIONAL]
    if missing:
        raise ValueError(f"manifest is missing columns {missing}")
    df = df.assign(**{c: None for c in OPTIONAL if c not in df.columns})
    with ManifestWriter(out_dir, data_root, source, extra) as writer:
        writer.add(df[COLUMNS].to_dict("records"))
    return writer.path


def read_manifest(dataset_dir: str | Path) -> Manifest:
    dataset_dir = Path(dataset_dir)
    path = dataset_dir / MANIFEST_NAME if dataset_dir.is_dir() else dataset_dir
    if not path.exists():
        raise StgtError(f"{path}: manifest not found")
    try:
        table = pq.read_table(path)
    except Exception as exc:
        raise StgtError(f"{path}: not a readable Parquet manifest ({exc})") from None
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items() if k.startswith(b"stgt.")}
    missing = [c for c in COLUMNS if c not in table.column_names and c not in OPTIONAL]
    if missing:
        raise StgtError(f"{path}: manifest lacks columns {missing}")
    for column in OPTIONAL:
        if column not in table.column_names:
            table = table.append_column(column, pa.nulls(len(table), SCHEMA.field(column).type))
    escaping = table.column("path").to_pandas().dropna()
    escaping = escaping[escaping.str.startswith("/") | escaping.str.contains(r"(?:^|/)\.\.(?:/|$)", regex=True)]
    if len(escaping):  # no stage reads a file outside the data root, whoever wrote the manifest
        shown = ", ".join(repr(p) for p in escaping.head(3))
        raise StgtError(f"{path}: {len(escaping)} video path(s) leave the data root (absolute or '..'), e.g. {shown}")
    stored = meta.get("stgt.data_root", ".")
    root: Path | str = stored if is_remote(stored) else Path(stored)
    if isinstance(root, Path) and not root.is_absolute():
        root = path.parent / root
    return Manifest(table=table.to_pandas(), data_root=root, source=meta.get("stgt.source", "unknown"))
