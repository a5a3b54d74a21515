"""Find a benchmark's videos under the user's root (a directory or s3://bucket/prefix) from one listing.

One recursive listing, then dictionary look-ups: a request per file would be 10k round trips for MSR-VTT and
millions for WebVid on S3. Files are matched by name anywhere below the root (LSMDC keeps clips in one folder per
movie, MSR-VTT copies often split TrainValVideo/TestVideo), or by a root-relative path (WebVid page_dir/videoid).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Iterable

from stgt_pipeline.errors import StgtError
from stgt_pipeline.io.remote import RemoteError, is_remote, list_files


@dataclass
class VideoIndex:
    root: str
    by_name: dict[str, str] = field(default_factory=dict)  # file name -> its shallowest root-relative path
    duplicates: dict[str, list[str]] = field(default_factory=dict)  # names found more than once: every path

    @classmethod
    def from_paths(cls, root: str, rel_paths: Iterable[str]) -> "VideoIndex":
        index = cls(root)
        # Shallowest first, then alphabetical: the same result whatever order the listing came in.
        # A listed path never leaves the root; an object key with '..' in it (S3 allows one) is not a video of it.
        inside = (p for p in rel_paths if not p.startswith("/") and ".." not in p.split("/"))
        for rel in sorted(inside, key=lambda p: (p.count("/"), p)):
            name = PurePosixPath(rel).name
            if name in index.by_name:
                index.duplicates.setdefault(name, [index.by_name[name]]).append(rel)
            else:
                index.by_name[name] = rel
        return index

    @classmethod
    def scan(cls, root: str) -> "VideoIndex":
        return cls.from_paths(root, list_remote(root) if is_remote(root) else list_local(root))

    def find(self, names: Iterable[str]) -> str | None:
        """The root-relative path of the first candidate present: a bare name matches at any depth (shallowest
        copy wins), a name with a folder must match that path."""
        for name in names:
            base = name.rsplit("/", 1)[-1]  # not PurePosixPath: this runs once per row of a 10M-row corpus
            if "/" not in name:
                if base in self.by_name:
                    return self.by_name[base]
            elif self.by_name.get(base) == name or name in self.duplicates.get(base, ()):
                return name
        return None


def list_local(root: str) -> list[str]:
    if not os.path.isdir(root):
        raise StgtError(f"prepare.benchmark.root: {root} is not a directory")
    out = []
    for folder, _, files in os.walk(root, followlinks=True):
        rel_folder = os.path.relpath(folder, root)
        for name in files:
            out.append(PurePosixPath(rel_folder, name).as_posix() if rel_folder != "." else name)
    return out


def list_remote(root: str) -> list[str]:
    """Every object key under an fsspec URL (s3://bucket/prefix): one paginated listing. Credentials and endpoint
    come from the environment (AWS_* variables, as for DVC; see stgt_pipeline/io/remote.py)."""
    try:
        keys = list_files(root)
    except RemoteError as exc:
        raise StgtError(f"prepare.benchmark.root: cannot list {root} ({exc.reason})") from None
    if not keys:  # S3 has no folders: a mistyped prefix lists nothing rather than failing
        raise StgtError(f"prepare.benchmark.root: no objects under {root}")
    return keys
