"""A throwaway git + DVC copy of this project for pipeline tests (the real `dvc` CLI, never the user's repo)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO_ROOT

TINY_PARAMS = {
    "prepare": {"num_videos": 9, "frames_per_video": 8, "width": 64, "height": 64, "val_share": 0.12, "test_share": 0.25},
    "extract_frames": {"num_frames": 4, "size": 32, "workers": 1, "shard_size": 8},
    "model": {"preset": "tiny"},
}


def project_files() -> list[str]:
    """Tracked files plus untracked, non-ignored ones (so a working tree under development is tested as is)."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT,
                         capture_output=True, text=True, check=True).stdout.split()
    return [f for f in out if not f.startswith(("tests/", "bench/", "infra/")) and (REPO_ROOT / f).is_file()]


def tool_env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "DVC_NO_ANALYTICS": "1",
        "DVC_SITE_CACHE_DIR": str(tmp / "dvc-site-cache"),
        "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.invalid",
        "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.invalid",
        "GX_ANALYTICS_ENABLED": "false",
        "HF_HUB_OFFLINE": "1",
    })
    return env


def run(cmd: list[str], cwd: Path, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def make_project(tmp: Path, params: dict | None = None) -> tuple[Path, dict[str, str]]:
    repo = tmp / "project"
    for rel in project_files():
        dst = repo / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / rel, dst)
    data = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in (params or TINY_PARAMS).items():
        data.setdefault(section, {}).update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    env = tool_env(tmp)
    run(["git", "init", "-q"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "init"], repo, env)
    return repo, env
