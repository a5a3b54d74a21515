"""The MLflow parent run of a Kubeflow run, when KFP's MLflow plugin is not enabled (components.tracking rule 2).

The pipeline's first task opens it (`open_pipeline_run`), tagged with the Kubeflow run id; every task that runs a
stage finds it by that tag and nests its stage run under it (`join_pipeline_run`); the exit task closes it
FINISHED, FAILED or KILLED from the pipeline's final status (`close_pipeline_run`). Stage tasks learn the run id
from the environment (KFP_RUN_ID, from the pod label KFP puts on every pod of a run) rather than as an input:
an input that differs per run would change the cache key of every cacheable task. kfp.local has no pod labels,
so components.kfp.local_run sets KFP_RUN_ID for its tasks. With the plugin (MLFLOW_RUN_ID set) or with
STGT_TRACKING=off all of this does nothing.
"""
# No `from __future__ import annotations`: kfp reads finish_run's annotations as types.
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from components import tracking

if TYPE_CHECKING:  # build-time only: kfp's component modules do not import inside a running task
    from kfp.dsl.python_component import PythonComponent

    from components.kfp.params import PipelineParam

RUN_ID_ENV = "KFP_RUN_ID"
RUN_ID_LABEL = "pipeline/runid"  # set by the KFP API server on every pod of a run
PARENT_ENV = "STGT_PARENT_RUN_ID"
log = logging.getLogger("stgt")


def kfp_run_id(given: str = "") -> str:
    """This run's id: the environment's (the pod label; local_run's) over the task's placeholder input."""
    return os.environ.get(RUN_ID_ENV) or given


def open_pipeline_run(run_id: str, run_name: str, params: Mapping[str, Any]) -> str:
    """The first task: the parent run, named after the Kubeflow run; `params` are every tunable by dotted key."""
    import yaml

    from components.config import load_params
    from components.kfp.params import nested

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "params.yaml"
        path.write_text(yaml.safe_dump(nested(params), sort_keys=False), encoding="utf-8")
        resolved = load_params(path)
    return tracking.open_parent_run(f"kfp {run_name}", kfp_run_id(run_id), resolved)


def join_pipeline_run() -> str:
    """In a stage task, before the stage runs: nest its stage run under the pipeline's parent. Returns the
    parent's id ("" when there is none: the plugin's run, tracking off, or a run started without the opener)."""
    if os.environ.get(PARENT_ENV):
        return os.environ[PARENT_ENV]
    parent = tracking.find_parent_run(kfp_run_id())
    if parent:
        os.environ[PARENT_ENV] = parent
    elif tracking.enabled() and not os.environ.get("MLFLOW_RUN_ID"):
        log.warning("no MLflow parent run for Kubeflow run %r: this stage's run gets a parent of its own",
                    kfp_run_id())
    return parent


def close_pipeline_run(run_id: str, status: Any) -> str:
    """The exit task: close the parent as the pipeline ended; returns the MLflow status set ("" if none)."""
    parent = tracking.find_parent_run(kfp_run_id(run_id))
    if not parent:
        return ""
    result = tracking.finish_parent_run(parent, status)
    log.info("MLflow parent run %s closed %s (pipeline %s)", parent, result, getattr(status, "state", status))
    return result


# --------------------------------------------------------------------------------------------------------------
# the two tasks (built at compile time)


def open_run_component(params: Sequence["PipelineParam"]) -> "PythonComponent":
    """Takes every tunable, for the parent's params and params_hash; returns the parent run's id."""
    from components.kfp import codegen, images
    from components.kfp.stage_components import params_argument, param_signature

    name = "open_mlflow_run"
    source = codegen.function_source(
        name, ["kfp_run_id: str", "kfp_run_name: str", *param_signature(params)],
        "Open the MLflow parent run of this pipeline run; returns its id ('' when tracking is off).",
        "from components.kfp.parent_run import open_pipeline_run",
        "    return " + codegen.call("open_pipeline_run", {
            "run_id": "kfp_run_id", "run_name": "kfp_run_name", "params": params_argument(params)}).lstrip(),
        returns="str")
    return codegen.lightweight_component(name, source, images.cpu_image())


def finish_run_component() -> "PythonComponent":
    from kfp import dsl

    from components.kfp import images

    @dsl.component(base_image=images.cpu_image(), install_kfp_package=False)
    def finish_run(status: dsl.PipelineTaskFinalStatus, kfp_run_id: str):
        """Mark the MLflow parent run FINISHED, FAILED or KILLED from the pipeline's final status."""
        from components.kfp.parent_run import close_pipeline_run

        close_pipeline_run(kfp_run_id, status)

    return finish_run
