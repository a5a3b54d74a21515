"""How each stage output travels between Kubeflow tasks.

Small outputs are typed artifacts: they go through the object store, so they outlive the run, show in the UI,
carry lineage and keep KFP's cache sound. Bulk outputs (frames, features) live on the run's workspace volume at
their registry path, as they do under DVC; the task publishes only a small `Dataset` pointer listing the files,
so consumers still get a typed data edge. An output key not listed here is bulk: a new stage works unchanged,
and listing its key here makes it an artifact.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Mapping

from kfp.dsl import HTML, Artifact, Dataset, Metrics

ARTIFACT_OUTPUTS: dict[str, type[Artifact]] = {
    "dataset": Dataset,  # the manifest dataset of `prepare`
    "report": Artifact,  # a report folder (result.json, config); its HTML page is published as a view
}
# Pages the KFP UI renders: output key -> file inside the output folder, published as `<key>_html`.
HTML_VIEWS: dict[str, str] = {"report": "report.html"}


def in_workspace(output_key: str) -> bool:
    return output_key not in ARTIFACT_OUTPUTS


def artifact_type(output_key: str) -> type[Artifact]:
    return ARTIFACT_OUTPUTS.get(output_key, Dataset)


def view_name(output_key: str) -> str:
    return f"{output_key}_html"


def _files(root: Path) -> list[dict[str, Any]]:
    if root.is_file():
        return [{"path": root.name, "bytes": root.stat().st_size}]
    return [{"path": p.relative_to(root).as_posix(), "bytes": p.stat().st_size}
            for p in sorted(root.rglob("*")) if p.is_file()]


def describe(artifact: Artifact, path: Path) -> None:
    """Size metadata on an artifact whose content is `path`."""
    files = _files(path)
    artifact.metadata.update({"files": len(files), "bytes": sum(f["bytes"] for f in files)})


def publish_pointer(artifact: Artifact, workspace_path: Path) -> None:
    """A workspace output's pointer: the file listing as the artifact, the location in its metadata."""
    files = _files(workspace_path)
    Path(artifact.path).parent.mkdir(parents=True, exist_ok=True)
    Path(artifact.path).write_text(json.dumps({"workspace_path": str(workspace_path), "files": files}, indent=1))
    artifact.metadata.update({"workspace_path": str(workspace_path), "files": len(files),
                              "bytes": sum(f["bytes"] for f in files)})


def publish_view(view: HTML, output_dir: Path, page: str) -> None:
    source = output_dir / page
    Path(view.path).parent.mkdir(parents=True, exist_ok=True)
    if source.is_file():
        shutil.copyfile(source, view.path)
    else:  # a stage that wrote no page still gets a readable view rather than a failed upload
        Path(view.path).write_text(f"<p>{page} was not written by this run.</p>")


def numeric_leaves(summary: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Flatten a stage summary to the numbers a Metrics artifact can hold ({"splits": {"train": 3}} -> splits.train)."""
    out: dict[str, float] = {}
    for key, value in summary.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(numeric_leaves(value, f"{name}."))
        elif isinstance(value, (bool, int, float)):
            out[name] = float(value)
    return out


def log_summary(metrics: Metrics, summary: Mapping[str, Any]) -> None:
    for name, value in numeric_leaves(summary).items():
        metrics.log_metric(name, value)
