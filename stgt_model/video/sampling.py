"""Which T frame indices to take from a clip of N decodable frames.

Modes follow the reference (LAVIS `load_video`, ALPRO processors):
- "uniform":  the first frame of each of T equal segments (eval).
- "middle":   the middle frame of each of T equal segments (eval).
- "headtail": T//2 random frames from the first half and T - T//2 from the second half, each sorted (train).
- "random":   one random frame from each of T equal segments (TSN / VindLU "rand"; train).
A clip shorter than T gives each of its frames once and is padded by repeating the last index, as the reference.
"""
from __future__ import annotations

from typing import Literal

import numpy as np

SamplingMode = Literal["uniform", "middle", "headtail", "random"]
MODES: tuple[str, ...] = ("uniform", "middle", "headtail", "random")
RANDOM_MODES = frozenset({"headtail", "random"})


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
