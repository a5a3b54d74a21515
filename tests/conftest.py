"""Shared test set-up: offline, quiet tools, hermetic temp dirs, paths to the shared real media, an S3 endpoint."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
REAL_MEDIA = SHARED / "real-media"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
# Stage tests run without MLflow; tests/tracking turns it on against a real server.
os.environ.setdefault("STGT_TRACKING", "off")


@pytest.fixture
def real_media() -> Path:
    if not REAL_MEDIA.is_dir():
        pytest.skip(f"real media not found at {REAL_MEDIA} (it lies beside the checkout as ../shared/real-media)")
    return REAL_MEDIA


@pytest.fixture
def s3(monkeypatch) -> Iterator[Any]:
    """moto's S3 server on loopback, in this process, with the AWS_* variables (as DVC and botocore read them)
    pointing at it; yields a boto3 client. Bucket `bench` exists."""
    moto = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    import s3fs

    server = moto.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    for key, value in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_ENDPOINT_URL": f"http://{host}:{port}"}.items():
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()  # a cached filesystem would keep an earlier test's endpoint
    try:
        client = boto3.client("s3")
        client.create_bucket(Bucket="bench")
        yield client
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()


def stop_process_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """Stop a server started with start_new_session=True and its workers: SIGTERM to the group, SIGKILL after
    `grace_s`; a group that already exited is fine."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def wait_until_up(proc: subprocess.Popen, url: str, log_path: Path, timeout_s: float, what: str) -> None:
    """Poll `url` until it answers 200; fail with the server's log if the process exits or `timeout_s` passes."""
    import requests

    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not up after {timeout_s}s:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.5)
