"""Run one registered stage: resolve config and paths, call the stage's `run`, write its metrics summary.

The `stgt <stage>` CLI, dvc.yaml (through the CLI) and the Kubeflow components all go through `run_stage`.
"""
from __future__ import annotations

import importlib
import json
import time
from pathlib import Path
from typing import Any, Mapping

from stgt_model.allocator import tune_glibc_malloc
from stgt_model.errors import ConfigurationError
from stgt_pipeline import stages
from stgt_pipeline.errors import StgtError
from stgt_pipeline.io.atomic import write_json
from stgt_pipeline.params import load_params
from stgt_pipeline.tracking import runs


def resolve_paths(defaults: Mapping[str, str], given: Mapping[str, str | Path] | None) -> dict[str, Path]:
    given = dict(given or {})
    unknown = set(given) - set(defaults)
    if unknown:
        raise StgtError(f"unknown path name(s) {sorted(unknown)}; expected {sorted(defaults)}")
    return {k: Path(given.get(k, v)) for k, v in defaults.items()}


def read_summary(path: Path) -> dict[str, Any] | None:
    """A stage's summary file as its last run left it, None when there is none (or it is not a summary)."""
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def run_stage(
    name: str,
    params_path: str | Path | None = None,
    overrides: list[str] | None = None,
    inputs: Mapping[str, str | Path] | None = None,
    outputs: Mapping[str, str | Path] | None = None,
    metrics_path: str | Path | None = None,
) -> dict[str, Any]:
    stage = stages.get(name)
    tune_glibc_malloc()  # large CPU tensors: reuse freed memory instead of page-faulting it in again
    params = load_params(params_path, overrides)
    ins = resolve_paths(stage.inputs, inputs)
    outs = resolve_paths(stage.outputs, outputs)
    for key, path in ins.items():
        if not path.exists():
            made = stages.producer_of(stage.inputs[key])
            hint = f": run `stgt {made[0].name}` first" if made else ""
            raise StgtError(f"{name}: input '{key}' not found at {path}{hint}")
    if stage.noop_check and runs.enabled():
        started = time.perf_counter()
        summary_file = Path(metrics_path or stage.metrics)
        previous = read_summary(summary_file)
        module, function = stage.noop_check.split(":")
        unchanged = getattr(importlib.import_module(module), function)(params, ins, outs, previous)
        if unchanged is not None:  # nothing to do: no run opened, nothing logged
            if unchanged != previous:
                write_json(summary_file, unchanged)
            return {**unchanged, "stage": name, "seconds": round(time.perf_counter() - started, 2)}
    with runs.stage_run(stage, params, ins, outs) as tracker:
        started = time.perf_counter()
        try:
            summary = stage.load().run(params, ins, outs)
        except ConfigurationError as exc:  # e.g. too little data for one training step: the user's to fix
            raise StgtError(f"{name}: {exc}") from None
        summary = {"stage": name, "seconds": round(time.perf_counter() - started, 2), **summary}
        write_json(metrics_path or stage.metrics, summary)
        tracker.log_summary(summary, metrics_path or stage.metrics)
    return summary
