"""Run the whole pipeline on this machine through kfp.local, in this Python environment (no Docker, no cluster).

kfp.local's SubprocessRunner runs lightweight components only, which is why every stage component is one.
Artifacts land under `<output_dir>/<pipeline>-<timestamp>/<task>/`; the workspace (bulk outputs) is per run and
kfp.local deletes it at the end, as a cluster deletes the run's volume. Kubernetes settings are ignored locally,
the run-id pod label included: the run's tasks get KFP_RUN_ID from this process instead (the MLflow parent run).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Iterator, Sequence

from stgt_pipeline.errors import StgtError
from stgt_pipeline.kfp.build.params import run_arguments
from stgt_pipeline.kfp.conventions import RUN_ID_ENV
from stgt_pipeline.params import load_params
from stgt_pipeline.stages import STAGES, Stage

DEFAULT_OUTPUT_DIR = Path("local_outputs")  # kfp.local's own default, already ignored by git


@contextlib.contextmanager
def env_var(name: str, value: str) -> Iterator[None]:
    """`name` set for the tasks (kfp.local runs them as child processes of this one), then restored."""
    saved = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


@contextlib.contextmanager
def scratch_tmpdir(path: Path) -> Iterator[None]:
    """kfp.local leaves one temp folder per task behind: keep them under `path`, removed afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    saved = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(path)
    tempfile.tempdir = None  # forget the cached location
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved
        tempfile.tempdir = None
        shutil.rmtree(path, ignore_errors=True)


def run_local(params_path: str | Path = "params.yaml", overrides: Sequence[str] = (),
              output_dir: str | Path = DEFAULT_OUTPUT_DIR, shards: int = 2,
              stages: Sequence[Stage] = STAGES) -> Path:
    """Run the pipeline; returns the run's folder of artifacts. Raises StgtError when a task fails."""
    from kfp import local

    from stgt_pipeline.pipelines.stgt_pipeline import build_pipeline

    load_params(params_path, list(overrides))  # a bad override fails here, with its key, before any task runs
    pipeline = build_pipeline(params_path, stages)
    arguments = {**run_arguments(overrides, pipeline.component_spec.inputs, params_path), "fanout_shards": shards}
    root = Path(output_dir).resolve()
    started = time.time()
    with scratch_tmpdir(root / ".tmp"), env_var(RUN_ID_ENV, f"local-{uuid.uuid4().hex[:12]}"), \
            warnings.catch_warnings():
        # Expected locally: Kubernetes settings are ignored, and the tasks run here rather than in their image.
        warnings.filterwarnings("ignore", message=".*no effect in the current local runner.*")
        warnings.filterwarnings("ignore", message=".*custom or non-Python base image.*")
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root),
                   workspace_root=tempfile.mkdtemp(prefix=".workspace-", dir=root), raise_on_error=True)
        try:
            pipeline(**arguments)
        except RuntimeError as exc:
            raise StgtError(f"local pipeline run failed: {str(exc).splitlines()[0]}") from None
    runs = [p for p in root.glob(f"{pipeline.name}-*") if p.is_dir() and p.stat().st_mtime >= started - 1]
    return max(runs, key=lambda p: p.stat().st_mtime)
