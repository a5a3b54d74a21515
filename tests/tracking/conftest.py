"""Tracking tests run against a real `mlflow server` on loopback (SQLite in a temp dir, one worker), started once
per session (as soon as collection shows a test needs it) and stopped when the session ends; each test gets its
own experiment and working directory."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.conftest import stop_process_group, wait_until_up

SERVER_START_TIMEOUT_S = 120  # ~20-25 s on 2 cores with --workers 1 (more on a busy machine)
_server: dict[str, Any] = {}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(root: Path) -> dict[str, Any]:
    """`mlflow server --workers 1` on a free loopback port, SQLite and artifacts under root, log in root/server.log;
    not yet healthy (wait_healthy)."""
    port = free_port()
    log = open(root / "server.log", "w")
    # --artifacts-destination: clients upload over HTTP (mlflow-artifacts:/), as pipeline pods would. No job
    # runner process: it serves GenAI jobs only and slows the start.
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        start_new_session=True)  # its own process group, so its workers stop with it
    return {"root": root, "url": f"http://127.0.0.1:{port}", "proc": proc, "log": log}


def stop_server(server: dict[str, Any]) -> None:
    # A test may have killed it already; a test server holds nothing worth a slow graceful stop.
    stop_process_group(server["proc"], grace_s=5)
    server["log"].close()


def wait_healthy(server: dict[str, Any]) -> str:
    """The server's URL once /health answers."""
    wait_until_up(server["proc"], f"{server['url']}/health", server["root"] / "server.log", SERVER_START_TIMEOUT_S,
                  "mlflow server")
    return server["url"]


@pytest.hookimpl(trylast=True)  # after -k/-m deselection
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Start the server as soon as a collected test needs it: it boots while the tests that don't need it run."""
    if not _server and any("mlflow_server" in getattr(item, "fixturenames", ()) for item in items):
        _server.update(start_server(Path(tempfile.mkdtemp(prefix="stgt-mlflow-server-"))))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _server:
        return
    stop_server(_server)
    if exitstatus == 0:
        shutil.rmtree(_server["root"], ignore_errors=True)
    else:
        print(f"\nmlflow server log kept: {_server['root'] / 'server.log'}", file=sys.stderr)
    _server.clear()


@pytest.fixture(scope="session")
def mlflow_server() -> str:
    """The session's server URL once /health answers."""
    return wait_healthy(_server)


@pytest.fixture
def own_mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A server of this test's own, which it may kill: {"url", "proc", "root", "log"}, healthy."""
    server = start_server(tmp_path_factory.mktemp("own-mlflow-server"))
    try:
        wait_healthy(server)
        yield server
    finally:
        stop_server(server)


CLEARED_ENV = ("MLFLOW_RUN_ID", "MLFLOW_PARENT_RUN_ID", "STGT_PARENT_RUN_ID", "MLFLOW_EXPERIMENT_ID", "DVC_STAGE",
               "DVC_ROOT", "RANK", "LOCAL_RANK", "KFP_RUN_ID", "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """Tracking on, no inherited run/parent/dvc variables, cwd in a temp dir (for .stgt/ and mlflow.db)."""
    for name in CLEARED_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STGT_TRACKING", "on")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # a server error shows in seconds, not minutes
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    import mlflow

    while mlflow.active_run():  # a failing test must not leave a run active for the next one
        mlflow.end_run("KILLED")
    mlflow.set_tracking_uri(None)  # nor its URI: MLflow keeps the last one set over the environment's


@pytest.fixture
def tracked(clean_env: Path, mlflow_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Stages log to the session's server, in an experiment of this test's own; returns the experiment name."""
    experiment = f"test-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", experiment)
    return experiment


@pytest.fixture
def client(mlflow_server: str):
    from mlflow import MlflowClient

    return MlflowClient(mlflow_server)


@dataclass
class TrackedPipeline:
    project: Path
    experiment: str
    git_sha: str
    summary: dict


@pytest.fixture(scope="session")
def validated_pipeline(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> TrackedPipeline:
    """The real `validate` stage run once through run_stage on a tiny manifest, tracked on the server, from a git
    checkout with a params.yaml (shared by the assertions on the store and the UI test)."""
    from stgt_pipeline.runner import run_stage
    from tests.tracking.helpers import git_commit, make_dataset

    project = tmp_path_factory.mktemp("project")
    experiment = f"pipeline-{uuid.uuid4().hex[:8]}"
    with pytest.MonkeyPatch.context() as mp:
        for name in CLEARED_ENV:
            mp.delenv(name, raising=False)
        mp.setenv("STGT_TRACKING", "on")
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        mp.setenv("MLFLOW_EXPERIMENT_NAME", experiment)
        mp.chdir(project)
        (project / "params.yaml").write_text("validate:\n  min_caption_chars: 4\n")
        sha = git_commit(project)
        make_dataset(project / "data" / "prepared")
        summary = run_stage("validate", params_path="params.yaml", inputs={"dataset": "data/prepared"},
                            outputs={"report": "reports/validate"}, metrics_path="reports/validate.json")
    return TrackedPipeline(project, experiment, sha, summary)
