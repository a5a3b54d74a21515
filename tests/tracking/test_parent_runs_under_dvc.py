"""Stages run by one `dvc repro` (separate processes) share one parent run; the next repro starts a new one."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

STAGE_SCRIPT = '''
import sys
from pathlib import Path
from stgt_pipeline import stages
from stgt_pipeline.tracking import runs
from stgt_pipeline.params import load_params

stage = stages.get(sys.argv[1])
with runs.stage_run(stage, load_params(None), {}, {k: Path(v) for k, v in stage.outputs.items()}) as tracker:
    tracker.log_metrics({"ran": 1})
    Path(sys.argv[2]).write_text(stage.name)
'''

DVC_YAML = f"""stages:
  prepare:
    cmd: {sys.executable} stage.py prepare a.txt
    outs: [a.txt]
  validate:
    cmd: {sys.executable} stage.py validate b.txt
    deps: [a.txt]
    outs: [b.txt]
"""


def dvc(project: Path, *args: str) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(project / ".dvc-site-cache")}
    proc = subprocess.run(["dvc", *args], cwd=project, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"dvc {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"


def test_one_parent_per_dvc_invocation(tracked, client):
    project = Path.cwd()
    (project / "stage.py").write_text(STAGE_SCRIPT)
    (project / "dvc.yaml").write_text(DVC_YAML)
    dvc(project, "init", "--no-scm", "-q")
    experiment_id = lambda: client.get_experiment_by_name(tracked).experiment_id  # noqa: E731 - created by the first stage

    dvc(project, "repro")
    stages = client.search_runs([experiment_id()], "tags.`stgt.role` = 'stage'", order_by=["attributes.start_time ASC"])
    assert [r.info.run_name for r in stages] == ["prepare", "validate"]
    parent_id = stages[0].data.tags["mlflow.parentRunId"]
    assert stages[1].data.tags["mlflow.parentRunId"] == parent_id
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["pipeline.kind"] == "dvc"
    assert json.loads((project / ".stgt" / "parent_run").read_text())["run_id"] == parent_id

    dvc(project, "repro", "--force", "--single-item", "validate")
    newest = client.search_runs([experiment_id()], "tags.`stgt.role` = 'stage'", order_by=["attributes.start_time DESC"])[0]
    assert newest.info.run_name == "validate"
    assert newest.data.tags["mlflow.parentRunId"] != parent_id
    parents = client.search_runs([experiment_id()], "tags.`stgt.role` = 'pipeline'")
    assert len(parents) == 2 and {p.info.status for p in parents} == {"FINISHED"}
