"""The MLflow parent run of a Kubeflow run, when KFP's MLflow plugin is not enabled (stgt_pipeline.tracking.runs
rule 2).

The pipeline's first task opens it (`open_pipeline_run`), tagged with the Kubeflow run id; every task that runs a
stage finds it by that tag and nests its stage run under it (`join_pipeline_run`); the exit task closes it
FINISHED, FAILED or KILLED from the pipeline's final status (`close_pipeline_run`). Stage tasks learn the run id
from the environment (KFP_RUN_ID, from the pod label KFP puts on every pod of a run) rather than as an input:
an input that differs per run would change the cache key of every cacheable task. kfp.local has no pod labels,
so stgt_pipeline.pipelines.local_run sets KFP_RUN_ID for its tasks. With the plugin (MLFLOW_RUN_ID set) or with
STGT_TRACKING=off all of this does nothing.
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

from stgt_pipeline.kfp.conventions import PARENT_ENV, RUN_ID_ENV, nested
from stgt_pipeline.tracking import runs

log = logging.getLogger("stgt")


def kfp_run_id(given: str = "") -> str:
    """This run's id: the environment's (the pod label; local_run's) over the task's placeholder input."""
    return os.environ.get(RUN_ID_ENV) or given


def open_pipeline_run(run_id: str, run_name: str, params: Mapping[str, Any]) -> str:
    """The first task: the parent run, named after the Kubeflow run; `params` are every tunable by dotted key."""
    import yaml

    from stgt_pipeline.params import load_params

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "params.yaml"
        path.write_text(yaml.safe_dump(nested(params), sort_keys=False), encoding="utf-8")
        resolved = load_params(path)
    return runs.open_parent_run(f"kfp {run_name}", kfp_run_id(run_id), resolved)


def join_pipeline_run() -> str:
    """In a stage task, before the stage runs: nest its stage run under the pipeline's parent. Returns the
    parent's id ("" when there is none: the plugin's run, tracking off, or a run started without the opener)."""
    if os.environ.get(PARENT_ENV):
        return os.environ[PARENT_ENV]
    parent = runs.find_parent_run(kfp_run_id())
    if parent:
        os.environ[PARENT_ENV] = parent
    elif runs.enabled() and not os.environ.get("MLFLOW_RUN_ID"):
        log.warning("no MLflow parent run for Kubeflow run %r: this stage's run gets a parent of its own",
                    kfp_run_id())
    return parent


def close_pipeline_run(run_id: str, status: Any) -> str:
    """The exit task: close the parent as the pipeline ended; returns the MLflow status set ("" if none)."""
    parent = runs.find_parent_run(kfp_run_id(run_id))
    if not parent:
        return ""
    result = runs.finish_parent_run(parent, status)
    log.info("MLflow parent run %s closed %s (pipeline %s)", parent, result, getattr(status, "state", status))
    return result
