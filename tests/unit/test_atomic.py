import os
import signal
import stat
import subprocess
import sys

import pytest

from stgt_pipeline.io import atomic
from stgt_pipeline.io.atomic import atomic_dir, atomic_file


def test_atomic_dir_replaces_only_on_success(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "new.txt").write_text("half")
            raise RuntimeError("boom")
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp leftovers

    with atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("done")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_file(tmp_path):
    target = tmp_path / "a" / "f.json"
    with pytest.raises(ValueError):
        with atomic_file(target) as fh:
            fh.write("partial")
            raise ValueError
    assert not target.exists()
    with atomic_file(target) as fh:
        fh.write("ok")
    assert target.read_text() == "ok"
    assert [p.name for p in target.parent.iterdir()] == ["f.json"]


def test_outputs_get_the_umask_permissions_not_tempfiles_private_ones(tmp_path):
    """#17: a temporary folder/file made 0700/0600 keeps those modes after the rename, so another user or pod
    (another UID) on a shared volume could not read the outputs."""
    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "a.txt").write_text("x")
        with atomic_file(tmp_path / "f.json") as fh:
            fh.write("{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "out" / "a.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "f.json").stat().st_mode) == 0o644

    old = os.umask(0o077)  # a user who asks for private files still gets them
    try:
        with atomic_dir(tmp_path / "private") as tmp:
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o700


KILLED_MID_WRITE = """
import os, signal, sys
from stgt_pipeline.io.atomic import atomic_dir, atomic_file
with atomic_dir(sys.argv[1]) as tmp:
    (tmp / "shard-0.npy").write_bytes(b"x" * 1000)
    with atomic_file(sys.argv[2]) as fh:
        fh.write("half")
        os.kill(os.getpid(), signal.SIGKILL)
"""


def test_leftovers_of_a_killed_run_are_removed_by_the_next_one(tmp_path):
    """#17: SIGKILL inside atomic_dir (extract_frames, build_graphs) ran no cleanup and left
    data/.<name>.tmp-*/ with a full copy of the shards; the next run must delete it."""
    target, report = tmp_path / "frames", tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, str(target), str(report)], timeout=120)
    assert proc.returncode == -signal.SIGKILL
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 2 and all(n.startswith((".frames.tmp-", ".report.json.tmp-")) for n in left), left

    # Leftovers a live process (this one) or another host's pod owns are not touched.
    mine = tmp_path / f".frames.tmp-{os.getpid()}.{atomic._host()}.abc123"
    other_host = tmp_path / ".frames.tmp-1.some-other-pod.abc123"
    mine.mkdir()
    other_host.mkdir()

    with atomic_dir(target) as tmp:
        (tmp / "shard-0.npy").write_bytes(b"ok")
    with atomic_file(report) as fh:
        fh.write("ok")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["frames", "report.json", mine.name, other_host.name])
