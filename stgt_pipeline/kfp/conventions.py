"""What the compile side (kfp.build) and the pod side (kfp.run) of the Kubeflow code agree on, so that neither
imports the other: how params keys become parameter names, how each stage output travels, where shards and params
files lie in the run's workspace, and the environment that carries the run's identity.

How outputs travel: small outputs are typed artifacts, which go through the object store, so they outlive the run,
show in the UI, carry lineage and keep KFP's cache sound. Bulk outputs (frames, features) live on the run's
workspace volume at their stage-table path, as they do under DVC; the task publishes only a small `Dataset` pointer
listing the files, so consumers still get a typed data edge. An output key not listed in ARTIFACT_OUTPUTS is bulk:
a new stage works unchanged, and listing its key there makes it an artifact.
"""
from __future__ import annotations

from typing import Any, Mapping

from kfp.dsl import Artifact, Dataset

# params.yaml key <-> pipeline parameter: KFP names must be identifiers (prepare.folder.root: prepare__folder__root).
SEPARATOR = "__"

ARTIFACT_OUTPUTS: dict[str, type[Artifact]] = {
    "dataset": Dataset,  # the manifest dataset of `prepare`
    "report": Artifact,  # a report folder (result.json, config); its HTML page is published as a view
}
# Pages the KFP UI renders: output key -> file inside the output folder, published as `<key>_html`.
HTML_VIEWS: dict[str, str] = {"report": "report.html"}

# Inside the run's workspace.
PARAMS_DIR = ".params"  # the params file each task ran with
SHARDS_DIR = ".shards"  # a sharded stage's per-shard outputs, .shards/<stage>/<index>/
SHARD_SUMMARY = "summary.json"

# The run's identity in a task's environment (the MLflow parent run; kfp.run.parent_run).
RUN_ID_ENV = "KFP_RUN_ID"
RUN_ID_LABEL = "pipeline/runid"  # set by the KFP API server on every pod of a run
PARENT_ENV = "STGT_PARENT_RUN_ID"


def name_of(key: str) -> str:
    return key.replace(".", SEPARATOR)


def key_of(name: str) -> str:
    return name.replace(SEPARATOR, ".")


def nested(values: Mapping[str, Any]) -> dict[str, Any]:
    """{"prepare.folder.root": x} -> {"prepare": {"folder": {"root": x}}}: the shape of params.yaml."""
    tree: dict[str, Any] = {}
    for key, value in values.items():
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def in_workspace(output_key: str) -> bool:
    return output_key not in ARTIFACT_OUTPUTS


def artifact_type(output_key: str) -> type[Artifact]:
    return ARTIFACT_OUTPUTS.get(output_key, Dataset)


def view_name(output_key: str) -> str:
    return f"{output_key}_html"
