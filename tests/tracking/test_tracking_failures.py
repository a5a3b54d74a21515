"""A tracking server that fails (dies while a stage trains, is not MLflow, answers 503 behind a healthy /health):
the stage ends within a bound, with one readable line naming the server and what it answered, MLflow's own retry
defaults (about 4 minutes a request) bounded, and nothing written when it failed before the stage ran."""
from __future__ import annotations

import http.server
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from stgt_pipeline.tracking import runs
from tests.stages.tiny_corpus import corpus, tiny_params  # noqa: F401 - the session fixture

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]

KILLER = Path(__file__).with_name("kill_server_mid_pretrain.py")
# Bounds on a whole command, well under what MLflow's default retries take (minutes): a hang fails the test.
COMMAND_TIMEOUT_S = 150


def stgt_env(uri: str, experiment: str = "failures") -> dict[str, str]:
    """Tracking on against `uri`, with the project's own HTTP limits (not clean_env's test setting)."""
    env = {**os.environ, "STGT_TRACKING": "on", "MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_NAME": experiment}
    for name in runs.HTTP_LIMITS:
        env.pop(name, None)
    return env


class _Answers(http.server.BaseHTTPRequestHandler):
    """404 on every path (`mode` 404: some other web server), or /health 200 and 503 elsewhere (`mode` 503: an
    MLflow whose API is down behind a proxy that answers for it)."""

    mode = "404"

    def _answer(self) -> None:
        healthy = self.mode == "503" and self.path.split("?")[0] == "/health"
        code, body = (200, b"OK") if healthy else (int(self.mode), b"<html>\n<body>no such thing</body>\n</html>\n")
        self.send_response(code)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(params=["404", "503"])
def broken_server(request):
    handler = type(f"Answers{request.param}", (_Answers,), {"mode": request.param})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield request.param, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


EXPECTED = {"404": "answered HTTP 404 on /api/2.0/mlflow/experiments/get-by-name: is it an MLflow tracking server, "
                   "and the URI its root?",
            "503": "answered HTTP 503 on /api/2.0/mlflow/experiments/get-by-name"}


@pytest.mark.timeout(2 * COMMAND_TIMEOUT_S)
def test_a_server_that_is_not_a_healthy_mlflow_stops_the_stage_with_one_line(broken_server, tmp_path):
    mode, url = broken_server
    (tmp_path / "params.yaml").write_text("validate:\n  min_caption_chars: 4\n")
    (tmp_path / "data" / "prepared").mkdir(parents=True)  # the input exists: tracking is what fails
    proc = subprocess.run([sys.executable, "-m", "stgt_pipeline.cli", "validate"], cwd=tmp_path, env=stgt_env(url),
                          capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    assert proc.returncode == 2, proc.stderr[-3000:]
    expected = f"error: validate did not run: MLflow tracking server at {url} {EXPECTED[mode]}"
    assert proc.stderr.splitlines() == [expected]
    assert not (tmp_path / "reports").exists()  # nothing written: the stage never started


@pytest.mark.timeout(2 * COMMAND_TIMEOUT_S)
def test_a_tracking_command_against_a_broken_server_is_one_line_too(broken_server, tmp_path):
    mode, url = broken_server
    proc = subprocess.run([sys.executable, "-m", "stgt_pipeline.cli", "runs"], cwd=tmp_path, env=stgt_env(url),
                          capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.splitlines() == [f"error: MLflow tracking server at {url} {EXPECTED[mode]}"]


@pytest.mark.timeout(4 * COMMAND_TIMEOUT_S)  # the server's start (~20 s) and the tiny corpus come first
def test_server_killed_while_pretrain_trains_ends_in_bounded_time_with_one_line(corpus, own_mlflow_server, tmp_path):
    url, pgid = own_mlflow_server["url"], own_mlflow_server["proc"].pid
    params = tiny_params(tmp_path / "p")
    out, metrics = tmp_path / "checkpoints" / "pretrain", tmp_path / "pretrain.json"
    assert params.pretrain.stage2.steps == 3  # the kill lands at step 2 of 3, inside the stage
    proc = subprocess.run(
        [sys.executable, str(KILLER), str(pgid), "pretrain", "--params", str(tmp_path / "p" / "params.yaml"),
         "--dataset", str(corpus["dataset"]), "--features", str(corpus["features"]), "--checkpoint", str(out),
         "--metrics", str(metrics)],
        cwd=tmp_path, env=stgt_env(url), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    assert own_mlflow_server["proc"].wait(timeout=30) == -9  # it did die mid-stage

    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.rstrip().splitlines()[-1]
    assert re.fullmatch(rf"error: pretrain's outputs are written, but its MLflow run [0-9a-f]{{32}} is incomplete: "
                        rf"MLflow tracking server at {re.escape(url)} is unreachable \(connection refused\) "
                        rf"on /api/2\.0/mlflow/runs/log-batch", last), proc.stderr[-3000:]
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == [last]
    assert (out / "model.pt").is_file() and metrics.is_file()  # the training was not lost
