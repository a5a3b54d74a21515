"""Write stage outputs to a temporary path and move them into place only when complete.

A stage that fails part-way must never leave a half-written output where DVC or the next stage would read it.

The temporary path is named `.<target>.tmp-<pid>.<host>.<random>`, so that a later run can tell a leftover of a
killed process (SIGKILL, OOM: no `except` ran) from the work of one still running: each atomic write first deletes
its target's leftovers whose process, on this host, is gone. A temporary path gets the permissions of an ordinary
new file or folder (0666/0777 less the umask), not tempfile's private 0600/0700, which would survive the rename
and hide the outputs from the other users or pods (other UIDs) sharing the volume.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask can only set and return)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"


def _tmp_prefix(target: Path) -> str:
    return f".{target.name}.tmp-{os.getpid()}.{_host()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_leftovers(target: Path) -> list[Path]:
    """Delete the temporary copies of `target` (and the `.old-` copy of a swap) that a killed process of this
    host left behind; those of a live process, or of another host (a pod on a shared volume), are kept."""
    if not target.parent.is_dir():
        return []
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(?:tmp-(\d+)\.([A-Za-z0-9_-]+)\.[^.]+|old-(\d+))$")
    host, removed = _host(), []
    for entry in os.scandir(target.parent):
        match = pattern.match(entry.name)
        if not match:
            continue
        pid, owner = (int(match[1]), match[2]) if match[1] else (int(match[3]), host)
        if owner != host or _alive(pid):
            continue
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


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
    remove_leftovers(target)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(target), dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())
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
    remove_leftovers(target)
    fd, name = tempfile.mkstemp(prefix=_tmp_prefix(target), dir=target.parent)
    os.fchmod(fd, 0o666 & ~_umask())
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
