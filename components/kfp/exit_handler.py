"""The pipeline's exit task: runs however the pipeline ended and closes the MLflow parent run accordingly.

MLflow tracking lives in components.tracking; until it offers finish_parent_run(status) this task only logs.
"""
from kfp import dsl
from kfp.dsl.python_component import PythonComponent

from components.kfp import images


def finish_run_component() -> PythonComponent:
    @dsl.component(base_image=images.cpu_image(), install_kfp_package=False)
    def finish_run(status: dsl.PipelineTaskFinalStatus):
        """Mark the MLflow parent run FINISHED or FAILED from the pipeline's final status."""
        import importlib
        import logging

        try:
            finish_parent_run = importlib.import_module("components.tracking").finish_parent_run
        except (ImportError, AttributeError):
            logging.getLogger("stgt").warning("pipeline %s; no components.tracking.finish_parent_run to close "
                                              "an MLflow run", status.state)
            return
        finish_parent_run(status)

    return finish_run
