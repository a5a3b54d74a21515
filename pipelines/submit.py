"""Submit the pipeline to a Kubeflow Pipelines endpoint (kfp.Client), built fresh from the stage table and params.yaml.

The token comes from the environment (KF_PIPELINES_TOKEN), never from a flag that would land in shell history.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Sequence
from urllib.parse import urlparse

from stgt_pipeline.errors import StgtError
from stgt_pipeline.kfp.build.params import run_arguments
from stgt_pipeline.params import load_params

TOKEN_ENV = "KF_PIPELINES_TOKEN"
CONNECT_TIMEOUT_S = 5.0


def check_reachable(host: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Fail in seconds with the URL in the message: kfp.Client would retry a dead host for minutes."""
    url = urlparse(host)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise StgtError(f"--host {host!r}: expected an http(s) URL, e.g. http://localhost:8080")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout_s).close()
    except OSError as exc:
        raise StgtError(f"cannot reach Kubeflow Pipelines at {host}: {exc.strerror or exc}") from None


def submit(host: str, namespace: str | None = None, experiment: str = "stgt", params_path: str | Path = "params.yaml",
           overrides: Sequence[str] = (), run_name: str | None = None, wait: bool = False,
           timeout_s: int = 24 * 3600, enable_caching: bool | None = None) -> str:
    """Create a run; returns its id (and waits for it when `wait`, failing unless it succeeded). `enable_caching`
    False runs every task afresh (kfp overrides each task's caching option); None keeps the compiled ones."""
    check_reachable(host)  # before the slow imports, so a wrong URL fails at once
    import kfp
    from kfp_server_api.exceptions import ApiException

    from stgt_pipeline.pipelines.stgt_pipeline import build_pipeline

    load_params(params_path, list(overrides))
    pipeline = build_pipeline(params_path)
    arguments = run_arguments(overrides, pipeline.component_spec.inputs, params_path)
    try:
        client = kfp.Client(host=host, namespace=namespace, existing_token=os.environ.get(TOKEN_ENV))
        run = client.create_run_from_pipeline_func(pipeline, arguments=arguments, run_name=run_name,
                                                   experiment_name=experiment, namespace=namespace,
                                                   enable_caching=enable_caching)
        if not wait:
            return run.run_id
        state = client.wait_for_run_completion(run.run_id, timeout=timeout_s).state
    except ApiException as exc:
        raise StgtError(f"Kubeflow Pipelines at {host} answered {exc.status} {exc.reason}") from None
    if state != "SUCCEEDED":
        raise StgtError(f"run {run.run_id} ended {state}: see {host}/#/runs/details/{run.run_id}")
    return run.run_id
