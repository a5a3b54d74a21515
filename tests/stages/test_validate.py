import json

import av
import numpy as np
import pandas as pd
import pytest

from stgt_model.video.probe import probe, sha256_file
from stgt_pipeline.errors import StageFailed
from stgt_pipeline.io.manifest import write_manifest
from stgt_pipeline.runner import run_stage


def make_clip(path, frames=8, size=64, seed=0):
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=8)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for _ in range(frames):
            img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(stream.encode())


def row(root, vid, split, captions=("a red circle moves left",), seed=0):
    path = root / "videos" / f"{vid}.mp4"
    make_clip(path, seed=seed)
    info = probe(path)
    return {"video_id": vid, "path": f"videos/{vid}.mp4", "split": split, "captions": list(captions), "qa": [],
            "duration": info.duration, "fps": info.fps, "width": info.width, "height": info.height,
            "codec": info.codec, "sha256": sha256_file(path), "twin_id": None}


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "data" / "prepared"
    (root / "videos").mkdir(parents=True)
    rows = [row(root, "a", "train", seed=1), row(root, "b", "train", seed=2), row(root, "c", "test", seed=3)]
    return root, rows


def run(tmp_path, root):
    return run_stage("validate", params_path=tmp_path / "none.yaml", inputs={"dataset": root},
                     outputs={"report": tmp_path / "reports" / "validate"}, metrics_path=tmp_path / "m.json")


def test_valid_manifest_passes_and_writes_html(tmp_path, dataset):
    root, rows = dataset
    write_manifest(pd.DataFrame(rows), root, root, "test")
    summary = run(tmp_path, root)
    assert summary["success"] and summary["videos"] == 3
    html = (tmp_path / "reports" / "validate" / "report.html").read_text()
    assert "PASSED" in html and "expect_column_values_to_be_unique" in html
    assert json.loads((tmp_path / "reports" / "validate" / "result.json").read_text())["success"]


def test_broken_manifest_fails_naming_video_and_keeps_old_output(tmp_path, dataset):
    root, rows = dataset
    write_manifest(pd.DataFrame(rows), root, root, "test")
    run(tmp_path, root)  # a good output exists
    rows[1]["video_id"] = "a"  # duplicate id
    rows[2]["captions"] = []  # no caption
    rows[0]["split"] = "dev"  # unknown split
    leak = dict(rows[2], video_id="d", split="train", captions=["same content as c"])  # c's bytes in two splits
    (root / "videos" / "c.mp4").unlink()  # file missing
    write_manifest(pd.DataFrame(rows + [leak]), root, root, "test")
    with pytest.raises(StageFailed) as exc:
        run(tmp_path, root)
    msg = str(exc.value)
    assert "expect_column_values_to_be_unique(video_id)" in msg
    assert "expect_column_values_to_be_in_set(file_exists): 2 of 4 rows fail, e.g. c, d" in msg
    assert "num_texts" in msg and "split" in msg and "splits_sharing_content" in msg
    assert (tmp_path / "reports" / "validate.failed" / "report.html").exists()
    # The previous successful output is untouched (a failed stage never leaves half-written outputs).
    assert json.loads((tmp_path / "reports" / "validate" / "result.json").read_text())["success"]


def test_ranges_come_from_params(tmp_path, dataset):
    root, rows = dataset
    write_manifest(pd.DataFrame(rows), root, root, "test")
    params = tmp_path / "p.yaml"
    params.write_text("validate:\n  width: {min: 100, max: 200}\n")
    with pytest.raises(StageFailed, match=r"expect_column_values_to_be_between\(width\): 3 of 3 rows fail"):
        run_stage("validate", params_path=params, inputs={"dataset": root},
                  outputs={"report": tmp_path / "r"}, metrics_path=tmp_path / "m.json")
