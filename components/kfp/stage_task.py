"""What runs inside a stage's Kubeflow task: the same `run_stage` as `stgt <stage>` and dvc.yaml.

The task gets its params as values (one pipeline parameter per key), writes them as a params file, resolves each
input and output to a local path (an artifact's path, or the registry path inside the run's workspace), runs the
stage and publishes what it wrote: artifacts with size metadata, workspace pointers, HTML views, the summary.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Mapping

import yaml
from kfp.dsl import HTML, Artifact, Metrics

from components import registry
from components.kfp import artifacts
from components.kfp.params import nested
from components.runner import run_stage

PARAMS_DIR = ".params"  # inside the workspace: the params file each task ran with


def producer_output_key(path: str) -> str:
    """The output key under which some stage produces `path` (inputs are named by their consumer)."""
    for stage in registry.STAGES:
        for key, out in stage.outputs.items():
            if out == path:
                return key
    raise KeyError(path)


def input_path(stage: registry.Stage, key: str, artifact: Artifact, workspace: Path) -> Path:
    path = stage.inputs[key]
    return workspace / path if artifacts.in_workspace(producer_output_key(path)) else Path(artifact.path)


def output_path(stage: registry.Stage, key: str, artifact: Artifact, workspace: Path) -> Path:
    return workspace / stage.outputs[key] if artifacts.in_workspace(key) else Path(artifact.path)


def item_metrics(stage: registry.Stage, item: str) -> str:
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
        if artifacts.in_workspace(key):
            artifacts.publish_pointer(artifact, paths[key])
        else:
            artifacts.describe(artifact, paths[key])
    for key, view in views.items():
        artifacts.publish_view(view, paths[key], artifacts.HTML_VIEWS[key])


def run_stage_task(
    stage: str,
    workspace: str,
    params: Mapping[str, Any],
    inputs: Mapping[str, Artifact],
    outputs: Mapping[str, Artifact],
    views: Mapping[str, HTML],
    summary: Metrics,
    item: str = "",
) -> dict[str, Any]:
    """`item`: a foreach stage's item (its params already narrow the stage to it); it gets its own metrics file,
    reports/<stage>/<item>.json as under dvc, since the items run side by side."""
    spec = registry.get(stage)
    ws = Path(workspace)
    in_paths = {k: input_path(spec, k, a, ws) for k, a in inputs.items()}
    out_paths = {k: output_path(spec, k, a, ws) for k, a in outputs.items()}
    result = run_stage(stage, params_path=write_params_file(stage, params, ws), inputs=in_paths,
                       outputs=out_paths, metrics_path=ws / item_metrics(spec, item))
    publish(outputs, out_paths, views)
    artifacts.log_summary(summary, result)
    return result
