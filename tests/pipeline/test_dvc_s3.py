"""DVC remote on S3: `dvc repro` the project's real data stages (dvc.yaml from components/registry.py, tiny params),
push their outputs to moto's S3 server on loopback, pull them into a fresh clone: same bytes, and the clone's
data stages are up to date (a `dvc repro` there would not recompute them).

The remote is configured as docs/dvc-remote.md says: endpoint in .dvc/config (committed), keys in
.dvc/config.local (never committed) for the push, and from the environment for the pull.
"""
from __future__ import annotations

import hashlib
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

from stgt_pipeline import stages
from tests.pipeline.dvc_project import TINY_PARAMS, make_project, run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

BIN = Path(sys.executable).parent
BUCKET = "stgt-dvc"
KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
DATA_STAGES = ("prepare", "validate", "extract_frames", "build_graphs")
LAST_DATA_STAGE = DATA_STAGES[-1]
DATA = [path for stage in DATA_STAGES for path in stages.get(stage).outputs.values()]
# test_dvc_repro's tiny corpus, plus a backbone input matching the 32 px frames and a CPU build_graphs (the tiny
# model alone would keep params.yaml's 96 px backbone.image_size: 9x the tokens, from upsampled frames).
PARAMS = {**TINY_PARAMS, "model": {"preset": "tiny", "backbone": {"image_size": 32}},
          "build_graphs": {"batch_size": 8, "device": "cpu"}}


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
        s3(url).create_bucket(Bucket=BUCKET)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


def s3(url: str):
    return boto3.client("s3", endpoint_url=url, region_name="us-east-1", **{k.lower(): v for k, v in KEYS.items()})


def hermetic(env: dict[str, str], home: Path) -> dict[str, str]:
    """No AWS credentials, profile or instance metadata from this machine, no user-level DVC/git config."""
    env = {k: v for k, v in env.items() if not k.startswith("AWS_")}
    home.mkdir(exist_ok=True)
    return {**env, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "AWS_EC2_METADATA_DISABLED": "true",
            "STGT_TRACKING": "off"}


def digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for d in DATA for p in sorted((root / d).rglob("*")) if p.is_file()}


def test_push_to_s3_and_pull_into_a_fresh_clone_gives_identical_files(tmp_path, s3_endpoint):
    repo, env = make_project(tmp_path, PARAMS)
    env = hermetic(env, tmp_path / "home")
    assert yaml.safe_load((repo / "dvc.yaml").read_text())["stages"].keys() >= set(DATA_STAGES)
    repro = run(["dvc", "repro", LAST_DATA_STAGE], repo, env).stdout
    assert all(f"Running stage '{stage}'" in repro for stage in DATA_STAGES), repro
    assert "Running stage 'pretrain'" not in repro

    run(["dvc", "remote", "add", "-d", "store", f"s3://{BUCKET}/dvc"], repo, env)
    run(["dvc", "remote", "modify", "store", "endpointurl", s3_endpoint], repo, env)
    run(["dvc", "remote", "modify", "store", "region", "us-east-1"], repo, env)
    run(["dvc", "remote", "modify", "--local", "store", "access_key_id", KEYS["AWS_ACCESS_KEY_ID"]], repo, env)
    run(["dvc", "remote", "modify", "--local", "store", "secret_access_key", KEYS["AWS_SECRET_ACCESS_KEY"]], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-q", "-m", "tiny run of the data stages"], repo, env)
    tracked = run(["git", "ls-files"], repo, env).stdout.split()
    assert ".dvc/config.local" not in tracked, "credentials must never be committed"
    # The stages' summaries are metrics with cache: false, so git carries them, not the remote (without them the
    # clone's stages would not be up to date).
    assert {stages.get(stage).metrics for stage in DATA_STAGES} <= set(tracked)
    assert "testing" not in (repo / ".dvc" / "config").read_text()
    run(["dvc", "push"], repo, env)
    original = digests(repo)
    for out in DATA:
        assert any(p.startswith(out + "/") for p in original), f"{out}: no files"

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path, env)
    assert not (clone / ".dvc" / "config.local").exists()
    assert not any((clone / out).exists() for out in DATA)
    # The data stages only: a bare `dvc pull` fetches them too, but exits 1 on the stages never run (pretrain
    # onwards: no hash in dvc.lock, "Checkout failed"), as docs/dvc-remote.md says.
    pull = ["dvc", "pull", "--with-deps", LAST_DATA_STAGE]
    # moto takes any key, but a pull with none at all fails: the keys below are what lets it in.
    denied = run(pull, clone, env, check=False)
    assert denied.returncode != 0 and "Unable to locate credentials" in denied.stderr, denied.stderr
    run(pull, clone, {**env, **KEYS})
    pulled = digests(clone)
    assert pulled == original
    assert any(p.endswith(".mp4") for p in pulled) and any(p.endswith(".npy") for p in pulled)
    # Up to date as pulled: a `dvc repro` in the clone would go straight to pretrain. (`dvc status STAGE` alone
    # checks that stage only; --with-deps adds its upstream stages.)
    status = run(["dvc", "status", "--with-deps", LAST_DATA_STAGE], clone, env).stdout
    assert status.strip() == "Data and pipelines are up to date.", status
    stored = s3(s3_endpoint).list_objects_v2(Bucket=BUCKET, Prefix="dvc/")
    assert stored["KeyCount"] >= len(set(original.values()))
