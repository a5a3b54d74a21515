"""Decode T sampled frames of one video as a (T, size, size, 3) uint8 RGB array: decord first, PyAV as fallback.

Both decoders must give the same pictures for the same file, so the choices they could make differently are
made here, once:
- stream: `probe.select_video_stream` (largest picture). decord cannot be told which stream to read, so a file
  with more than one video stream goes to PyAV, which reads the chosen stream by index; a forced decord read is
  accepted only when its picture size is that stream's.
- frame count: the number of packets of the chosen stream (a demux pass, no decoding), because containers may
  state no count or a wrong one. decord is used only when its count agrees; PyAV decodes to the end and, when
  the decoded count differs, samples again from the true count.
- rotation: decord applies the display matrix itself; PyAV does not, so its frames are turned here.
- resizing: frames are decoded at full size, turned, then resized with OpenCV (area when shrinking, bilinear
  when enlarging; aspect not kept, as the reference) whichever decoder read them.
- damage: a frame that decord cannot give sends the file to PyAV; PyAV decodes the whole stream, so damage
  anywhere in it raises DecodeError (the file is quarantined rather than half-used).

`read_clips` runs many `read_clip` calls in worker processes with a per-video time limit.
"""
from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection as mp_connection
import re
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Iterator, Literal, Sequence

import av
import cv2
import numpy as np

from stgt_model.video.probe import display_rotation, frame_rotation, select_video_stream, video_streams
from stgt_model.video.sampling import SamplingMode, sample_indices

Decoder = Literal["auto", "decord", "pyav"]
# One decoding thread per video: parallelism comes from decoding several videos at once (read_clips), and
# FFmpeg's per-file thread start-up costs more than it gains on short clips.
DECODER_THREADS = 1


class DecodeError(Exception):
    """A video that cannot be decoded; `reason` is the short text for the quarantine report."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class DecodedClip:
    frames: np.ndarray  # (T, size, size, 3) uint8 RGB; (T, H, W, 3) at the source size when size is None
    indices: list[int]  # sampled frame indices, sorted, padded by repeating the last one
    decoder: str  # "decord" | "pyav"
    source_size: tuple[int, int]  # (width, height) after rotation, before resizing
    rotation: int  # clockwise degrees applied for display: 0/90/180/270
    stream_index: int  # container stream index of the video stream read
    frame_count: int  # frames the indices were sampled from


@dataclass(frozen=True)
class _StreamFacts:
    index: int
    streams: int  # number of real video streams in the file
    packets: int  # frame count by demuxing
    rotation: int
    display_size: tuple[int, int]  # (width, height) after rotation


def read_clip(
    path: str | Path,
    num_frames: int,
    size: int | None,
    mode: SamplingMode,
    rng: np.random.Generator | None = None,
    decoder: Decoder = "auto",
) -> DecodedClip:
    """Sample `num_frames` frames of `path` (see sampling.py), in display orientation, resized to size x size
    (None: keep the source size). `decoder="auto"` tries decord and falls back to PyAV; "decord"/"pyav" force
    one (for tests and benchmarks). Raises DecodeError, naming the file, when the video cannot be read."""
    path = Path(path)
    facts = _stream_facts(path)
    indices = sample_indices(facts.packets, num_frames, mode, rng)
    use_decord = decoder == "decord" or (decoder == "auto" and facts.streams == 1)
    decord_reason = ""
    if use_decord:
        try:
            return _read_decord(path, facts, indices, size)
        except DecodeError as exc:
            if decoder == "decord":
                raise
            decord_reason = exc.reason
    try:
        return _read_pyav(path, facts, indices, size, num_frames, mode, rng)
    except DecodeError as exc:
        reason = f"{decord_reason}; {exc.reason}" if decord_reason else exc.reason
        raise DecodeError(path, reason) from None


def _stream_facts(path: Path) -> _StreamFacts:
    if not path.exists():
        raise DecodeError(path, "file not found")
    try:
        with av.open(str(path)) as container:
            streams = video_streams(container)
            if not streams:
                raise DecodeError(path, "no video stream")
            stream = select_video_stream(container)
            index, width, height = stream.index, stream.codec_context.width, stream.codec_context.height
            rotation = display_rotation(container, stream)
        with av.open(str(path)) as container:
            packets = sum(1 for p in container.demux(container.streams[index]) if p.size)
    except av.FFmpegError as exc:
        raise DecodeError(path, f"pyav: cannot open: {_short(exc)}") from None
    if packets == 0:
        raise DecodeError(path, "no video frames")
    display = (height, width) if rotation in (90, 270) else (width, height)
    return _StreamFacts(index, len(streams), packets, rotation, display)


def _read_decord(path: Path, facts: _StreamFacts, indices: list[int], size: int | None) -> DecodedClip:
    import decord  # imported here so PyAV-only callers never load decord's bundled FFmpeg

    try:
        reader = decord.VideoReader(str(path), num_threads=DECODER_THREADS)
        if len(reader) != facts.packets:
            raise DecodeError(path, f"decord: counts {len(reader)} frames, the stream holds {facts.packets}")
        unique, inverse = np.unique(indices, return_inverse=True)
        batch = reader.get_batch(unique.tolist()).asnumpy()
    except DecodeError:
        raise
    except Exception as exc:  # decord raises DECORDError (and RuntimeError) for anything FFmpeg rejects
        raise DecodeError(path, f"decord: {_short(exc)}") from None
    height, width = batch.shape[1:3]
    if (width, height) != facts.display_size:
        raise DecodeError(path, f"decord: read a {width}x{height} picture, stream {facts.index} "
                                f"is {facts.display_size[0]}x{facts.display_size[1]} (another stream?)")
    frames = batch[inverse]
    return DecodedClip(_resize_all(frames, size), indices, "decord", (width, height), facts.rotation, facts.index,
                       facts.packets)


def _read_pyav(path: Path, facts: _StreamFacts, indices: list[int], size: int | None, num_frames: int,
               mode: SamplingMode, rng: np.random.Generator | None) -> DecodedClip:
    kept, count, source_size = _decode_pyav(path, facts.index, set(indices), size)
    if count != facts.packets:  # the packet count was off (e.g. packed frames): sample from what decodes
        if count == 0:
            raise DecodeError(path, "pyav: no frame decodes")
        indices = sample_indices(count, num_frames, mode, rng)
        kept, count, source_size = _decode_pyav(path, facts.index, set(indices), size)
    frames = np.stack([kept[i] for i in indices])
    return DecodedClip(frames, indices, "pyav", source_size, facts.rotation, facts.index, count)


def _decode_pyav(path: Path, stream_index: int, wanted: set[int], size: int | None
                 ) -> tuple[dict[int, np.ndarray], int, tuple[int, int]]:
    """Decode the whole stream (so damage anywhere is seen); keep the wanted frames, turned and resized."""
    kept: dict[int, np.ndarray] = {}
    count = 0
    source_size = (0, 0)
    try:
        with av.open(str(path)) as container:
            stream = container.streams[stream_index]
            stream.codec_context.thread_count = DECODER_THREADS
            for frame in container.decode(stream):
                if count in wanted:
                    picture = _turn(frame.to_ndarray(format="rgb24"), frame_rotation(frame))
                    source_size = (picture.shape[1], picture.shape[0])
                    kept[count] = _resize(picture, size)
                count += 1
    except av.FFmpegError as exc:
        raise DecodeError(path, f"pyav: {_short(exc)} after {count} frames") from None
    return kept, count, source_size


def _turn(picture: np.ndarray, clockwise: int) -> np.ndarray:
    # np.rot90 turns counter-clockwise for positive k; copy so the array is contiguous for OpenCV
    return np.ascontiguousarray(np.rot90(picture, k=-(clockwise // 90))) if clockwise else picture


def _resize(picture: np.ndarray, size: int | None) -> np.ndarray:
    if size is None or picture.shape[:2] == (size, size):
        return picture
    shrinking = picture.shape[0] >= size and picture.shape[1] >= size
    return cv2.resize(picture, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def _resize_all(frames: np.ndarray, size: int | None) -> np.ndarray:
    if size is None:
        return frames
    return np.stack([_resize(f, size) for f in frames])


# decord: "[10:22:39] src/x.cc:292: [10:22:39] src/y.cc:218: [/path] text"; PyAV: "[Errno -22] text"
_NOISE = re.compile(r"^(\[[\d:]+\] \S+:\d+: )*(\[[^\]]*\] )?")


def _short(exc: BaseException, limit: int = 160) -> str:
    """One line of an FFmpeg/decord error, without decord's timestamp, source location and file path."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    text = _NOISE.sub("", lines[0] if lines else "").strip() or type(exc).__name__
    if not text.startswith(type(exc).__name__) and isinstance(exc, av.FFmpegError):
        text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------------------------
# Many videos in worker processes, each with a time limit.
#
# A decoder stuck in FFmpeg (a hung network mount, a pipe with no writer, a pathological file) cannot be
# interrupted from Python, so each video runs in a worker process that is killed and replaced when the video
# exceeds its time limit. concurrent.futures cannot kill one task's worker, hence this small pool.


@dataclass(frozen=True)
class ClipRequest:
    key: str  # the caller's id for the video, echoed in failures
    path: str
    num_frames: int
    size: int | None
    mode: SamplingMode
    seed: tuple[int, ...] = ()  # entropy for numpy's default_rng: the same seed gives the same random indices


@dataclass(frozen=True)
class ClipFailure:
    key: str
    reason: str


def read_clips(requests: Sequence[ClipRequest], workers: int, timeout_s: float
               ) -> Iterator[tuple[int, DecodedClip | ClipFailure]]:
    """Decode `requests` in `workers` processes; yield (position, clip or failure) in request order.

    At most a few clips per worker are held back waiting for a slower earlier one, to bound memory.
    """
    if not requests:
        return
    # fork is unsafe with the threads decord, FFmpeg and tqdm start; forkserver forks each worker from a clean
    # server that has imported the decoders once, so a replacement worker is ready in milliseconds
    context = mp.get_context("forkserver")
    context.set_forkserver_preload([__name__, "decord"])
    pool = [_Worker(context) for _ in range(min(workers, len(requests)))]
    max_ahead = 4 * len(pool)
    todo = deque(range(len(requests)))
    done: dict[int, DecodedClip | ClipFailure] = {}
    next_out = 0
    try:
        while next_out < len(requests):
            for worker in pool:
                if worker.idle and todo and todo[0] < next_out + max_ahead:
                    worker.start(todo.popleft(), requests)
            busy = [w for w in pool if w.position is not None]
            wait_s = max(0.0, min(w.deadline(timeout_s) for w in busy) - time.monotonic()) if busy else None
            for conn in mp_connection.wait([w.conn for w in pool], timeout=wait_s):
                worker = next(w for w in pool if w.conn is conn)
                try:
                    message = conn.recv()
                except (EOFError, OSError):
                    position, code = worker.position, worker.exitcode()
                    if position is None:
                        raise RuntimeError(f"a decoder worker exited on start (exit code {code})") from None
                    done[position] = ClipFailure(requests[position].key, f"decoder process died (exit code {code})")
                    pool[pool.index(worker)] = worker.replace(context)
                    continue
                if message == _READY:
                    worker.ready = True
                else:
                    done[worker.position] = message
                    worker.position = None
            now = time.monotonic()
            for worker in [w for w in pool if w.position is not None and w.deadline(timeout_s) <= now]:
                done[worker.position] = ClipFailure(requests[worker.position].key, f"timeout after {timeout_s:g}s")
                pool[pool.index(worker)] = worker.replace(context)
            while next_out in done:
                yield next_out, done.pop(next_out)
                next_out += 1
    finally:
        for worker in pool:
            worker.stop()


_READY = "ready"


class _Worker:
    def __init__(self, context: BaseContext):
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child,), daemon=True)
        self.process.start()
        child.close()
        self.ready = False  # set when the worker has imported its decoders: start-up time is not decode time
        self.position: int | None = None
        self.started = 0.0

    @property
    def idle(self) -> bool:
        return self.ready and self.position is None

    def start(self, position: int, requests: Sequence[ClipRequest]) -> None:
        self.conn.send(requests[position])
        self.position, self.started = position, time.monotonic()

    def deadline(self, timeout_s: float) -> float:
        return self.started + timeout_s

    def exitcode(self) -> int | None:
        self.process.join(timeout=1)
        return self.process.exitcode

    def replace(self, context: BaseContext) -> "_Worker":
        self.process.kill()
        self.process.join()
        self.conn.close()
        return _Worker(context)

    def stop(self) -> None:
        if self.ready and self.position is None:  # a busy or starting worker would only be waited for
            try:
                self.conn.send(None)
            except OSError:
                pass
            self.process.join(timeout=2)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


def _serve(conn: mp_connection.Connection) -> None:
    """Worker loop: decode requests until told to stop (None). Every outcome goes back as a message."""
    cv2.setNumThreads(1)  # the pool is the parallelism; OpenCV threads would only oversubscribe the cores
    import decord  # noqa: F401  (preloaded by the forkserver; imported before "ready" in any case)

    conn.send(_READY)
    while (request := conn.recv()) is not None:
        rng = np.random.default_rng(list(request.seed)) if request.seed else None
        try:
            result: DecodedClip | ClipFailure = read_clip(request.path, request.num_frames, request.size,
                                                          request.mode, rng)
        except DecodeError as exc:
            result = ClipFailure(request.key, exc.reason)
        except Exception as exc:  # a decoder bug on one file must quarantine that file, not stop the run
            result = ClipFailure(request.key, f"unexpected {type(exc).__name__}: {_short(exc)}")
        conn.send(result)
