"""What runs inside a stage's Kubeflow task: the same `run_stage` as `stgt <stage>` and dvc.yaml.

The task gets its params as values (one pipeline parameter per key), writes them as a params file, resolves each
input and output to a local path (an artifact's path, or the stage-table path inside the run's workspace), runs the
stage and publishes what it wrote: artifacts with size metadata, workspace pointers, HTML views, the summary.
Its stage run nests under the pipeline's MLflow parent (stgt_pipeline.kfp.run.parent_run). With more than one process
per pod (procs_per_node, or more GPUs than that in the pod) the stage runs as `torchrun --standalone -m
stgt_pipeline.cli <stage>`, one process per GPU, instead of in this process.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional

import yaml
from kfp.dsl import HTML, Artifact, Metrics

from stgt_pipeline import stages
from stgt_pipeline.errors import StgtError
from stgt_pipeline.kfp import conventions
from stgt_pipeline.kfp.conventions import PARAMS_DIR, nested
from stgt_pipeline.kfp.run import artifacts
from stgt_pipeline.kfp.run.parent_run import join_pipeline_run
from stgt_pipeline.runner import run_stage


def input_path(stage: stages.Stage, key: str, artifact: Artifact, workspace: Path) -> Path:
    path = stage.inputs[key]
    made = stages.producer_of(path)
    return workspace / path if made is None or conventions.in_workspace(made[1]) else Path(artifact.path)


def output_path(stage: stages.Stage, key: str, artifact: Artifact, workspace: Path) -> Path:
    return workspace / stage.outputs[key] if conventions.in_workspace(key) else Path(artifact.path)


def item_metrics(stage: stages.Stage, item: str) -> str:
    return f"reports/{stage.name}/{item}.json" if item else stage.metrics


def write_params_file(stage: str, values: Mapping[str, Any], workspace: Path) -> Path:
    folder = workspace / PARAMS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f"{stage}-", suffix=".yaml", dir=folder)
    with open(fd, "w", encoding="utf-8") as fh:
        yaml.safe_dump(nested(values), fh, sort_keys=False)
    return Path(name)


def publish(outputs: Mapping[str, Artifact], paths: Mapping[str, Path], views: Mapping[str, HTML]) -> None:
    for key, artifact in outputs.items():
        if conventions.in_workspace(key):
            artifacts.publish_pointer(artifact, paths[key])
        else:
            artifacts.describe(artifact, paths[key])
    for key, view in views.items():
        artifacts.publish_view(view, paths[key], conventions.HTML_VIEWS[key])


def cli_args(stage: stages.Stage, params_file: Path, paths: Mapping[str, Path], metrics: Path) -> list[str]:
    """`stgt <stage>` arguments (stgt_pipeline.cli) running the stage on `paths` (input and output keys)."""
    flags = [arg for key, path in paths.items() for arg in (f"--{key.replace('_', '-')}", str(path))]
    return [stage.name, "--params", str(params_file), *flags, "--metrics", str(metrics)]


def visible_gpus() -> int:
    if not os.environ.get("NVIDIA_VISIBLE_DEVICES") and not os.environ.get("CUDA_VISIBLE_DEVICES"):
        return 0  # no GPU given to this pod: skip importing torch (seconds) just to learn that
    import torch

    return torch.cuda.device_count()


def run_torchrun(stage: stages.Stage, nproc: int, params_file: Path, paths: Mapping[str, Path],
                 metrics: Path) -> dict[str, Any]:
    """The stage on `nproc` local processes (DDP: NCCL on GPUs, gloo on CPU); rank 0 tracks and writes outputs."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "stgt_pipeline.cli", *cli_args(stage, params_file, paths, metrics)]
    code = subprocess.run(command, check=False).returncode  # its output streams into the task's log
    if code != 0:
        raise StgtError(f"{stage.name}: torchrun with {nproc} processes exited with code {code} (see the log above)")
    return json.loads(metrics.read_text(encoding="utf-8"))


def run_stage_task(
    stage: str,
    workspace: str,
    params: Mapping[str, Any],
    inputs: Mapping[str, Artifact],
    outputs: Mapping[str, Artifact],
    views: Mapping[str, HTML],
    summary: Metrics,
    item: str = "",
    procs_per_node: Optional[int] = None,
) -> dict[str, Any]:
    """`item`: a foreach stage's item (its params already narrow the stage to it); it gets its own metrics file,
    reports/<stage>/<item>.json as under dvc, since the items run side by side. `procs_per_node`: training
    processes in this pod (all of its GPUs when it has more), for the stages that run distributed; None for the
    others, which always run in this process."""
    spec = stages.get(stage)
    ws = Path(workspace)
    in_paths = {k: input_path(spec, k, a, ws) for k, a in inputs.items()}
    out_paths = {k: output_path(spec, k, a, ws) for k, a in outputs.items()}
    params_file, metrics = write_params_file(stage, params, ws), ws / item_metrics(spec, item)
    join_pipeline_run()
    nproc = 1 if procs_per_node is None else max(procs_per_node, visible_gpus())
    if nproc > 1:
        result = run_torchrun(spec, nproc, params_file, {**in_paths, **out_paths}, metrics)
    else:
        result = run_stage(stage, params_path=params_file, inputs=in_paths, outputs=out_paths, metrics_path=metrics)
    publish(outputs, out_paths, views)
    artifacts.log_summary(summary, result)
    return result


def publish_stage_task(stage: str, workspace: str, result: Mapping[str, Any], outputs: Mapping[str, Artifact],
                       summary: Metrics) -> dict[str, Any]:
    """Publish what a stage wrote to the workspace from another task (a TrainJob, or the in-pod branch beside it):
    its workspace pointers and summary, for the stages downstream."""
    spec = stages.get(stage)
    publish(outputs, {k: output_path(spec, k, a, Path(workspace)) for k, a in outputs.items()}, {})
    artifacts.log_summary(summary, result)
    return dict(result)
