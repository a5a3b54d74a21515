"""`stgt index` as a Kubeflow pipeline: embed every video under a bucket prefix with the registered retrieval model.

One task, `index-videos`, on the project's CPU image, runs

    stgt index SOURCE --out <workspace>/index --model MODEL_URI [--split SPLIT]

(as `python -m stgt_pipeline.cli`, the console script's module) and publishes the finished index folder
(index.json, videos.parquet, thumbs/, quarantine.json) as its output artifact `index`, with the video count and the
model version in the artifact's metadata; it is also the pipeline's output. `--out` is on the run's workspace volume, not the artifact's local path,
so that a retried pod resumes the index where the failed one stopped (`stgt index` keeps an `index.partial` beside
its output); only the finished folder is copied into the artifact.

The task reads the bucket with the S3 keys and endpoint of the `s3_secret` Secret (AWS_*), and resolves the model
through MLflow with those of `mlflow_secret` (MLFLOW_TRACKING_*), as the stgt pipeline's tasks do. It is never served
from cache: the same arguments can mean another model version (an alias moves) or other videos (the bucket changes).

    python -m stgt_pipeline.pipelines.index_pipeline          # rewrite pipelines/index_pipeline.yaml
    # then upload the file in the KFP UI, or:
    kfp.Client(host=...).create_run_from_pipeline_package("pipelines/index_pipeline.yaml",
                                                          {"source": "s3://videos/2026/"})
"""
# No `from __future__ import annotations`: kfp reads the component's annotations as types.
import sys
from pathlib import Path

from kfp import compiler, dsl, kubernetes
from kfp.dsl import Artifact, Output
from kfp.dsl.python_component import PythonComponent

from stgt_pipeline.kfp.build import images
from stgt_pipeline.kfp.build.task_config import MLFLOW_SECRET_KEYS, S3_SECRET_KEYS
from stgt_pipeline.pipelines.stgt_pipeline import CLUSTER_PARAMETERS
from stgt_pipeline.search.models import DEFAULT_RETRIEVAL

PIPELINE_NAME = "stgt-index"
COMPILED = Path(__file__).with_name("index_pipeline.yaml")
WORKSPACE_SIZE = "20Gi"  # the index and its resumable partial; videos are read one at a time
CPU_REQUEST, CPU_LIMIT = "2", "4"
MEMORY = "8Gi"  # request and limit: the model, one decoded clip and the growing index
RETRIES, BACKOFF = 2, "60s"


def index_videos(source: str, model_uri: str, split: str, workspace: str, index: Output[Artifact]):
    """Run `stgt index SOURCE --out <workspace>/index --model MODEL_URI` and publish the finished index."""
    import json
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    out = Path(workspace) / "index"
    command = [sys.executable, "-m", "stgt_pipeline.cli", "index", source, "--out", str(out), "--model", model_uri]
    if split:
        command += ["--split", split]
    print("+ stgt " + " ".join(command[3:]), flush=True)
    code = subprocess.run(command, check=False).returncode
    if code != 0:
        raise RuntimeError(f"stgt index exited with status {code}: its last lines above say why")
    shutil.copytree(out, index.path, dirs_exist_ok=True)
    info = json.loads((out / "index.json").read_text(encoding="utf-8"))
    index.metadata.update({"count": info["count"], "model": f"models:/{info['model']['name']}/"
                           f"{info['model']['version']}", "source": source})


def index_component() -> PythonComponent:
    """The component on the project's CPU image, as of now (STGT_IMAGE_CPU is read when the pipeline is built)."""
    return dsl.component(index_videos, base_image=images.cpu_image(), install_kfp_package=False)


def build_pipeline(workspace_size: str = WORKSPACE_SIZE) -> dsl.graph_component.GraphComponent:
    component = index_component()

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="stgt index: embed the videos under a bucket prefix (or a prepared dataset) with the registered "
                    "retrieval model into a searchable index (pipelines/index_pipeline.py)",
        pipeline_config=dsl.PipelineConfig(workspace=dsl.WorkspaceConfig(size=workspace_size)))
    def stgt_index(source: str, model_uri: str = DEFAULT_RETRIEVAL, split: str = "",
                   mlflow_secret: str = CLUSTER_PARAMETERS["mlflow_secret"][1],
                   s3_secret: str = CLUSTER_PARAMETERS["s3_secret"][1]) -> Artifact:
        task = component(source=source, model_uri=model_uri, split=split,
                            workspace=dsl.WORKSPACE_PATH_PLACEHOLDER)
        task.set_cpu_request(CPU_REQUEST).set_cpu_limit(CPU_LIMIT)
        task.set_memory_request(MEMORY).set_memory_limit(MEMORY)
        task.set_retry(num_retries=RETRIES, backoff_duration=BACKOFF, backoff_factor=2)
        task.set_caching_options(enable_caching=False)
        kubernetes.use_secret_as_env(task, mlflow_secret, {k: k for k in MLFLOW_SECRET_KEYS})
        kubernetes.use_secret_as_env(task, s3_secret, {k: k for k in S3_SECRET_KEYS})
        return task.outputs["index"]

    return stgt_index


def compile_pipeline(output: str | Path = COMPILED) -> Path:
    compiler.Compiler().compile(build_pipeline(), str(output))
    return Path(output)


if __name__ == "__main__":
    print(f"wrote {compile_pipeline(sys.argv[1] if len(sys.argv) > 1 else COMPILED)}")
