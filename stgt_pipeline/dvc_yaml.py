"""Render dvc.yaml from the stage table (`stgt dvc-yaml`; `--check` fails when the checked-in file drifts)."""
from __future__ import annotations

from pathlib import Path

import yaml

from stgt_pipeline.stages import STAGES, Stage, source_path

HEADER = "# Generated from stgt_pipeline/stages.py by `stgt dvc-yaml`. Do not edit by hand.\n"
ITEM = "${item}"


def code_deps(stage: Stage, root: Path) -> list[str]:
    """The stage's folder and the code it lists, as paths in the project."""
    return [source_path(module, root) for module in (stage.package, *stage.code)]


def stage_entry(stage: Stage, root: Path = Path(".")) -> dict:
    if stage.foreach:
        return foreach_entry(stage, root)
    entry: dict = {
        "cmd": f"stgt {stage.name}",
        "deps": list(dict.fromkeys([*code_deps(stage, root), *stage.inputs.values()])),
        "params": list(stage.params),
        "outs": list(stage.outputs.values()),
        "metrics": [{stage.metrics: {"cache": False}}],
    }
    if not stage.cacheable:
        entry["always_changed"] = True
        # Kept while the stage runs (dvc deletes outputs first otherwise): a stage with nothing to do leaves it as
        # it is (Stage.noop_check), so the repro changes neither it nor dvc.lock.
        entry["metrics"] = [{stage.metrics: {"cache": False, "persist": True}}]
    return entry


def foreach_entry(stage: Stage, root: Path = Path(".")) -> dict:
    """One DVC stage per item (`<name>@<item>`): the item narrows `foreach_param` and owns the output of its name.

    The outputs must differ only by the item (e.g. data/checkpoints/finetune/<item>), so one templated path
    covers them all.
    """
    first = stage.foreach[0]
    template = stage.outputs[first].replace(first, ITEM)
    for item in stage.foreach:
        if stage.outputs.get(item) != template.replace(ITEM, item):
            raise ValueError(f"{stage.name}: foreach item {item!r} needs output {template.replace(ITEM, item)!r}")
    metrics = f"reports/{stage.name}/{ITEM}.json"
    do: dict = {
        "cmd": f"stgt {stage.name} --set '{stage.foreach_param}=[{ITEM}]' --metrics {metrics}",
        "deps": list(dict.fromkeys([*code_deps(stage, root), *stage.inputs.values()])),
        "params": list(stage.params),
        "outs": [template],
        "metrics": [{metrics: {"cache": False}}],
    }
    if not stage.cacheable:
        do["always_changed"] = True
    return {"foreach": list(stage.foreach), "do": do}


def render(root: Path = Path(".")) -> str:
    doc: dict = {"stages": {s.name: stage_entry(s, root) for s in STAGES}}
    metrics = [path for s in STAGES for path in s.metrics_files]
    plots = [plot for s in STAGES for plot in s.plots]
    if metrics:
        doc["metrics"] = metrics
    if plots:
        doc["plots"] = plots
    return HEADER + yaml.safe_dump(doc, sort_keys=False, width=120)


def write(path: Path = Path("dvc.yaml")) -> None:
    path.write_text(render(path.parent), encoding="utf-8")


def is_current(path: Path = Path("dvc.yaml")) -> bool:
    return path.exists() and path.read_text(encoding="utf-8") == render(path.parent)
