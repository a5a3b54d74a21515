"""The search tests' world: a real `mlflow server` on loopback, the tiny corpus trained and evaluated by the real
stages, both models registered by the real `register` stage, and `stgt index` run over the test split.

Built once per session (about a minute on 2 cores). `search_index` holds the paths and names; the `search_env`
fixture points MLFLOW_TRACKING_URI at the server for one test (and `search_index.env` is the same for a
subprocess). Test modules elsewhere import these fixtures (tests/search/conftest.py does too); pytest would build a
session fixture once per importing module, so the world is cached here, as tests/stages/tiny_corpus.py does.
"""
from __future__ import annotations

import json
import os
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import pytest

from tests.stages.tiny_corpus import corpus, tiny_params, trained  # noqa: F401 - session fixtures
from tests.tracking.conftest import CLEARED_ENV, start_server, stop_server, wait_healthy


@dataclass
class SearchWorld:
    root: Path
    mlflow_uri: str
    prefix: str  # register.model_prefix: models are <prefix>-retrieval and <prefix>-qa
    dataset: Path
    features: Path
    report: Path  # the evaluate stage's folder (metrics.json)
    index_dir: Path
    model_uri: str  # the retrieval champion
    qa_model_uri: str
    qa_checkpoint: Path
    test_caption: str = ""  # a test caption whose clip `stgt search` ranks first
    expected_video_id: str = ""
    env: dict[str, str] = field(default_factory=dict)

    @property
    def metrics(self) -> dict[str, Any]:
        return json.loads((self.report / "metrics.json").read_text(encoding="utf-8"))

    def test_rows(self) -> pd.DataFrame:
        from stgt_pipeline.io.manifest import read_manifest

        table = read_manifest(self.dataset).table
        return table[table["split"] == "test"].reset_index(drop=True)


_CACHE: dict[str, Any] = {}


@pytest.fixture(scope="session")
def search_server() -> Iterator[str]:
    if "server" in _CACHE:
        yield _CACHE["server"]
        return
    server = start_server(Path(tempfile.mkdtemp(prefix="stgt-search-mlflow-")))
    try:
        _CACHE["server"] = wait_healthy(server)
        yield _CACHE["server"]
    finally:
        stop_server(server)
        _CACHE.clear()


@pytest.fixture(scope="session")
def search_index(search_server: str, trained: dict[str, Path],  # noqa: F811
                 tmp_path_factory: pytest.TempPathFactory) -> SearchWorld:
    from stgt_pipeline.components.evaluate import stage as evaluate
    from stgt_pipeline.runner import run_stage
    from stgt_pipeline.search.index import Searcher, VideoIndex, build_index

    if "world" in _CACHE:
        return _CACHE["world"]
    root = tmp_path_factory.mktemp("search")
    prefix = f"s{uuid.uuid4().hex[:8]}"
    world = SearchWorld(root=root, mlflow_uri=search_server, prefix=prefix, dataset=trained["dataset"],
                        features=trained["features"], report=root / "evaluate", index_dir=root / "index",
                        model_uri=f"models:/{prefix}-retrieval@champion", qa_model_uri=f"models:/{prefix}-qa@champion",
                        qa_checkpoint=trained["qa"],
                        env={"MLFLOW_TRACKING_URI": search_server, "STGT_TRACKING": "on"})
    with pytest.MonkeyPatch.context() as mp:
        for name in CLEARED_ENV:
            mp.delenv(name, raising=False)
        for name, value in world.env.items():
            mp.setenv(name, value)
        mp.setenv("MLFLOW_EXPERIMENT_NAME", f"search-{prefix}")
        mp.chdir(root)
        params = tiny_params(root, register={"model_prefix": prefix})
        evaluate.run(params, trained, {"report": world.report})
        run_stage("register", params_path="params.yaml",
                  inputs={"retrieval": trained["retrieval"], "qa": trained["qa"], "report": world.report,
                          "features": trained["features"], "dataset": trained["dataset"]})
        build_index(str(trained["dataset"]), world.index_dir, world.model_uri, split="test", progress=False)
        searcher = Searcher(VideoIndex.open(world.index_dir), world.model_uri)
        for row in world.test_rows().itertuples():
            for caption in row.captions:
                if searcher.search(str(caption), top=1)[0].video_id == row.video_id:
                    world.test_caption, world.expected_video_id = str(caption), row.video_id
                    break
            if world.test_caption:
                break
        import mlflow

        mlflow.set_tracking_uri(None)
    _CACHE["world"] = world
    return world


@pytest.fixture
def search_env(search_index: SearchWorld, monkeypatch: pytest.MonkeyPatch) -> SearchWorld:
    """Tracking and registry at the search world's server for this test."""
    for name in CLEARED_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in search_index.env.items():
        monkeypatch.setenv(name, value)
    yield search_index
    import mlflow

    mlflow.set_tracking_uri(None)


def subprocess_env(world: SearchWorld) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k not in CLEARED_ENV}, **world.env}
