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


def validate_with(tmp_path, root, text):
    params = tmp_path / "p.yaml"
    params.write_text(text)
    return run_stage("validate", params_path=params, inputs={"dataset": root},
                     outputs={"report": tmp_path / "reports" / "validate"}, metrics_path=tmp_path / "m.json")


def test_per_video_failures_within_max_failed_share_are_quarantined_with_their_reason(tmp_path, dataset, capsys):
    """#17 'Also': one bad row failed validate for the whole dataset. Within validate.max_failed_share each failing
    video is set aside with its reasons, counted, listed in result.json and in the report; the rest passes."""
    root, rows = dataset
    rows.append(row(root, "d", "train", seed=4))
    rows.append(dict(row(root, "e", "test", seed=5), duration=0.0))  # a container that says nothing
    (root / "videos" / "d.mp4").unlink()
    write_manifest(pd.DataFrame(rows), root, root, "test")
    summary = validate_with(tmp_path, root, "validate:\n  max_failed_share: 0.4\n")
    assert summary["success"] and (summary["videos"], summary["quarantined"]) == (5, 2)
    result = json.loads((tmp_path / "reports" / "validate" / "result.json").read_text())
    assert result["success"] and result["without_quarantined"]["success"]
    reasons = {q["video_id"]: (q["path"], q["reason"]) for q in result["quarantined"]}
    assert reasons["d"] == ("videos/d.mp4", "expect_column_values_to_be_in_set(file_exists): file_exists=False")
    assert reasons["e"][1].startswith("expect_column_values_to_be_between(duration): duration=0.0")
    html = (tmp_path / "reports" / "validate" / "report.html").read_text()
    assert "PASSED, 2 quarantined" in html and "videos/d.mp4" in html and "videos/e.mp4" in html
    err = capsys.readouterr().err
    assert "validate: 2 of 5 videos quarantined" in err and "- d (videos/d.mp4): " in err

    # Above the share the stage fails as before, saying why, and the failing videos are in the report.
    with pytest.raises(StageFailed, match=r"2 of 5 videos fail \(40.0%\), above validate.max_failed_share 20.0%"):
        validate_with(tmp_path, root, "validate:\n  max_failed_share: 0.2\n")
    assert not json.loads((tmp_path / "reports" / "validate.failed" / "result.json").read_text())["success"]


def test_a_failure_of_the_whole_manifest_is_not_quarantined_away(tmp_path, dataset):
    """A required split that is absent is about the dataset, not one video: no share lets it pass; neither does a
    rest that fails once the bad videos are set aside (here: the only test video is the bad one)."""
    root, rows = dataset
    write_manifest(pd.DataFrame([r for r in rows if r["split"] != "test"]), root, root, "test")
    with pytest.raises(StageFailed, match=r"an expectation about the whole manifest.*\n.*distinct_values_to_contain"):
        validate_with(tmp_path, root, "validate:\n  max_failed_share: 0.9\n")
    rows[2]["duration"] = 0.0  # c, the test video
    write_manifest(pd.DataFrame(rows), root, root, "test")
    with pytest.raises(StageFailed, match=r"after setting aside 1 video\(s\) within max_failed_share, the rest still"):
        validate_with(tmp_path, root, "validate:\n  max_failed_share: 0.5\n")
