"""Write stage outputs to a temporary path and move them into place only when complete.

A stage that fails part-way must never leave a half-written output where DVC or the next stage would read it.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


def _replace(tmp: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_dir() and not target.is_symlink():
        # Directories cannot be os.replace'd over a non-empty one: swap via a sibling, then delete the old copy.
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        if target.exists() or target.is_symlink():
            target.unlink()
        os.replace(tmp, target)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory next to `target`; on success it replaces `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _replace(tmp, target)


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file next to `target` for writing; on success it replaces `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            yield fh
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _replace(tmp, target)


@contextlib.contextmanager
def rank_zero_dir(target: str | os.PathLike, rank: int) -> Iterator[Path]:
    """atomic_dir on rank 0; a throw-away directory on the other ranks of a torchrun job, which compute the same
    result but must not race rank 0 to replace the output."""
    if rank == 0:
        with atomic_dir(target) as tmp:
            yield tmp
        return
    with tempfile.TemporaryDirectory(prefix=f".{Path(target).name}.rank{rank}-") as tmp:
        yield Path(tmp)


def failed_dir(target: str | os.PathLike) -> Path:
    """Where a stage whose gate failed leaves its reports: beside the output it did not replace."""
    target = Path(target)
    return target.with_name(f"{target.name}.failed")


def keep_evidence(tmp: Path, failed: Path, names: list[str]) -> None:
    """Copy the named reports of a failed run from its temporary output into `failed` (replacing older ones)."""
    shutil.rmtree(failed, ignore_errors=True)
    failed.mkdir(parents=True)
    for name in names:
        if (tmp / name).exists():
            shutil.copyfile(tmp / name, failed / name)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_file(path) as fh:
        json.dump(obj, fh, indent=2, sort_keys=True, default=str)
        fh.write("\n")
