"""The synthetic video-text corpus: coloured shapes that move, appear, disappear and change colour.

Each clip is a script of timed events on a 3x3 grid of cells. Frames are rendered from the script with numpy and
encoded as H.264 with PyAV; captions and QA pairs are derived from the same script. The time-reversed twin (the
clip's frames in reverse order) takes its text from the reversed script, so directions, appear/disappear, colour
changes and event order all flip: the twins are hard negatives in training and a temporal-order probe in test.

Everything is seeded per clip (numpy Generator from (seed, index)) and encoded single-threaded with fixed options,
so the same seed gives byte-identical videos and manifest. x264's macroblock-tree rate control is off: with it on,
the bytes of a clip depended on what the process had encoded before (8 in-process repeats of 9 clips and their
twins: 15 of 144 files differed; with mbtree=0, 0 of 360).
"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from stgt_model.video.probe import sha256_file
from stgt_pipeline.errors import StgtError
from stgt_pipeline.params import PrepareConfig
from stgt_pipeline.sources import Row, SourcePlan, manifest_row

BACKGROUND = (24, 24, 24)
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 70),
    "blue": (50, 100, 235),
    "yellow": (240, 220, 50),
    "purple": (160, 70, 200),
    "orange": (245, 145, 25),
}
SHAPES = ("circle", "square", "triangle")
# Cells are (column, row); a move crosses the whole grid. "up" lowers the row because image rows grow downwards.
STEPS = {"left": (-2, 0), "right": (2, 0), "up": (0, -2), "down": (0, 2)}
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
REVERSED_KIND = {"move": "move", "recolour": "recolour", "appear": "disappear", "disappear": "appear"}
NUMBERS = ("zero", "one", "two", "three")
# Lossless (qp 0) and reproducible (mbtree off, see above). Lossless because the probe compares a clip with its
# twin, the same frames in reverse: lossy coding would make the twin's frames differ from the clip's by codec noise,
# which an order-blind scorer could tell apart (measured: 100% pair accuracy by noise alone at crf 18; 0% lossless).
X264_OPTIONS = {"preset": "veryfast", "qp": "0", "x264-params": "mbtree=0"}
MAX_WORKERS = 8


# ------------------------------------------------------------------------------------------------------------------
# scripts


@dataclass(frozen=True)
class Item:
    shape: str  # unique within a clip, so "the circle" always names one item
    colour: str  # at this point in time (while hidden: the colour it shows when it appears)
    cell: tuple[int, int]
    visible: bool


@dataclass(frozen=True)
class Event:
    kind: str  # move | appear | disappear | recolour
    item: int
    t0: int  # frames; the change runs from t0 to t1, events never overlap
    t1: int
    direction: str = ""  # move
    colours: tuple[str, ...] = ()  # recolour: (old, new)


@dataclass(frozen=True)
class Script:
    frames: int
    items: tuple[Item, ...]  # as at frame 0
    events: tuple[Event, ...]  # in time order


def apply(item: Item, event: Event) -> Item:
    if event.kind == "move":
        dc, dr = STEPS[event.direction]
        return replace(item, cell=(item.cell[0] + dc, item.cell[1] + dr))
    if event.kind == "recolour":
        return replace(item, colour=event.colours[1])
    return replace(item, visible=event.kind == "appear")


def timeline(script: Script) -> list[tuple[Event, Item]]:
    """Each event with its item as it is just before the event."""
    items = list(script.items)
    steps = []
    for event in script.events:
        steps.append((event, items[event.item]))
        items[event.item] = apply(items[event.item], event)
    return steps


def final_items(script: Script) -> tuple[Item, ...]:
    items = list(script.items)
    for event in script.events:
        items[event.item] = apply(items[event.item], event)
    return tuple(items)


def reverse(script: Script) -> Script:
    """The script of the clip played backwards: frame t becomes frame T-1-t."""
    last = script.frames - 1
    events = tuple(
        Event(REVERSED_KIND[e.kind], e.item, last - e.t1, last - e.t0, OPPOSITE.get(e.direction, ""), e.colours[::-1])
        for e in reversed(script.events)
    )
    return Script(script.frames, final_items(script), events)


def _options(items: list[Item], used: set[tuple[int, str]], spare_colours: list[str]) -> list[tuple[str, int, str]]:
    """Events that may happen next. One move, one recolour and one appear-or-disappear per item at most: with
    unique shapes this makes every script differ from its reverse (no clip reads the same backwards)."""
    occupied = {item.cell for item in items}
    options = []
    for i, item in enumerate(items):
        if (i, "toggle") not in used:
            options.append(("disappear" if item.visible else "appear", i, ""))
        if not item.visible:
            continue
        if (i, "recolour") not in used and spare_colours:
            options.append(("recolour", i, ""))
        if (i, "move") not in used:
            for direction, (dc, dr) in STEPS.items():
                cell = (item.cell[0] + dc, item.cell[1] + dr)
                if 0 <= cell[0] <= 2 and 0 <= cell[1] <= 2 and cell not in occupied:
                    options.append(("move", i, direction))
    return options


def random_script(rng: np.random.Generator, frames: int) -> Script:
    n_items = int(rng.integers(1, 4))
    shapes = [str(s) for s in rng.permutation(SHAPES)[:n_items]]
    palette = [str(c) for c in rng.permutation(list(COLOURS))]
    spare_colours = palette[n_items:]  # recolours take unused colours, so "the red object" is always unambiguous
    cells = [(int(c) % 3, int(c) // 3) for c in rng.permutation(9)[:n_items]]
    items = [Item(shapes[i], palette[i], cells[i], bool(rng.random() < 0.75)) for i in range(n_items)]

    state, used, planned = list(items), set(), []
    for _ in range(int(rng.integers(1, 4))):
        options = _options(state, used, spare_colours)
        if not options:
            break
        kind, i, direction = options[int(rng.integers(len(options)))]
        colours = (state[i].colour, spare_colours.pop(0)) if kind == "recolour" else ()
        used.add((i, "toggle" if kind in ("appear", "disappear") else kind))
        planned.append((kind, i, direction, colours))
        state[i] = apply(state[i], Event(kind, i, 0, 1, direction, colours))

    # Items that never show up would be invisible in the video: drop them and renumber.
    shown = sorted({i for i, item in enumerate(items) if item.visible} | {p[1] for p in planned})
    index = {old: new for new, old in enumerate(shown)}
    n = len(planned)
    bounds = [(2 * k * (frames - 1) + n) // (2 * n) for k in range(n + 1)]  # n equal spans over the clip
    events = tuple(
        Event(kind, index[i], bounds[k], bounds[k + 1], direction, colours)
        for k, (kind, i, direction, colours) in enumerate(planned)
    )
    return Script(frames, tuple(items[i] for i in shown), events)


# ------------------------------------------------------------------------------------------------------------------
# rendering


@dataclass
class Track:
    """One item's per-frame drawing state."""

    shape: str
    x: np.ndarray
    y: np.ndarray
    rgb: np.ndarray  # (T, 3)
    drawn: np.ndarray  # bool


def _lerp(a: np.ndarray | int, b: np.ndarray | int, w: np.ndarray, d: int) -> np.ndarray:
    # Integer and symmetric in (a, w) <-> (b, d - w): the reversed script renders exactly the reversed frames.
    num = np.asarray(a) * (d - w) + np.asarray(b) * w
    return (2 * num + d) // (2 * d)


def _centre(cell: tuple[int, int], width: int, height: int) -> tuple[int, int]:
    return (2 * cell[0] + 1) * width // 6, (2 * cell[1] + 1) * height // 6


def tracks(script: Script, width: int, height: int) -> list[Track]:
    t = np.arange(script.frames)
    out = []
    for i, item in enumerate(script.items):
        x0, y0 = _centre(item.cell, width, height)
        x, y = np.full(script.frames, x0), np.full(script.frames, y0)
        rgb = np.tile(np.array(COLOURS[item.colour] if item.visible else BACKGROUND), (script.frames, 1))
        drawn = np.full(script.frames, item.visible)
        for event, before in timeline(script):
            if event.item != i:
                continue
            d = event.t1 - event.t0
            after = t >= event.t0
            w = np.minimum(t[after] - event.t0, d)
            if event.kind == "move":
                (xa, ya), (xb, yb) = _centre(before.cell, width, height), _centre(apply(before, event).cell, width, height)
                x[after], y[after] = _lerp(xa, xb, w, d), _lerp(ya, yb, w, d)
                continue
            if event.kind == "recolour":
                a, b = COLOURS[event.colours[0]], COLOURS[event.colours[1]]
            elif event.kind == "appear":
                a, b = BACKGROUND, COLOURS[before.colour]
                drawn[after] = w > 0
            else:
                a, b = COLOURS[before.colour], BACKGROUND
                drawn[after] = w < d
            rgb[after] = _lerp(np.array(a), np.array(b), w[:, None], d)
        out.append(Track(item.shape, x, y, rgb.astype(np.uint8), drawn))
    return out


def shape_masks(radius: int) -> dict[str, np.ndarray]:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    inner = radius * 4 // 5
    return {
        "circle": xx**2 + yy**2 <= radius**2,
        "square": (np.abs(xx) <= inner) & (np.abs(yy) <= inner),
        "triangle": (yy <= inner) & (2 * np.abs(xx) <= yy + radius),
    }


def renderer(script: Script, width: int, height: int) -> Callable[[int], np.ndarray]:
    """frame(t) -> (height, width, 3) uint8. Items stay inside the frame: the radius is under half a cell."""
    radius = min(width, height) // 8
    side = 2 * radius + 1
    masks = shape_masks(radius)
    background = np.empty((height, width, 3), np.uint8)
    background[:] = BACKGROUND
    # Plain lists: indexing numpy scalars per frame would cost more than the drawing itself.
    stamps = [
        (masks[tr.shape], tr.drawn.tolist(), (tr.x - radius).tolist(), (tr.y - radius).tolist(), tr.rgb)
        for tr in tracks(script, width, height)
    ]

    def frame(t: int) -> np.ndarray:
        image = background.copy()
        for mask, drawn, left, top, rgb in stamps:
            if drawn[t]:
                image[top[t] : top[t] + side, left[t] : left[t] + side][mask] = rgb[t]
        return image

    return frame


def write_mp4(path: Path, frames: Iterable[np.ndarray], width: int, height: int, fps: int) -> None:
    import av

    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps, options=X264_OPTIONS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.thread_count = 1
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


# ------------------------------------------------------------------------------------------------------------------
# text: captions and QA from the script


SPAN = {
    "right": "from left to right",
    "left": "from right to left",
    "up": "from the bottom to the top",
    "down": "from the top to the bottom",
}
WAY = {"right": "to the right", "left": "to the left", "up": "up", "down": "down"}
PHRASES = {  # one form per caption template, so paraphrases differ in wording as well as in structure
    "move": ("the {name} moves {span}", "the {name} moves {way}", "the {name} slides {way}"),
    "appear": ("{a_name} appears", "{a_name} shows up", "{a_name} fades in"),
    "disappear": ("the {name} disappears", "the {name} vanishes", "the {name} fades out"),
    "recolour": ("the {name} turns {new}", "the {shape} changes colour from {old} to {new}", "the {name} becomes {new}"),
}
VERBS = {"move": "moves", "appear": "appears", "disappear": "disappears", "recolour": "changes colour"}


def _name(item: Item) -> str:
    return f"{item.colour} {item.shape}"


def _a_name(item: Item) -> str:
    return f"{'an' if item.colour[0] in 'aeiou' else 'a'} {_name(item)}"


def _phrase(event: Event, item: Item, form: int) -> str:
    return PHRASES[event.kind][form].format(
        name=_name(item),
        a_name=_a_name(item),
        shape=item.shape,
        span=SPAN.get(event.direction, ""),
        way=WAY.get(event.direction, ""),
        old=event.colours[0] if event.colours else "",
        new=event.colours[1] if event.colours else "",
    )


def _scene(items: Iterable[Item]) -> str:
    """'there is nothing' / 'there is a red circle' / 'there are a red circle and a blue square'."""
    names = [_a_name(item) for item in items if item.visible]
    if not names:
        return "there is nothing"
    listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
    return f"there {'is' if len(names) == 1 else 'are'} {listed}"


def _narrative(script: Script) -> str:
    return ", then ".join(_phrase(e, item, 0) for e, item in timeline(script))


def _ordinal(script: Script) -> str:
    p = [_phrase(e, item, 1) for e, item in timeline(script)]
    if len(p) == 1:
        return f"at first {_scene(script.items)}, then {p[0]}"
    return f"first {p[0]}, then {p[1]}" + (f", and finally {p[2]}" if len(p) == 3 else "")


def _ending(script: Script) -> str:
    steps = ", after that ".join(_phrase(e, item, 2) for e, item in timeline(script))
    return f"{steps}; in the end {_scene(final_items(script))}"


TEMPLATES: tuple[Callable[[Script], str], ...] = (_narrative, _ordinal, _ending)


def captions(script: Script, templates: Iterable[int]) -> list[str]:
    return [TEMPLATES[k](script) for k in templates]


def qa_pairs(script: Script) -> list[dict[str, str]]:
    """Questions chosen by what the clip contains, so a clip and its twin are asked the same questions; the
    time-dependent ones (direction, order, colour at start/end or after a change) get different answers."""
    start, end, steps = script.items, final_items(script), timeline(script)
    recolours = {e.item: e for e in script.events if e.kind == "recolour"}
    pairs: list[tuple[str, str, str]] = []
    for i, item in enumerate(start):
        if i in recolours:
            pairs.append(("shape", "what shape changes colour?", item.shape))
            if start[i].visible and end[i].visible:
                pairs.append(("colour", f"what colour is the {item.shape} at the start?", start[i].colour))
                pairs.append(("colour", f"what colour is the {item.shape} at the end?", end[i].colour))
            else:
                pairs.append(("colour", f"what colour does the {item.shape} turn?", recolours[i].colours[1]))
        else:
            pairs.append(("shape", f"what shape is the {item.colour} object?", item.shape))
            pairs.append(("colour", f"what colour is the {item.shape}?", item.colour))
    for when, items in (("start", start), ("end", end)):
        pairs.append(("count", f"how many objects are there at the {when}?", NUMBERS[sum(it.visible for it in items)]))
    for event, item in steps:
        if event.kind == "move":
            pairs.append(("direction", f"which way does the {_name(item)} move?", event.direction))
    if len(steps) >= 2:
        for which, (event, item) in (("first", steps[0]), ("last", steps[-1])):
            pairs.append(("order", f"what happens {which}?", f"{item.shape} {VERBS[event.kind]}"))
    return [{"question": q, "answer": a, "type": kind} for kind, q, a in sorted(pairs)]


# ------------------------------------------------------------------------------------------------------------------
# clips, splits and the source


@dataclass(frozen=True)
class Text:
    captions: list[str]
    qa: list[dict[str, str]]


@dataclass(frozen=True)
class Clip:
    script: Script
    text: Text
    reversed_text: Text  # the time-reversed twin's


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng([seed % 2**64, *key])


def draw_script(seed: int, index: int, frames: int, attempt: int) -> tuple[Script, np.random.Generator]:
    rng = _rng(seed, 1, index, attempt) if attempt else _rng(seed, 1, index)
    return random_script(rng, frames), rng


def unique_attempts(seed: int, count: int, frames: int) -> list[int]:
    """Per clip, the first draw whose scene (and its reversal) no earlier clip has: the scene space is small
    (one shape vanishing in place recurs every few hundred clips), and two byte-identical videos in different
    splits would leak test clips into training (the validate stage rejects that)."""
    seen: set[Script] = set()
    attempts = []
    for index in range(count):
        attempt = 0
        while (script := draw_script(seed, index, frames, attempt)[0]) in seen:
            attempt += 1
        seen.update((script, reverse(script)))
        attempts.append(attempt)
    return attempts


def make_clip(seed: int, index: int, frames: int, attempt: int = 0) -> Clip:
    """Clip `index` depends only on (seed, index, attempt), not on how many clips are made."""
    script, rng = draw_script(seed, index, frames, attempt)
    templates = sorted(int(k) for k in rng.choice(len(TEMPLATES), int(rng.integers(1, 4)), replace=False))
    backwards = reverse(script)
    text = Text(captions(script, templates), qa_pairs(script))
    reversed_text = Text(captions(backwards, templates), qa_pairs(backwards))
    if set(text.captions) & set(reversed_text.captions):
        raise AssertionError(f"clip {index}: a caption reads the same for the time-reversed clip: {text.captions}")
    return Clip(script, text, reversed_text)


def split_counts(n: int, val_share: float, test_share: float) -> dict[str, int]:
    n_test = max(1, int(n * test_share + 0.5))
    n_val = int(n * val_share + 0.5)
    if n - n_test - n_val < 1:
        raise StgtError(f"prepare.num_videos={n} leaves no train clip with val_share={val_share}, test_share={test_share}")
    return {"train": n - n_test - n_val, "val": n_val, "test": n_test}


def assign_splits(n: int, val_share: float, test_share: float, seed: int) -> list[str]:
    counts = split_counts(n, val_share, test_share)
    order = _rng(seed, 0).permutation(n)
    splits = ["train"] * n
    for i in order[: counts["test"]]:
        splits[i] = "test"
    for i in order[counts["test"] : counts["test"] + counts["val"]]:
        splits[i] = "val"
    return splits


def twin_split(split: str, reversed_twins: bool) -> str | None:
    """Train twins are hard negatives in train (when enabled); test twins go to 'probe', outside the retrieval test
    set, so retrieval chance stays 1/len(test) while the temporal-order probe pairs them; val clips get none."""
    if split == "test":
        return "probe"
    return "train" if split == "train" and reversed_twins else None


def clip_rows(cfg: PrepareConfig, root: Path, index: int, split: str, attempt: int = 0) -> list[Row]:
    clip = make_clip(cfg.seed, index, cfg.frames_per_video, attempt)
    frame = renderer(clip.script, cfg.width, cfg.height)
    forward = range(cfg.frames_per_video)
    video_id = f"syn_{index:05d}"
    copies = [(video_id, split, clip.text, forward)]
    twin = twin_split(split, cfg.reversed_twins)
    if twin:
        copies.append((f"{video_id}_rev", twin, clip.reversed_text, reversed(forward)))
    # Known by construction (and checked against probe() in the tests); probing every file would add half again.
    facts = {
        "duration": round(cfg.frames_per_video / cfg.fps, 4),
        "fps": float(cfg.fps),
        "width": cfg.width,
        "height": cfg.height,
        "codec": "h264",
    }
    rows = []
    for vid, vsplit, text, order in copies:
        rel = f"videos/{vid}.mp4"
        write_mp4(root / rel, (frame(t) for t in order), cfg.width, cfg.height, cfg.fps)
        twin_id = next((other[0] for other in copies if other[0] != vid), None)
        rows.append(manifest_row(vid, rel, vsplit, text.captions, text.qa, twin_id, sha256=sha256_file(root / rel), **facts))
    return rows


def map_in_order(work: Callable[..., list[Row]], args: list[tuple], workers: int) -> Iterator[list[Row]]:
    """Results in input order; clips are independent, so the output does not depend on the worker count."""
    if workers <= 1:
        yield from (work(*a) for a in args)
        return
    pool = ProcessPoolExecutor(workers)
    try:
        yield from pool.map(work, *zip(*args), chunksize=4)
    finally:
        pool.shutdown(cancel_futures=True)  # a failure part-way stops the rest instead of finishing them


def build(cfg: PrepareConfig, dataset_dir: Path) -> SourcePlan:
    if cfg.width % 2 or cfg.height % 2:
        raise StgtError(f"prepare.width/height: H.264 (yuv420p) needs even sizes, got {cfg.width}x{cfg.height}")
    splits = assign_splits(cfg.num_videos, cfg.val_share, cfg.test_share, cfg.seed)
    (dataset_dir / "videos").mkdir(parents=True, exist_ok=True)
    # A pool is worth its start-up only beyond a few clips.
    workers = min(len(os.sched_getaffinity(0)), MAX_WORKERS, cfg.num_videos // 16 + 1)
    attempts = unique_attempts(cfg.seed, cfg.num_videos, cfg.frames_per_video)
    args = [(cfg, dataset_dir, i, splits[i], attempts[i]) for i in range(cfg.num_videos)]
    return SourcePlan(data_root=dataset_dir, total=cfg.num_videos, clips=map_in_order(clip_rows, args, workers))
