"""`stgt pipeline ...`: clear one-line errors, compile --check."""
from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from stgt_pipeline.cli import main
from tests.conftest import REPO_ROOT


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nothing listens there


def stgt(*args: str, cwd=REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stgt_pipeline.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def test_submit_to_an_unreachable_host_fails_fast_with_the_url():
    url = f"http://127.0.0.1:{closed_port()}"
    started = time.monotonic()
    proc = stgt("pipeline", "submit", "--host", url)
    assert proc.returncode == 2
    assert time.monotonic() - started < 30
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and url in lines[0] and lines[0].startswith("error: cannot reach")


def test_submit_rejects_a_host_that_is_not_a_url(capsys):
    assert main(["pipeline", "submit", "--host", "localhost:8080"]) == 2
    assert "expected an http(s) URL" in capsys.readouterr().err


def test_compile_check_passes_on_the_checked_in_file_and_fails_on_a_stale_one(tmp_path, capsys):
    params = str(REPO_ROOT / "params.yaml")
    assert main(["pipeline", "compile", "--check", "--params", params,
                 "--output", str(REPO_ROOT / "pipelines" / "stgt_pipeline.yaml")]) == 0
    stale = tmp_path / "stale.yaml"
    stale.write_text("# old\n")
    assert main(["pipeline", "compile", "--check", "--params", params, "--output", str(stale)]) == 2
    assert "out of date" in capsys.readouterr().err


@pytest.mark.parametrize("override,message", [
    ("prepare.num_videos=lots", "prepare.num_videos"),
    ("nosuch.key=1", "nosuch"),
])
def test_run_local_rejects_bad_overrides_before_running(override, message, tmp_path, capsys):
    assert main(["pipeline", "run-local", "--params", str(REPO_ROOT / "params.yaml"), "--output-dir",
                 str(tmp_path), "--set", override]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err
    assert not any(tmp_path.iterdir())
