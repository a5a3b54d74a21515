"""The folder source: a directory of videos plus a JSONL or CSV captions file."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stgt_pipeline.components.prepare import stage as prepare
from stgt_pipeline.components.validate.stage import files_exist
from stgt_pipeline.errors import StgtError
from stgt_pipeline.io.manifest import read_manifest, write_manifest
from stgt_pipeline.params import Params
from stgt_pipeline.sources.synthetic import write_mp4


@pytest.fixture(scope="module")
def clip_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    write_mp4(path, (np.full((32, 48, 3), 10 * t, np.uint8) for t in range(6)), 48, 32, 6)
    return path.read_bytes()


@pytest.fixture
def root(tmp_path, clip_bytes) -> Path:
    root = tmp_path / "videos"
    (root / "sub").mkdir(parents=True)
    for name in ("a.mp4", "b.mp4", "sub/c.mp4"):
        (root / name).write_bytes(clip_bytes)
    return root


def prepare_folder(root: Path, captions: str, out: Path, **folder) -> pd.DataFrame:
    params = Params.model_validate(
        {"prepare": {"source": "folder", "folder": {"root": str(root), "captions": captions, **folder}}}
    )
    prepare.run(params, {}, {"dataset": out})
    manifest = read_manifest(out)
    assert manifest.data_root == root.resolve()
    return manifest.table.set_index("video_id")


def write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return path


def test_jsonl_merges_captions_and_qa_and_defaults_the_split(root, tmp_path):
    write_jsonl(root / "captions.jsonl", [
        {"video": "a.mp4", "caption": "a dog runs", "split": "test"},
        {"video": "a.mp4", "captions": ["a dog is running", "running dog"], "question": "what runs?", "answer": "dog"},
        "",
        {"video": "sub/c.mp4", "caption": "a cat", "question": "what animal?", "answer": "cat", "type": "object"},
    ])
    table = prepare_folder(root, "captions.jsonl", tmp_path / "out", default_split="val")
    assert list(table.index) == ["a", "c"]
    assert list(table.loc["a", "captions"]) == ["a dog runs", "a dog is running", "running dog"]
    assert list(table.loc["a", "qa"]) == [{"question": "what runs?", "answer": "dog", "type": "other"}]
    assert table.loc["a", "split"] == "test" and table.loc["c", "split"] == "val"
    assert table.loc["c", "path"] == "sub/c.mp4" and table.loc["c", "qa"][0]["type"] == "object"
    assert (table.loc["c", "width"], table.loc["c", "height"], table.loc["c", "codec"]) == (48, 32, "h264")
    assert table.loc["c", "duration"] == pytest.approx(1.0) and len(table.loc["c", "sha256"]) == 64


def test_csv_merges_rows_per_video_and_accepts_qa_only_rows(root, tmp_path):
    (tmp_path / "caps.csv").write_text(
        "video,caption,split,question,answer\n"
        "a.mp4,a dog runs,train,,\n"
        'a.mp4,"a dog, running",,what runs?,dog\n'
        "b.mp4,,,how many dogs?,two\n"
        "b.mp4,two dogs,,,\n",
        encoding="utf-8",
    )
    table = prepare_folder(root, str(tmp_path / "caps.csv"), tmp_path / "out")  # captions path as given
    assert list(table.loc["a", "captions"]) == ["a dog runs", "a dog, running"]
    assert [q["answer"] for q in table.loc["a", "qa"]] == ["dog"]
    assert list(table.loc["b", "captions"]) == ["two dogs"] and table.loc["b", "qa"][0]["type"] == "other"
    assert set(table["split"]) == {"train"}


def test_missing_and_unreadable_videos_are_kept_with_null_probe_fields(root, tmp_path):
    (root / "broken.mp4").write_bytes(b"not a video")
    write_jsonl(root / "c.jsonl", [
        {"video": "gone/missing.mp4", "caption": "nothing here"},
        {"video": "broken.mp4", "caption": "garbage"},
    ])
    table = prepare_folder(root, "c.jsonl", tmp_path / "out")
    assert table.loc["missing", "path"] == "gone/missing.mp4"
    assert pd.isna(table.loc["missing", "duration"]) and pd.isna(table.loc["missing", "sha256"])
    assert pd.isna(table.loc["broken", "duration"]) and pd.isna(table.loc["broken", "width"])


BAD_JSONL = [
    ('{"video": "a.mp4", "caption": "x"', "invalid JSON"),
    ('["a.mp4", "x"]', "expected a JSON object"),
    ({"caption": "x"}, "field 'video'"),
    ({"video": "a.mp4", "caption": "  "}, "field 'caption': missing or empty"),
    ({"video": "a.mp4", "captions": ["ok", ""]}, "field 'captions': empty caption"),
    ({"video": "a.mp4"}, "field 'caption'"),
    ({"video": "a.mp4", "caption": "x", "split": "dev"}, "field 'split': unknown split 'dev'"),
    ({"video": "a.mp4", "caption": "x", "question": "what?"}, "field 'answer': question without answer"),
    ({"video": "a.mp4", "caption": "x", "answer": "yes"}, "field 'question': answer without question"),
    ({"video": "a.mp4", "caption": "x", "captoin": "y"}, "unknown field(s) captoin"),
    ({"video": "/abs/a.mp4", "caption": "x"}, "field 'video'"),
    ({"video": "b.mp4", "caption": "x", "split": "test"}, "field 'split'"),  # contradicts line 1
    ({"video": "sub/a.mp4", "caption": "x"}, "collides with a.mp4 (line 1)"),
    ({"video": "c.mp4", "question": "what?", "answer": "this"}, "c.mp4 has questions but no caption"),
]


def test_jsonl_that_is_not_utf8_names_the_line(root, tmp_path):
    (root / "caps.jsonl").write_bytes(b'{"video": "a.mp4", "caption": "ok"}\n{"video": "b.mp4", "caption": "caf\xe9"}\n')
    with pytest.raises(StgtError, match=r"caps\.jsonl:2: not UTF-8"):
        prepare_folder(root, "caps.jsonl", tmp_path / "out")


@pytest.mark.parametrize("bad, message", BAD_JSONL)
def test_malformed_jsonl_names_file_line_and_field(root, tmp_path, bad, message):
    write_jsonl(root / "caps.jsonl", [{"video": "a.mp4", "caption": "fine"}, {"video": "b.mp4", "caption": "ok", "split": "val"}, bad])
    with pytest.raises(StgtError) as err:
        prepare_folder(root, "caps.jsonl", tmp_path / "out")
    assert "caps.jsonl:3: " in str(err.value) and message in str(err.value)
    assert not (tmp_path / "out").exists()


BAD_CSV = [
    ("video,text\na.mp4,x\n", "caps.csv:1: wrong CSV header: expected columns video, caption", "found video, text"),
    ("video,caption,extra\na.mp4,x,y\n", "caps.csv:1: wrong CSV header", "found video, caption, extra"),
    ("video,caption\na.mp4,fine\n,x\n", "caps.csv:3: field 'video'", ""),
    ("video,caption\na.mp4,fine\nb.mp4,\n", "caps.csv:3: field 'caption': missing or empty", ""),
    ("video,caption,split\na.mp4,fine,\nb.mp4,x,dev\n", "caps.csv:3: field 'split': unknown split 'dev'", ""),
    ("video,caption,question,answer\na.mp4,fine,,\nb.mp4,x,why?,\n", "caps.csv:3: field 'answer'", "question without answer"),
    ("video,caption\na.mp4,fine\nb.mp4,x,extra\n", "caps.csv:3: expected 2 columns", ""),
    ("video,caption\na.mp4,fine\nb.mp4,caf\xe9\n".encode("latin-1"), "caps.csv:3: not UTF-8", ""),
]


@pytest.mark.parametrize("text, message, detail", BAD_CSV)
def test_malformed_csv_names_file_line_and_field(root, tmp_path, text, message, detail):
    if isinstance(text, str):
        text = text.encode("utf-8")
    (root / "caps.csv").write_bytes(text)
    with pytest.raises(StgtError) as err:
        prepare_folder(root, "caps.csv", tmp_path / "out")
    assert message in str(err.value) and detail in str(err.value)


def test_a_missing_captions_file_or_root_is_a_readable_error(root, tmp_path):
    with pytest.raises(StgtError, match="nope.jsonl not found"):
        prepare_folder(root, "nope.jsonl", tmp_path / "out")
    with pytest.raises(StgtError, match="not a directory"):
        prepare_folder(tmp_path / "absent", "c.jsonl", tmp_path / "out")
    (root / "empty.csv").write_text("video,caption\n", encoding="utf-8")
    with pytest.raises(StgtError, match="empty.csv: lists no videos"):
        prepare_folder(root, "empty.csv", tmp_path / "out")
    (root / "caps.txt").write_text("video\n", encoding="utf-8")
    with pytest.raises(StgtError, match=r"\.jsonl or \.csv"):
        prepare_folder(root, "caps.txt", tmp_path / "out")


def test_s3_root_keeps_the_url_and_probes_through_temporary_copies(root, tmp_path, s3):
    for name in ("a.mp4", "sub/c.mp4"):
        s3.upload_file(str(root / name), "bench", f"mine/{name}")
    captions = write_jsonl(tmp_path / "caps.jsonl", [{"video": "a.mp4", "caption": "first"},
                                                    {"video": "sub/c.mp4", "caption": "third"},
                                                    {"video": "b.mp4", "caption": "no object"}])
    params = Params.model_validate({"prepare": {"source": "folder",
                                                "folder": {"root": "s3://bench/mine/", "captions": str(captions)}}})
    prepare.run(params, {}, {"dataset": tmp_path / "out"})
    manifest = read_manifest(tmp_path / "out")
    assert manifest.data_root == "s3://bench/mine"
    assert manifest.video_path(manifest.table.iloc[1]) == "s3://bench/mine/sub/c.mp4"
    table = manifest.table.set_index("video_id")
    assert table.loc["a", "width"] == 48 and table.loc["c", "height"] == 32
    assert pd.isna(table.loc["b", "duration"]) and pd.isna(table.loc["b", "sha256"])
    assert files_exist(manifest).tolist() == [True, True, False]  # validate's check, from one listing
    with pytest.raises(StgtError, match="a local file is needed when prepare.folder.root is a URL"):
        prepare_folder("s3://bench/mine", "caps.jsonl", tmp_path / "out2")


@pytest.mark.parametrize("escape", ["../../../../etc/passwd", "../outside/clip.mp4", "sub/../../outside/clip.mp4"])
def test_a_video_path_that_leaves_the_root_is_refused_before_anything_is_read(root, tmp_path, clip_bytes, escape):
    """#17 item 1: only absolute paths were refused; '..' let prepare read and hash /etc/passwd, and a clip beside the
    root was decoded and trained on."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "clip.mp4").write_bytes(clip_bytes)  # a real clip: it would probe and decode fine
    write_jsonl(root / "caps.jsonl", [{"video": "a.mp4", "caption": "fine"}, {"video": escape, "caption": "x"}])
    with pytest.raises(StgtError) as err:
        prepare_folder(root, "caps.jsonl", tmp_path / "out")
    assert "caps.jsonl:2: field 'video'" in str(err.value) and "leaves prepare.folder.root" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_an_s3_key_that_leaves_the_root_is_refused(tmp_path):
    captions = write_jsonl(tmp_path / "caps.jsonl", [{"video": "../other-prefix/a.mp4", "caption": "x"}])
    params = Params.model_validate({"prepare": {"source": "folder",
                                                "folder": {"root": "s3://bench/mine/", "captions": str(captions)}}})
    with pytest.raises(StgtError, match=r"caps\.jsonl:1: field 'video': '\.\./other-prefix/a\.mp4' leaves"):
        prepare.run(params, {}, {"dataset": tmp_path / "out"})


def test_a_manifest_naming_a_file_outside_its_root_is_refused_by_every_reader(root, tmp_path):
    """Whoever wrote it (an older prepare, a hand-edited file), validate and extract_frames read manifests through
    read_manifest, which refuses a path that leaves the data root."""
    write_jsonl(root / "caps.jsonl", [{"video": "a.mp4", "caption": "fine"}])
    prepare_folder(root, "caps.jsonl", tmp_path / "out")
    manifest = read_manifest(tmp_path / "out")
    table = manifest.table.assign(path=["../outside/clip.mp4"])
    (tmp_path / "edited").mkdir()
    write_manifest(table, tmp_path / "edited", manifest.data_root, "folder")
    with pytest.raises(StgtError, match=r"1 video path\(s\) leave the data root .*'\.\./outside/clip\.mp4'"):
        read_manifest(tmp_path / "edited")


def test_benchmark_lookup_never_matches_a_name_outside_the_root():
    """Benchmark annotations name videos that are looked up in one listing of the root: a '..' name matches nothing
    (the video counts as missing), and a listed key with '..' in it (S3 allows one) is not taken as a video."""
    from stgt_pipeline.sources.benchmarks.lookup import VideoIndex

    index = VideoIndex.from_paths("s3://bench/root", ["a.mp4", "clips/b.mp4", "../secret/c.mp4", "x/../../d.mp4"])
    assert index.find(["../../../../etc/passwd"]) is None
    assert index.find(["../secret/c.mp4"]) is None and index.find(["c.mp4"]) is None and index.find(["d.mp4"]) is None
    assert index.find(["../clips/b.mp4", "b.mp4"]) == "clips/b.mp4"
