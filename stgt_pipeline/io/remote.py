"""Videos under a URL root (s3://bucket/prefix, or any fsspec URL): list them, and copy one to a local temporary
file to read it.

Why copies: decord and PyAV (FFmpeg) open a local path, and they seek; an MP4's index often sits at the end of the
file, so a video cannot be decoded from a forward-only stream. Each video is downloaded whole into a temporary
file, read, and the file removed whatever the outcome. A download that fails (no such object, access denied,
timeout) is one video's failure with a readable reason, like a corrupt file, never the stage's.

Credentials and endpoint come from the environment, as for DVC and botocore: AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), AWS_ENDPOINT_URL or AWS_ENDPOINT_URL_S3 for an S3-compatible store
(MinIO, Ceph, moto), AWS_DEFAULT_REGION.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence, TypeVar

if TYPE_CHECKING:  # the manifest imports this module; decoders load only where videos are read
    from stgt_model.video.decode import ClipFailure, ClipRequest, DecodedClip

CHUNK = 8 << 20  # bytes per ranged read
FETCH_THREADS = 8  # downloads wait on the network, not the CPU: more at once than decoder processes
T = TypeVar("T")
R = TypeVar("R")


class RemoteError(Exception):
    """A listing or download that failed; `reason` is the short text for reports."""

    def __init__(self, url: str, reason: str):
        super().__init__(f"{url}: {reason}")
        self.url, self.reason = url, reason


def is_remote(location: str | os.PathLike) -> bool:
    return "://" in str(location)


def join(root: str, rel: str) -> str:
    return f"{root.rstrip('/')}/{rel}"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "not found"
    if isinstance(exc, PermissionError):
        return f"access denied ({exc})" if str(exc) else "access denied"
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:160]}"


def list_files(root: str) -> list[str]:
    """Every object under `root`, relative to it: one paginated listing."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(root)
        path = path.rstrip("/")
        keys = fs.find(path)
    except Exception as exc:  # botocore, aiohttp and fsspec raise many types; all mean "cannot list"
        raise RemoteError(root, _reason(exc)) from None
    return [k[len(path) + 1:] for k in keys if k.startswith(path + "/")]


def download(url: str, folder: str | Path | None = None, timeout_s: float | None = None) -> Path:
    """Copy `url` into a new temporary file in `folder` (the system's temp dir by default) and return its path;
    the file keeps the URL's extension. On any failure the partial file is removed and RemoteError raised.
    `timeout_s` bounds the whole copy (a stalled read is bounded by botocore's own read timeout)."""
    import fsspec

    fd, name = tempfile.mkstemp(prefix="stgt-video-", suffix=PurePosixPath(url).suffix, dir=folder)
    deadline = time.monotonic() + timeout_s if timeout_s else None
    try:
        with os.fdopen(fd, "wb") as out:
            fs, path = fsspec.core.url_to_fs(url)
            with fs.open(path, "rb", block_size=CHUNK, cache_type="none") as src:
                while block := src.read(CHUNK):
                    out.write(block)
                    if deadline is not None and time.monotonic() > deadline:
                        raise RemoteError(url, f"download timeout after {timeout_s:g}s")
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        if isinstance(exc, Exception) and not isinstance(exc, RemoteError):
            raise RemoteError(url, _reason(exc)) from None
        raise
    return Path(name)


@contextlib.contextmanager
def local_copy(url: str, timeout_s: float | None = None) -> Iterator[Path]:
    """A local temporary copy of `url` for the duration of the block."""
    path = download(url, timeout_s=timeout_s)
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def ordered_map(fn: Callable[[T], R], items: Iterable[T], threads: int, ahead: int = 64) -> Iterator[R]:
    """fn over items in threads, results in input order, at most `ahead` in flight (items may be a 10M-row
    stream, so they are not submitted all at once). threads <= 1: a plain loop."""
    if threads <= 1:
        yield from map(fn, items)
        return
    pool = ThreadPoolExecutor(threads, thread_name_prefix="stgt-fetch")
    window: deque[Future] = deque()
    try:
        for item in items:
            window.append(pool.submit(fn, item))
            if len(window) >= ahead:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()
    finally:
        pool.shutdown(cancel_futures=True)


def read_clips_fetched(requests: Sequence[ClipRequest], workers: int, timeout_s: float, batch: int = 0
                       ) -> Iterator[tuple[int, DecodedClip | ClipFailure]]:
    """`decode.read_clips`, where a request's path may be a URL: those videos are downloaded (in threads, the
    next batch while this one decodes) into a private temporary folder, decoded from there, and deleted once
    their batch is done; the folder goes at the end, even on failure or interrupt. A failed download is that
    video's ClipFailure. Each video gets `timeout_s` to download and again to decode."""
    from stgt_model.video.decode import ClipFailure, ClipRequest, read_clips

    if not any(is_remote(r.path) for r in requests):
        yield from read_clips(requests, workers, timeout_s)
        return
    batch = batch or max(16, 4 * workers)
    starts = range(0, len(requests), batch)
    with tempfile.TemporaryDirectory(prefix="stgt-fetch-") as folder:
        pool = ThreadPoolExecutor(max(FETCH_THREADS, workers), thread_name_prefix="stgt-fetch")

        def stage(request: ClipRequest) -> ClipRequest | ClipFailure:
            if not is_remote(request.path):
                return request
            try:
                local = download(request.path, folder, timeout_s)
            except RemoteError as exc:
                return ClipFailure(request.key, f"download failed: {exc.reason}")
            return dataclasses.replace(request, path=str(local))

        def submit(start: int) -> list[Future]:
            return [pool.submit(stage, r) for r in requests[start:start + batch]]

        try:
            pending = submit(starts[0])
            for start in starts:
                staged = [f.result() for f in pending]
                pending = submit(start + batch) if start + batch < len(requests) else []
                try:
                    local = [s for s in staged if isinstance(s, ClipRequest)]
                    with contextlib.closing(read_clips(local, workers, timeout_s)) as decoded:
                        for offset, item in enumerate(staged):
                            yield start + offset, item if isinstance(item, ClipFailure) else next(decoded)[1]
                finally:
                    for s, original in zip(staged, requests[start:start + batch]):
                        if isinstance(s, ClipRequest) and s.path != original.path:
                            with contextlib.suppress(FileNotFoundError):
                                os.unlink(s.path)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # running downloads finish before the folder goes
