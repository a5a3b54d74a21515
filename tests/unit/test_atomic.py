import pytest

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
