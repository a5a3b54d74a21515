"""A distributed stage's task with several processes per pod: the stage runs under torchrun (2 CPU ranks, gloo)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from stgt_pipeline import training
from stgt_pipeline.kfp.run import stage_task
from stgt_pipeline.tracking.runs import flatten
from tests.stages.tiny_corpus import corpus, tiny_params  # noqa: F401 - the session fixture

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def artifact(path: Path) -> SimpleNamespace:
    return SimpleNamespace(path=str(path), metadata={})


def test_pretrain_task_with_two_processes_runs_the_stage_under_torchrun(corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("STGT_TRACKING", "off")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("NVIDIA_VISIBLE_DEVICES", raising=False)
    monkeypatch.chdir(tmp_path)  # torchrun's `-m stgt_pipeline.cli` must still import the project: it is installed
    monkeypatch.setattr(stage_task, "run_stage", lambda *a, **k: pytest.fail("ran in-process, not under torchrun"))
    ws = tmp_path / "ws"
    (ws / "data").mkdir(parents=True)
    os.symlink(corpus["features"], ws / "data" / "features")  # a workspace input, at its stage-table path
    dumped = tiny_params(tmp_path / "p").dump()
    params = flatten({section: dumped[section] for section in ("pretrain", "model")})
    checkpoint, summary = artifact(tmp_path / "out" / "checkpoint"), SimpleNamespace(logged={})
    summary.log_metric = summary.logged.__setitem__

    inputs = {"features": artifact(tmp_path / "pointer"), "dataset": artifact(corpus["dataset"])}
    result = stage_task.run_stage_task("pretrain", str(ws), params, inputs, {"checkpoint": checkpoint}, {}, summary,
                                       procs_per_node=2)

    out = ws / "data" / "checkpoints" / "pretrain"
    assert (out / training.MODEL_FILE).is_file() and not training.work_dir(out).exists()
    assert result["stage1"]["steps"] == 3 and result["stage2"]["steps"] == 3  # 3 steps of 2 ranks x batch 4
    assert json.loads((ws / "reports" / "pretrain.json").read_text()) == result
    assert json.loads(Path(checkpoint.path).read_text())["workspace_path"] == str(out)  # the pointer published
    assert summary.logged["stage1.steps"] == 3.0
