"""Render dvc.yaml from the stage registry (`stgt dvc-yaml`; `--check` fails when the checked-in file drifts)."""
from __future__ import annotations

from pathlib import Path

import yaml

from components.registry import STAGES, Stage

HEADER = "# Generated from components/registry.py by `stgt dvc-yaml`. Do not edit by hand.\n"


def stage_entry(stage: Stage) -> dict:
    deps = [f"components/{stage.name}.py", *stage.code, *stage.inputs.values()]
    entry: dict = {
        "cmd": f"stgt {stage.name}",
        "deps": list(dict.fromkeys(deps)),
        "params": list(stage.params),
        "outs": list(stage.outputs.values()),
        "metrics": [{stage.metrics: {"cache": False}}],
    }
    if not stage.cacheable:
        entry["always_changed"] = True
    return entry


def render() -> str:
    doc = {"stages": {s.name: stage_entry(s) for s in STAGES}}
    return HEADER + yaml.safe_dump(doc, sort_keys=False, width=120)


def write(path: Path = Path("dvc.yaml")) -> None:
    path.write_text(render(), encoding="utf-8")


def is_current(path: Path = Path("dvc.yaml")) -> bool:
    return path.exists() and path.read_text(encoding="utf-8") == render()
