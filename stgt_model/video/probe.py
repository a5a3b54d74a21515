"""Read a video's container facts (duration, fps, size, codec, rotation) without decoding it all.

Also the two choices every reader must share so the manifest and the frames describe the same pictures:
which video stream of a file is "the" video (`select_video_stream`) and how it is rotated for display
(`display_rotation`).
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import av


@dataclass(frozen=True)
class VideoInfo:
    duration: float  # seconds; from the header, else measured on the stream's packets; 0.0 when neither says
    fps: float
    width: int  # stored (coded) size, before rotation
    height: int
    codec: str
    num_frames: int  # as the container claims; 0 when unknown
    rotation: int  # degrees clockwise to turn the stored picture for display: 0/90/180/270
    duration_from: str = "stream"  # where `duration` came from: "stream" or "container" header, or "packets"

    def as_dict(self) -> dict:
        return asdict(self)


class ProbeError(Exception):
    pass


def probe(path: str | Path) -> VideoInfo:
    try:
        with av.open(str(path)) as container:
            stream = select_video_stream(container)
            ctx = stream.codec_context
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            fps = float(rate) if rate else 0.0
            width, height, codec = int(ctx.width), int(ctx.height), str(ctx.name)
            frames = int(stream.frames or 0)
            if stream.duration and stream.time_base:
                duration, duration_from = float(stream.duration * stream.time_base), "stream"
            elif container.duration:
                duration, duration_from = container.duration / 1_000_000, "container"
            else:
                rotation = display_rotation(container, stream)
                duration, packets = packet_duration(path, stream.index)
                return VideoInfo(duration=round(duration, 4), fps=round(fps, 4), width=width, height=height,
                                 codec=codec, num_frames=frames or packets, rotation=rotation,
                                 duration_from="packets" if duration else "none")
            frames = frames or (int(round(duration * fps)) if duration and fps else 0)
            return VideoInfo(
                duration=round(duration, 4),
                fps=round(fps, 4),
                width=width,
                height=height,
                codec=codec,
                num_frames=frames,
                rotation=display_rotation(container, stream),
                duration_from=duration_from,
            )
    except ProbeError:
        raise
    except Exception as exc:  # PyAV raises many error types for broken files
        raise ProbeError(f"{path}: {type(exc).__name__}: {exc}") from None


def packet_duration(path: str | Path, stream_index: int) -> tuple[float, int]:
    """(seconds, packets) of a stream whose container records no duration (Matroska/WebM without a Duration
    element): read its packets to the end without decoding them, from the first timestamp to the end of the last
    packet. The file is read once more this way, at demuxing speed."""
    first = last = None
    count = 0
    with av.open(str(path)) as container:
        stream = container.streams[stream_index]
        for packet in container.demux(stream):
            if packet.pts is None and packet.dts is None:
                continue  # the flush packet at the end
            count += 1
            pts = packet.pts if packet.pts is not None else packet.dts
            end = pts + (packet.duration or 0)
            first = pts if first is None else min(first, pts)
            last = end if last is None else max(last, end)
        time_base = stream.time_base
    if first is None or not time_base:
        return 0.0, count
    return float((last - first) * time_base), count


def video_streams(container: av.container.InputContainer) -> list[av.VideoStream]:
    """The file's real video streams: cover art (an attached picture) is stored as a video stream but is not one."""
    return [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]


def select_video_stream(container: av.container.InputContainer) -> av.VideoStream:
    """The video stream every reader uses: the largest picture (width x height), ties to the lowest index.

    Explicit because readers disagree: decord (FFmpeg 4.1's av_find_best_stream) and PyAV's `streams.video[0]`
    pick different streams of a two-stream file. Largest-picture is what the `ffmpeg` CLI maps by default.
    """
    streams = video_streams(container)
    if not streams:
        raise ProbeError(f"{container.name}: no video stream")
    return max(streams, key=lambda s: (s.codec_context.width * s.codec_context.height, -s.index))


def display_rotation(container: av.container.InputContainer, stream: av.VideoStream) -> int:
    """Clockwise degrees (0/90/180/270) from the display matrix; reads the container forward (no seek back).

    PyAV 18 exposes the matrix only on decoded frames (`VideoFrame.rotation`), not on the stream, so this decodes
    the first frame. A file whose first frame does not decode counts as unrotated; the decoder reports the damage.
    """
    try:
        frame = next(container.decode(stream), None)
    except av.FFmpegError:
        return 0
    return frame_rotation(frame) if frame is not None else 0


def frame_rotation(frame: av.VideoFrame) -> int:
    """Clockwise display rotation of one decoded frame, snapped to a multiple of 90 degrees.

    `VideoFrame.rotation` is FFmpeg's av_display_rotation_get: counter-clockwise degrees, so negate it.
    """
    return (-int(round(frame.rotation / 90.0)) * 90) % 360


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
