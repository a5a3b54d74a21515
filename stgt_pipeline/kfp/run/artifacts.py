"""Publishing what a task wrote: size metadata on artifacts, pointers to workspace outputs, HTML views, metrics.
How each output travels is kfp.conventions'."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Mapping

from kfp.dsl import HTML, Artifact, Metrics


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
