"""Videos under an s3:// root (moto on loopback): a failed download is one video's quarantine with a reason, and no
temporary copy outlives its read."""
from __future__ import annotations

import tempfile

import pytest

from stgt_model.video.decode import ClipFailure, ClipRequest, DecodedClip
from stgt_pipeline.io.remote import RemoteError, download, local_copy, read_clips_fetched
from stgt_pipeline.sources.folder import file_facts

CLIP = "videos/msrvtt_test/video7010.mp4"


def leftovers(folder):  # multiprocessing keeps its own pymp-* folder there for the process's lifetime
    return [p.name for p in folder.iterdir() if not p.name.startswith("pymp-")]


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """The temporary folder every copy goes to, so a test can see that nothing is left there."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_failed_download_is_a_quarantine_reason_and_leaves_no_temporary_file(s3, real_media, scratch):
    s3.upload_file(str(real_media / CLIP), "bench", "v/present.mp4")
    requests = [ClipRequest(key=name, path=f"s3://bench/v/{name}.mp4", num_frames=4, size=32, mode="uniform")
                for name in ("present", "absent")]
    results = dict(read_clips_fetched(requests, workers=1, timeout_s=30))
    assert isinstance(results[0], DecodedClip) and results[0].frames.shape == (4, 32, 32, 3)
    assert results[1] == ClipFailure("absent", "download failed: not found")
    assert leftovers(scratch) == []


def test_download_errors_name_the_url_and_remove_the_partial_copy(s3, real_media, scratch):
    s3.upload_file(str(real_media / CLIP), "bench", "v/present.mp4")
    with pytest.raises(RemoteError, match=r"^s3://bench/v/absent.mp4: not found$"):
        download("s3://bench/v/absent.mp4")
    with pytest.raises(RemoteError, match="download timeout after 1e-09s"):
        download("s3://bench/v/present.mp4", timeout_s=1e-9)
    with pytest.raises(ZeroDivisionError), local_copy("s3://bench/v/present.mp4") as copy:
        assert copy.suffix == ".mp4" and copy.stat().st_size == (real_media / CLIP).stat().st_size
        1 / 0
    assert leftovers(scratch) == []
    # prepare probes through the same copies: an absent object gets no facts (validate then names it)
    assert file_facts("s3://bench/v/absent.mp4") == {}
    assert file_facts("s3://bench/v/present.mp4")["duration"] > 0
    assert leftovers(scratch) == []
