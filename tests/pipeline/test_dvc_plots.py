"""`dvc plots show` on the plot definitions dvc.yaml gets from the stage table, over CSVs the evaluate stage's own
writers make from small tables: one line per retrieval direction and one per training phase, read from the rendered
vega-lite specs (the JSON and the HTML page)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pandas as pd
import pytest
import yaml

from stgt_pipeline import dvc_yaml
from stgt_pipeline.components.evaluate.plots import plot_curves, plot_recall_at_k
from stgt_pipeline.components.evaluate.stage import recall_by_direction, write_phase_curves
from stgt_pipeline.stages import CURVES_DIR, EVALUATE_PLOTS, TRAINING_PHASES

pytestmark = pytest.mark.timeout(300)

PHASE_ROWS = {("pretrain", "stage1"): 4, ("pretrain", "stage2"): 3, ("retrieval", "retrieval"): 2, ("qa", "qa"): 2}


def dvc(project: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(project / ".dvc-site-cache")}
    proc = subprocess.run(["dvc", *args], cwd=project, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"dvc {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def write_plots(project: Path, phases: dict[tuple[str, str], int]) -> None:
    """What evaluate writes under reports/evaluate/plots, from long tables as scoring and read_curves give them."""
    plots = project / EVALUATE_PLOTS
    plots.mkdir(parents=True)
    recall = pd.DataFrame([{"k": k, "direction": d, "recall": min(100.0, k * (3.0 if d == "t2v" else 2.0))}
                           for d in ("t2v", "v2t") for k in (1, 5, 10, 50)])
    recall_by_direction(recall).to_csv(plots / "recall_at_k.csv", index=False)
    plot_recall_at_k(recall, plots / "recall_at_k.png")
    # Every phase counts its steps from 1: in one column they would join into a zig-zag line.
    curves = pd.DataFrame([{"run": run, "phase": phase, "step": step, "loss/total": 10.0 * len(phase) / step,
                            "loss/vtc": 1.0 / step, "lr": 1e-3 / step}
                           for (run, phase), steps in phases.items() for step in range(1, steps + 1)])
    write_phase_curves(curves, project / CURVES_DIR)
    plot_curves(curves, plots / "training_curves.png")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A DVC project whose dvc.yaml holds the plots section rendered from the stage table."""
    plots = yaml.safe_load(dvc_yaml.render())["plots"]
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"plots": plots}, sort_keys=False))
    dvc(tmp_path, "init", "--no-scm", "-q")
    return tmp_path


def series(spec: dict) -> dict[str, list[tuple[float, float]]]:
    """Each line a vega-lite spec from DVC draws: DVC tells lines apart by revision and by the y column (`field`)
    or file (`filename`) they come from."""
    x, y = spec["encoding"]["x"]["field"], spec["layer"][0]["encoding"]["y"]["field"]
    lines: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for row in spec["data"]["values"]:
        name = "::".join(str(row[key]) for key in ("rev", "field", "filename") if key in row)
        lines[name].append((float(row[x]), float(row[y])))
    return dict(lines)


def rendered(project: Path) -> dict[str, dict]:
    shown = json.loads(dvc(project, "plots", "show", "--json"))
    assert not shown.get("errors"), shown["errors"]
    return {name: entries[0]["content"] for name, entries in shown["data"].items() if entries[0]["type"] == "vega"}


def test_one_line_per_direction_and_per_training_phase(project: Path) -> None:
    write_plots(project, PHASE_ROWS)
    specs = rendered(project)

    recall = series(specs["recall_at_k"])
    assert sorted(recall) == ["workspace::t2v", "workspace::v2t"]
    assert recall["workspace::t2v"] == [(1, 3), (5, 15), (10, 30), (50, 100)]
    assert recall["workspace::v2t"] == [(1, 2), (5, 10), (10, 20), (50, 100)]

    for plot, column in (("training_loss", "loss/total"), ("learning_rate", "lr")):
        lines = series(specs[plot])
        assert sorted(lines) == sorted(f"workspace::{phase}.csv" for phase in TRAINING_PHASES), plot
        for (run, phase), steps in PHASE_ROWS.items():
            name = f"pretrain-{phase}" if run == "pretrain" else f"finetune-{phase}"
            points = lines[f"workspace::{name}.csv"]
            assert [x for x, _ in points] == list(range(1, steps + 1))  # one step each: not phases joined
            expected = [10.0 * len(phase) / s if column == "loss/total" else 1e-3 / s for s in range(1, steps + 1)]
            assert [y for _, y in points] == pytest.approx(expected)

    # The HTML page DVC writes embeds the same specs: one legend entry per phase and per direction.
    dvc(project, "plots", "show", "-o", "html")
    page = (project / "html" / "index.html").read_text()
    embedded = {m.group(1): json.loads(m.group(2))
                for m in re.finditer(r'<div id = "([^"]+)">\s*<script[^>]*>\s*var spec = (\{.*?\});\n', page)}
    assert embedded["training_loss"]["encoding"]["strokeDash"]["field"] == "filename"
    assert embedded["training_loss"]["encoding"]["strokeDash"]["scale"]["domain"] == sorted(
        f"{phase}.csv" for phase in TRAINING_PHASES)
    assert embedded["recall_at_k"]["encoding"]["strokeDash"]["scale"]["domain"] == ["t2v", "v2t"]


def test_a_phase_that_did_not_train_is_an_empty_line_not_an_error(project: Path) -> None:
    write_plots(project, {k: v for k, v in PHASE_ROWS.items() if k[1] != "qa"})  # finetune skipped QA
    lines = series(rendered(project)["training_loss"])
    assert sorted(lines) == sorted(f"workspace::{phase}.csv" for phase in TRAINING_PHASES if phase != "finetune-qa")
