"""`mlflow models serve` on the registered retrieval champion answers a video request over HTTP on loopback with
the embedding `stgt index` stored for that clip, and a bad request with a 4xx and one line."""
from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import requests

from stgt_pipeline.search.index import VideoIndex
from tests.conftest import stop_process_group, wait_until_up
from tests.search.world import SearchWorld, subprocess_env
from tests.tracking.conftest import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
START_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def served(search_index: SearchWorld, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    # The scoring server runs `uvicorn` from PATH: the interpreter's own bin folder first.
    env = subprocess_env(search_index)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", search_index.model_uri, "--env-manager",
             "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(proc, f"{url}/ping", log_path, START_TIMEOUT_S, "mlflow models serve")
        yield url
    finally:
        stop_process_group(proc)


def invoke(url: str, records: list[dict]) -> requests.Response:
    return requests.post(f"{url}/invocations", json={"dataframe_records": records}, timeout=120)


def test_a_video_request_gets_the_embedding_stgt_index_stored(served: str, search_index: SearchWorld) -> None:
    index = VideoIndex.open(search_index.index_dir)
    row = index.videos.iloc[0]
    by_path = invoke(served, [{"video": row["path"]}])
    assert by_path.status_code == 200, by_path.text
    embedding = np.asarray(by_path.json()["predictions"][0]["embedding"])
    np.testing.assert_allclose(embedding, index.vectors[int(row["row"])], atol=1e-5)

    by_bytes = invoke(served, [{"video_bytes": base64.b64encode(Path(row["path"]).read_bytes()).decode()}])
    assert by_bytes.status_code == 200, by_bytes.text
    np.testing.assert_allclose(np.asarray(by_bytes.json()["predictions"][0]["embedding"]), embedding, atol=1e-5)

    text = invoke(served, [{"text": "a red circle moves from left to right"}])
    assert text.status_code == 200 and len(text.json()["predictions"][0]["embedding"]) == embedding.shape[1]


@pytest.mark.parametrize("record, says", [
    ({"video": "/no/such/clip.mp4"}, "video not found: /no/such/clip.mp4"),
    ({"video_bytes": base64.b64encode(b"these bytes are no video").decode()}, "not a readable video"),
    ({"video_bytes": "%%% not base64 %%%"}, "video_bytes must be the file's bytes in base64"),
    ({"clip": "a.mp4"}, "give either a `text` column or one video column"),
], ids=["missing file", "not a video", "not base64", "wrong field"])
def test_a_bad_request_gets_a_4xx_with_one_line(served: str, record: dict, says: str) -> None:
    response = invoke(served, [record])
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:500])
    body = response.json()
    assert body["error_code"] == "INVALID_PARAMETER_VALUE"
    # MLflow's scoring server puts the request it failed on above the model's message: the last line is ours.
    last = body["message"].strip().splitlines()[-1]
    assert last.startswith("Error: ") and says in last
