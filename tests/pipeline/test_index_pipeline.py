"""The `stgt index` Kubeflow pipeline (pipelines/index_pipeline.py): its compiled spec, and a run through kfp.local."""
from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml

from stgt_pipeline.kfp.build import images
from stgt_pipeline.kfp.build.task_config import MLFLOW_SECRET_KEYS, S3_SECRET_KEYS
from stgt_pipeline.pipelines import index_pipeline
from stgt_pipeline.pipelines.index_pipeline import COMPILED, compile_pipeline
from stgt_pipeline.pipelines.stgt_pipeline import CLUSTER_PARAMETERS
from stgt_pipeline.search.models import DEFAULT_RETRIEVAL
# The search tests' world (a tiny corpus trained, both models registered on a loopback MLflow server, the test
# split indexed): imported, as tests/search/world.py imports the corpus fixtures it builds on.
from tests.search.world import SearchWorld, search_index, search_server  # noqa: F401
from tests.stages.tiny_corpus import corpus, trained  # noqa: F401
from tests.tracking.conftest import CLEARED_ENV

TASK = "index-videos"


def load(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pipeline spec, kubernetes platform spec of the executors) of a compiled pipeline file."""
    docs = list(yaml.safe_load_all(path.read_text()))
    return docs[0], docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def executor(spec: dict[str, Any]) -> dict[str, Any]:
    label = spec["components"][spec["root"]["dag"]["tasks"][TASK]["componentRef"]["name"]]["executorLabel"]
    return spec["deploymentSpec"]["executors"][label]["container"]


def test_compiled_index_pipeline_is_current(tmp_path):
    fresh = compile_pipeline(tmp_path / "fresh.yaml").read_text()
    assert COMPILED.read_text() == fresh, \
        "pipelines/index_pipeline.yaml is stale: run `python -m stgt_pipeline.pipelines.index_pipeline`"


def test_index_task_runs_stgt_index_on_the_project_image_with_a_fixed_tag():
    spec, _ = load(COMPILED)
    container = executor(spec)
    assert container["image"] == images.cpu_image()
    repository, tag = container["image"].rsplit(":", 1)
    assert repository == f"{images.REPOSITORY}/stgt-cpu" and re.fullmatch(r"\d+\.\d+\.\d+\S*", tag)  # no latest
    program = " ".join(container["command"])
    # `stgt index SOURCE --out <workspace>/index --model URI [--split S]`, the `stgt` console script's module.
    assert '[sys.executable, "-m", "stgt_pipeline.cli", "index", source, "--out", str(out), "--model", ' \
           'model_uri]' in program
    assert 'out = Path(workspace) / "index"' in program and '["--split", split]' in program
    assert "pip install" not in program  # everything is in the image
    assert container["args"][-2:] == ["--function_to_execute", "index_videos"]


def test_index_pipeline_parameters_and_the_workspace_the_task_writes():
    spec, _ = load(COMPILED)
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert "defaultValue" not in inputs["source"]  # required: the bucket prefix (or folder) to index
    assert inputs["model_uri"]["defaultValue"] == DEFAULT_RETRIEVAL
    assert inputs["split"]["defaultValue"] == ""
    for name in ("mlflow_secret", "s3_secret"):
        assert inputs[name]["defaultValue"] == CLUSTER_PARAMETERS[name][1]  # the Secrets the main pipeline uses
    task = spec["root"]["dag"]["tasks"][TASK]
    assert task["inputs"]["parameters"]["workspace"] == {"runtimeValue": {"constant": "{{$.workspace_path}}"}}
    output = spec["root"]["dag"]["outputs"]["artifacts"]["Output"]["artifactSelectors"][0]
    assert output == {"outputArtifactKey": "index", "producerSubtask": TASK}  # the index is the pipeline's output


def test_index_task_resources_retries_no_cache_and_secrets_as_env():
    spec, platform = load(COMPILED)
    resources = executor(spec)["resources"]
    assert (resources["resourceCpuRequest"], resources["resourceCpuLimit"]) == (index_pipeline.CPU_REQUEST,
                                                                              index_pipeline.CPU_LIMIT)
    assert resources["resourceMemoryRequest"] == resources["resourceMemoryLimit"] == index_pipeline.MEMORY
    task = spec["root"]["dag"]["tasks"][TASK]
    assert task["retryPolicy"]["maxRetryCount"] == index_pipeline.RETRIES >= 1
    assert task["retryPolicy"]["backoffDuration"] == index_pipeline.BACKOFF
    assert task["cachingOptions"] == {}  # enable_caching=False: an alias moves, a bucket changes
    label = spec["components"][task["componentRef"]["name"]]["executorLabel"]
    secrets = {s["secretNameParameter"]["componentInputParameter"]: {k["envVar"]: k["secretKey"] for k in s["keyToEnv"]}
               for s in platform[label]["secretAsEnv"]}
    assert secrets == {"mlflow_secret": {k: k for k in MLFLOW_SECRET_KEYS}, "s3_secret": {k: k for k in S3_SECRET_KEYS}}
    assert "env" not in executor(spec)  # nothing else, and no secret value in the spec
    workspace = yaml.safe_load_all(COMPILED.read_text())
    assert list(workspace)[1]["platforms"]["kubernetes"]["pipelineConfig"]["workspace"]["size"] == \
        index_pipeline.WORKSPACE_SIZE


def test_image_follows_stgt_image_cpu_at_compile_time(tmp_path, monkeypatch):
    monkeypatch.setenv("STGT_IMAGE_CPU", "registry.example/stgt-cpu@sha256:" + "0" * 64)
    spec, _ = load(compile_pipeline(tmp_path / "other.yaml"))
    assert executor(spec)["image"] == "registry.example/stgt-cpu@sha256:" + "0" * 64


@contextlib.contextmanager
def local_runner(root: Path):
    """kfp.local with the SubprocessRunner in this environment, as `stgt pipeline run-local` sets it up."""
    from kfp import local

    from stgt_pipeline.pipelines.local_run import scratch_tmpdir

    with scratch_tmpdir(root / ".tmp"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*no effect in the current local runner.*")
        warnings.filterwarnings("ignore", message=".*custom or non-Python base image.*")
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root),
                   workspace_root=tempfile.mkdtemp(prefix=".workspace-", dir=root), raise_on_error=True)
        yield


@pytest.mark.slow  # the search world (about a minute on 2 cores, shared with tests/search), then one task
@pytest.mark.timeout(900)
def test_index_pipeline_runs_through_kfp_local_and_publishes_a_searchable_index(search_index: SearchWorld,  # noqa: F811
                                                                                tmp_path, monkeypatch):
    from stgt_pipeline.search.index import Searcher, VideoIndex

    world = search_index
    for name in CLEARED_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in world.env.items():  # the tasks are child processes: they resolve the model through it
        monkeypatch.setenv(name, value)
    root = tmp_path / "out"
    with local_runner(root):
        run = index_pipeline.build_pipeline()(source=str(world.dataset), model_uri=world.model_uri, split="test")
    artifact = run.output
    published = Path(artifact.path)
    info = json.loads((published / "index.json").read_text())
    expected = VideoIndex.open(world.index_dir)  # what `stgt index` built in-process for the search tests
    assert info["model"]["name"] == f"{world.prefix}-retrieval" and info["model"]["version"] == \
        expected.info["model"]["version"]
    assert info["count"] == len(expected.videos) > 0
    index = VideoIndex.open(published)
    assert sorted(index.videos["video_id"]) == sorted(expected.videos["video_id"])
    assert artifact.metadata["count"] == info["count"]
    assert artifact.metadata["model"] == f"models:/{world.prefix}-retrieval/{info['model']['version']}"
    assert world.test_caption, "the search world found no caption whose clip ranks first"
    hits = Searcher(index, world.model_uri).search(world.test_caption, top=1)
    assert hits[0].video_id == world.expected_video_id
    assert not list(root.glob("*/*/index.partial"))  # the partial is on the workspace, gone with the run
    assert os.environ["MLFLOW_TRACKING_URI"] == world.mlflow_uri
