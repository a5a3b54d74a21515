"""WebVid-style corpora are streamed: rows are read, looked up and written a batch at a time."""
from __future__ import annotations

import csv
import json
import shutil
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
import pyarrow.parquet as pq
import pytest

from stgt_pipeline.errors import StgtError
from stgt_pipeline.io.manifest import COLUMNS, ManifestWriter, read_manifest
from stgt_pipeline.params import PrepareConfig
from stgt_pipeline.sources.benchmarks import webvid
from stgt_pipeline.sources.benchmarks.streaming import iter_json_array

ROWS = 200_000
PRESENT = (0, 70_000, ROWS - 1)


def page_dir(i: int) -> str:
    return f"{i // 50 * 50:06d}_{i // 50 * 50 + 49:06d}"


class PeakRss:
    """Peak resident memory above the starting point, sampled every few milliseconds."""

    def __enter__(self) -> "PeakRss":
        self.process = psutil.Process()
        self.baseline = self.peak = self.process.memory_info().rss
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc: object) -> None:
        self.running = False
        self.thread.join()

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.baseline) / 2**20


def make_corpus(tmp_path: Path, real_media: Path, rows: int, present: tuple[int, ...]) -> tuple[Path, Path]:
    """A WebVid CSV (real column layout) of `rows` rows whose videos exist for the `present` rows only."""
    ann = tmp_path / "results_2M_train.csv"
    with open(ann, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["videoid", "contentUrl", "duration", "page_dir", "name"])
        for i in range(rows):
            out.writerow([1_000_000 + i, f"https://example.invalid/{i}.mp4", "PT00H00M12S", page_dir(i),
                          f"aerial shot of coastline {i}, at dusk"])
    root = tmp_path / "videos"
    root.mkdir()
    for i, clip in zip(present, sorted((real_media / "videos/msrvtt_test").glob("*.mp4"))):
        (root / page_dir(i)).mkdir(parents=True)
        shutil.copy(clip, root / page_dir(i) / f"{1_000_000 + i}.mp4")
    return ann, root


def test_200k_row_csv_streams_in_constant_memory(tmp_path, real_media):
    ann, root = make_corpus(tmp_path, real_media, ROWS, PRESENT)
    cfg = PrepareConfig(source="webvid", benchmark={"root": str(root), "splits": {"train": {"annotations": [str(ann)]}},
                                                   "max_missing_share": 1.0})
    out = tmp_path / "dataset"
    out.mkdir()
    import great_expectations  # noqa: F401  (its import, hundreds of MiB, is not the corpus's)

    with PeakRss() as memory:
        plan = webvid.build(cfg, out)
        with ManifestWriter(out, plan.data_root, "webvid", batch_rows=1000) as writer:
            for rows in plan.clips:
                writer.add(rows)
    # Held in memory, 200k manifest rows and entries would take hundreds of MiB.
    assert memory.growth_mib < 60, f"streaming 200k rows grew the process by {memory.growth_mib:.0f} MiB"
    assert plan.total == ROWS

    manifest = read_manifest(out)
    assert sorted(manifest.table.video_id) == [str(1_000_000 + i) for i in PRESENT]
    assert manifest.table.path.iloc[0] == f"{page_dir(0)}/1000000.mp4"
    assert manifest.table.captions.iloc[0].tolist() == ["aerial shot of coastline 0, at dusk"]
    assert manifest.table.duration.notna().all()
    missing = pd.read_csv(out / "missing_videos.csv", dtype=str)
    assert len(missing) == ROWS - len(PRESENT) == plan.report["missing_videos"]
    assert missing.looked_for.iloc[0] == f"{page_dir(1)}/1000001.mp4"
    card = (out / "data_card.md").read_text()
    assert "| train | 200,000 | - | 3 | 199,997 |" in card


def test_missing_share_over_the_threshold_fails_readably(tmp_path, real_media):
    ann, root = make_corpus(tmp_path, real_media, 20, (0,))
    cfg = PrepareConfig(source="webvid", benchmark={"root": str(root), "splits": {"train": {"annotations": [str(ann)]}},
                                                   "max_missing_share": 0.2})
    (tmp_path / "dataset").mkdir()
    plan = webvid.build(cfg, tmp_path / "dataset")
    with pytest.raises(StgtError, match=r"19 of 20 webvid videos \(95.0%\) not found under .*"
                                        r"max_missing_share 0.2\); e.g. 1000001, 1000002"):
        for _ in plan.clips:
            pass


def test_manifest_writer_writes_row_groups_readable_as_the_manifest(tmp_path):
    rows = [{**{c: None for c in COLUMNS}, "video_id": f"v{i}", "path": f"v{i}.mp4", "split": "train",
             "captions": [f"c{i}"], "qa": []} for i in range(25)]
    with ManifestWriter(tmp_path, tmp_path / "videos", "webvid", batch_rows=10) as writer:
        for row in rows:
            writer.add([row])
    assert pq.ParquetFile(tmp_path / "manifest.parquet").num_row_groups == 3
    manifest = read_manifest(tmp_path)
    assert list(manifest.table.video_id) == [f"v{i}" for i in range(25)]
    assert manifest.data_root == tmp_path / "videos" and manifest.source == "webvid"


def test_lavis_json_array_is_read_record_by_record(tmp_path):
    items = [{"video": f"{i:06d}/{i}.mp4", "caption": f"caption {i} \u00e9"} for i in range(50)]
    path = tmp_path / "webvid.json"
    path.write_text(json.dumps(items, indent=1))
    got = [obj for _, obj in iter_json_array(path, chunk_chars=7)]  # tiny chunks: records straddle them
    assert got == items
    entries = list(webvid.read_caption_list(path, "train"))
    assert (entries[3].video_id, entries[3].names, entries[3].captions) == ("3", ("000003/3.mp4",), ["caption 3 \u00e9"])


@pytest.mark.parametrize("content, message", [
    ('[{"video": "a.mp4", "caption": "x"},\n {"video": "b.mp4", "capt', r"webvid.json:2: record 1: invalid JSON .*truncated"),
    ('[{"video": "a.mp4", "caption": "x"},\n', r"webvid.json:2: record 1: expected an object \(file truncated\?\)"),
    ('[{"video": "a.mp4", "caption": "x"}\n {"video": "b.mp4"}]', r"webvid.json:2: after record 0: expected ',' or ']'"),
    ('[{"video": "a.mp4", "caption": "x"}, 3]', r"webvid.json:1: record 1: expected an object"),
    ('[{"video": "a.mp4"}]', r"webvid.json:1: field 'caption': missing"),
])
def test_malformed_json_array_names_line_and_record(tmp_path, content, message):
    path = tmp_path / "webvid.json"
    path.write_text(content)
    with pytest.raises(StgtError, match=message):
        list(webvid.read_caption_list(path, "train"))


def test_webvid_csv_without_its_columns_fails_on_the_header(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("videoid,caption,page_dir\n1,x,000000_000049\n")
    with pytest.raises(StgtError, match=r"results.csv:1: wrong CSV header: expected columns including videoid,name,page_dir"):
        list(webvid.read_webvid_csv(path, "train"))
