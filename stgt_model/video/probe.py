"""Read a video's container facts (duration, fps, size, codec, rotation) without decoding it all."""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class VideoInfo:
    duration: float  # seconds; 0.0 when the container does not say
    fps: float
    width: int  # stored (coded) size, before rotation
    height: int
    codec: str
    num_frames: int  # as the container claims; 0 when unknown
    rotation: int  # degrees clockwise from the display matrix, 0/90/180/270

    def as_dict(self) -> dict:
        return asdict(self)


class ProbeError(Exception):
    pass


def probe(path: str | Path) -> VideoInfo:
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ProbeError("no video stream")
            stream = container.streams.video[0]
            ctx = stream.codec_context
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            fps = float(rate) if rate else 0.0
            if stream.duration and stream.time_base:
                duration = float(stream.duration * stream.time_base)
            elif container.duration:
                duration = container.duration / 1_000_000
            else:
                duration = 0.0
            frames = int(stream.frames or 0) or (int(round(duration * fps)) if duration and fps else 0)
            rotation = _rotation(stream)
            return VideoInfo(
                duration=round(duration, 4),
                fps=round(fps, 4),
                width=int(ctx.width),
                height=int(ctx.height),
                codec=str(ctx.name),
                num_frames=frames,
                rotation=rotation,
            )
    except ProbeError:
        raise
    except Exception as exc:  # PyAV raises many error types for broken files
        raise ProbeError(f"{type(exc).__name__}: {exc}") from None


def _rotation(stream) -> int:
    # PyAV >= 14 exposes the display-matrix rotation on the frame side data; the stream metadata is the cheap place.
    for source in (getattr(stream, "metadata", {}) or {},):
        value = source.get("rotate")
        if value:
            return int(value) % 360
    try:
        matrix = stream.side_data.get("DISPLAYMATRIX") if hasattr(stream, "side_data") else None
    except Exception:
        matrix = None
    if matrix is not None:
        try:
            return int(round(-float(matrix))) % 360
        except (TypeError, ValueError):
            return 0
    return 0


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
