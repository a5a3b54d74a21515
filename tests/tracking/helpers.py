"""Small builders shared by the tracking tests: a tiny valid dataset and a tiny torch model."""
from __future__ import annotations

import subprocess
from pathlib import Path

import av
import numpy as np
import pandas as pd

from stgt_model.video.probe import probe, sha256_file
from stgt_pipeline.io.manifest import write_manifest


def _clip(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=8)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for _ in range(8):
            img = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(stream.encode())


def make_dataset(root: Path, splits: tuple[str, ...] = ("train", "train", "test")) -> list[dict]:
    """root/manifest.parquet over one short H.264 clip per split entry (a valid manifest for `validate`)."""
    (root / "videos").mkdir(parents=True)
    rows = []
    for seed, split in enumerate(splits):
        vid = f"v{seed}"
        path = root / "videos" / f"{vid}.mp4"
        _clip(path, seed)
        info = probe(path)
        rows.append({"video_id": vid, "path": f"videos/{vid}.mp4", "split": split, "captions": ["a red circle moves"],
                     "qa": [], "duration": info.duration, "fps": info.fps, "width": info.width, "height": info.height,
                     "codec": info.codec, "sha256": sha256_file(path), "twin_id": None})
    write_manifest(pd.DataFrame(rows), root, root, "test")
    return rows


def git_commit(project: Path) -> str:
    """Make `project` a git checkout with one commit (data and tracking output ignored); returns the sha."""
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.invalid", "PATH": "/usr/bin:/bin"}
    (project / ".gitignore").write_text("data/\nreports/\nmlflow.db\nmlartifacts/\n.stgt/\n")
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "init"]):
        subprocess.run(["git", *args], cwd=project, env=env, check=True, capture_output=True)
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True, check=True).stdout
    return sha.strip()
