"""Which T frame indices to take from a clip of N decodable frames.

Modes follow the reference (LAVIS `load_video`, ALPRO processors):
- "uniform":  the first frame of each of T equal segments (eval).
- "middle":   the middle frame of each of T equal segments (eval).
- "headtail": T//2 random frames from the first half and T - T//2 from the second half, each sorted (train).
- "random":   one random frame from each of T equal segments (TSN / VindLU "rand"; train).
A clip shorter than T gives each of its frames once and is padded by repeating the last index, as the reference.

Each mode also has a "mirrored_" form (not in the reference): the mode's indices i on the same N frames, taken
at N - 1 - i in reverse order. It is for a clip's time-reversed twin (the temporal-order probe): frame j of the
twin is frame N - 1 - j of the clip, so the twin sampled with "mirrored_<mode>" shows exactly the moments the
clip shows with <mode> (and the same generator draws), in reverse order. None of the modes is mirror-symmetric
("uniform" takes a segment's first frame, so its mirror takes the last), and sampling the twin with the clip's
own mode would show it other moments: a frame-order-blind model could then tell the two apart by content.
A mirrored short clip is padded at the front, by repeating its first index.
"""
from __future__ import annotations

from typing import Literal, cast

import numpy as np

SamplingMode = Literal["uniform", "middle", "headtail", "random",
                       "mirrored_uniform", "mirrored_middle", "mirrored_headtail", "mirrored_random"]
BASE_MODES: tuple[str, ...] = ("uniform", "middle", "headtail", "random")
MIRRORED = "mirrored_"
MODES: tuple[str, ...] = BASE_MODES + tuple(MIRRORED + mode for mode in BASE_MODES)
RANDOM_MODES = frozenset({"headtail", "random", MIRRORED + "headtail", MIRRORED + "random"})


def mirrored(mode: str) -> SamplingMode:
    """The mode that samples a time-reversed twin at the moments `mode` samples its clip."""
    if mode not in BASE_MODES:
        raise ValueError(f"only a base sampling mode ({', '.join(BASE_MODES)}) has a mirror, got {mode!r}")
    return cast(SamplingMode, MIRRORED + mode)


def mirror_indices(indices: list[int], num_available: int) -> list[int]:
    """Indices into the time-reversed clip of the same moments, in reverse order (so still sorted)."""
    return [num_available - 1 - i for i in reversed(indices)]


def sample_indices(
    num_available: int, num_frames: int, mode: SamplingMode, rng: np.random.Generator | None = None
) -> list[int]:
    """Sorted frame indices, exactly `num_frames` long. `rng` is required (and only used) by the random modes."""
    if num_available < 1:
        raise ValueError(f"cannot sample from a clip with {num_available} frames")
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    if mode not in MODES:
        raise ValueError(f"unknown sampling mode {mode!r}; expected one of {', '.join(MODES)}")
    if mode in RANDOM_MODES and rng is None:
        raise ValueError(f"sampling mode {mode!r} needs a numpy Generator (rng) so runs are reproducible")
    if mode.startswith(MIRRORED):
        return mirror_indices(_base_indices(num_available, num_frames, mode[len(MIRRORED):], rng), num_available)
    return _base_indices(num_available, num_frames, mode, rng)


def _base_indices(num_available: int, num_frames: int, mode: str, rng: np.random.Generator | None) -> list[int]:
    n = min(num_frames, num_available)  # the reference caps T at the clip length, then pads
    if mode == "uniform":
        picked = [i * num_available // n for i in range(n)]
    elif mode == "middle":
        picked = [(2 * i + 1) * num_available // (2 * n) for i in range(n)]
    elif mode == "headtail":
        half = num_available // 2
        head = rng.choice(half, size=n // 2, replace=False) if n // 2 else np.empty(0, int)
        tail = half + rng.choice(num_available - half, size=n - n // 2, replace=False)
        picked = sorted(int(i) for i in head) + sorted(int(i) for i in tail)
    else:  # random: segment bounds are integers so every segment holds at least one frame
        bounds = [i * num_available // n for i in range(n + 1)]
        picked = [int(rng.integers(lo, hi)) for lo, hi in zip(bounds[:-1], bounds[1:])]
    return picked + [picked[-1]] * (num_frames - n)
