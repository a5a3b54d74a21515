"""DVC remote on S3: push a tiny pipeline run's data to moto's S3 server, pull it into a fresh clone, same bytes.

The remote is configured as docs/dvc-remote.md says: endpoint in .dvc/config (committed), keys in
.dvc/config.local (never committed) for the push, and from the environment for the pull.
"""
from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import boto3
import pytest
import yaml

BIN = Path(sys.executable).parent
BUCKET = "stgt-dvc"
KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
# `prepare` writes the corpus (videos + manifest): real data, in seconds. The later data stages add only import
# time here (GX, decoders), and the kfp.local test runs them.
TINY_PARAMS = {"prepare": {"num_videos": 6, "frames_per_video": 8, "width": 32, "height": 32}}
STAGES = {"prepare": {"cmd": "stgt prepare", "params": ["prepare"], "outs": ["data/prepared"]}}
DATA = ["data/prepared"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3_endpoint(tmp_path) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=(tmp_path / "moto.log").open("w"))
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url, timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto_server did not start: {(tmp_path / 'moto.log').read_text()[-2000:]}")
                time.sleep(0.2)
        boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                     aws_access_key_id="testing", aws_secret_access_key="testing").create_bucket(Bucket=BUCKET)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return {**base, "PATH": f"{BIN}{os.pathsep}{base['PATH']}", "DVC_NO_ANALYTICS": "1",
            "DVC_SITE_CACHE_DIR": str(tmp_path / "dvc-site"), "STGT_TRACKING": "off", "HOME": str(tmp_path),
            "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@example.com"}


def sh(cwd: Path, env: dict[str, str], *args: str) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for d in DATA for p in sorted((root / d).rglob("*")) if p.is_file()}


def test_push_to_s3_and_pull_into_a_fresh_clone_gives_identical_files(tmp_path, s3_endpoint, env):
    repo = tmp_path / "repo"
    repo.mkdir()
    sh(repo, env, "git", "init", "-q")
    sh(repo, env, "dvc", "init", "-q")
    (repo / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS))
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": STAGES}, sort_keys=False))
    sh(repo, env, "dvc", "repro", "-q")
    sh(repo, env, "dvc", "remote", "add", "-d", "store", f"s3://{BUCKET}/dvc")
    sh(repo, env, "dvc", "remote", "modify", "store", "endpointurl", s3_endpoint)
    sh(repo, env, "dvc", "remote", "modify", "store", "region", "us-east-1")
    sh(repo, env, "dvc", "remote", "modify", "--local", "store", "access_key_id", KEYS["AWS_ACCESS_KEY_ID"])
    sh(repo, env, "dvc", "remote", "modify", "--local", "store", "secret_access_key", KEYS["AWS_SECRET_ACCESS_KEY"])
    sh(repo, env, "git", "add", "-A")
    sh(repo, env, "git", "commit", "-q", "-m", "tiny run")
    assert ".dvc/config.local" not in sh(repo, env, "git", "ls-files"), "credentials must never be committed"
    assert "testing" not in (repo / ".dvc" / "config").read_text()
    sh(repo, env, "dvc", "push", "-q")

    clone = tmp_path / "clone"
    sh(tmp_path, env, "git", "clone", "-q", str(repo), str(clone))
    assert not (clone / "data" / "prepared").exists()
    sh(clone, {**env, **KEYS}, "dvc", "pull", "-q")
    pulled = digests(clone)
    assert pulled == digests(repo) and any(p.endswith(".mp4") for p in pulled)
    assert "up to date" in sh(clone, env, "dvc", "status").lower()
    stored = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing").list_objects_v2(Bucket=BUCKET, Prefix="dvc/")
    assert stored["KeyCount"] >= len(pulled)
