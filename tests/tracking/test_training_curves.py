"""Training curves in MLflow, on the real server: the real pretrain, finetune and evaluate stages (tiny corpus) log
each loss term, the total, the learning rate, the gradient norm and the throughput of every logged step, under one
name per phase (pretrain's two phases share a run, yet keep lines of their own), the same numbers as curves.csv;
evaluation numbers land at the step the checkpoint ended on; step metrics are sent in batches, not per step; the
experiment opens in MLflow's model-training view."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from stgt_pipeline import stages
from stgt_pipeline.params import load_params
from stgt_pipeline.runner import run_stage
from stgt_pipeline.tracking import runs
from stgt_pipeline.training import CURVES_FILE, curve_logger
from tests.stages.tiny_corpus import TRAIN, corpus, tiny_params  # noqa: F401 - the session fixture

PER_STEP = ("lr", "grad_norm", "samples_per_s", "steps_per_s", "loss/total")


def stage_run_id(client, experiment: str, stage: str) -> str:
    exp = client.get_experiment_by_name(experiment)
    found = client.search_runs([exp.experiment_id], f"tags.stage = '{stage}'")
    assert len(found) == 1, [r.info.run_name for r in found]
    return found[0].info.run_id


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_each_phase_logs_its_curves_per_step_and_evaluation_at_the_checkpoint_step(tracked, client, corpus, clean_env):
    tiny_params(clean_env, pretrain={"stage1": {**TRAIN, "steps": 4, "log_every": 2, "losses": ["vtc", "vtm"]},
                                     "stage2": {**TRAIN, "losses": ["csal", "vtm"]}})
    pretrained, retrieval, qa = clean_env / "pretrain", clean_env / "retrieval", clean_env / "qa"
    run_stage("pretrain", params_path="params.yaml", inputs=corpus, outputs={"checkpoint": pretrained})
    run_stage("finetune", params_path="params.yaml", inputs={**corpus, "pretrained": pretrained},
              outputs={"retrieval": retrieval, "qa": qa})
    run_stage("evaluate", params_path="params.yaml",
              inputs={**corpus, "pretrained": pretrained, "retrieval": retrieval, "qa": qa},
              outputs={"report": clean_env / "evaluate"})

    assert client.get_experiment_by_name(tracked).tags["mlflow.experimentKind"] == "custom_model_development"

    pretrain_run = stage_run_id(client, tracked, "pretrain")
    metrics = client.get_run(pretrain_run).data.metrics
    curves = pd.read_csv(pretrained / CURVES_FILE)
    for phase, steps, losses in (("stage1", [2, 4], ["vtc", "vtm"]), ("stage2", [1, 2, 3], ["csal", "vtm"])):
        for key in (*PER_STEP, *(f"loss/{name}" for name in losses)):
            logged = history(client, pretrain_run, f"{phase}/{key}")
            assert [step for step, _ in logged] == steps, (phase, key)  # every logged step, its own line
            written = curves[curves["phase"] == phase].sort_values("step")[key].tolist()
            assert [value for _, value in logged] == pytest.approx(written), (phase, key)  # the numbers of curves.csv
        assert all(value > 0 for _, value in history(client, pretrain_run, f"{phase}/grad_norm"))
        assert all(value > 0 for _, value in history(client, pretrain_run, f"{phase}/samples_per_s"))
    assert not any(key.startswith(("loss/", "lr")) for key in metrics)  # no phase-less name for curves to merge in

    finetune_run = stage_run_id(client, tracked, "finetune")
    for task in ("retrieval", "qa"):
        assert [step for step, _ in history(client, finetune_run, f"{task}/loss/total")] == [1, 2, 3]
        assert [step for step, _ in history(client, finetune_run, f"{task}/lr")] == [1, 2, 3]

    evaluate_run = stage_run_id(client, tracked, "evaluate")
    evaluated = client.get_run(evaluate_run).data.metrics
    for key in ("retrieval/eval/t2v.R_1", "retrieval/eval/temporal_order.pair_accuracy", "qa/eval/accuracy"):
        assert key in evaluated
        assert [step for step, _ in history(client, evaluate_run, key)] == [TRAIN["steps"]]  # the checkpoint's step
    assert evaluated["retrieval/eval/t2v.R_1"] == evaluated["t2v_R_1"]  # the headline, at step 0, agrees


def test_step_metrics_are_sent_in_batches(tracked, client, monkeypatch):
    monkeypatch.setattr(runs, "STEP_METRICS_FLUSH_S", 3600.0)  # only a full batch or the stage's end sends them
    stage = stages.Stage(name="train_probe", help="", params=("validate",))
    with runs.stage_run(stage, load_params(None), {}, {}) as tracker:
        log = curve_logger(Path("work") / "curves.jsonl", "stage1")
        for step in range(1, 41):
            log(step, {"loss/total": 1.0 / step, "lr": 0.1})
        assert client.get_run(tracker.run_id).data.metrics == {}  # 40 steps buffered, no request yet
        for step in range(41, 41 + runs.METRICS_PER_BATCH // 2):  # two metrics a step: one batch is full
            log(step, {"loss/total": 1.0 / step, "lr": 0.1})
        assert len(client.get_metric_history(tracker.run_id, "stage1/lr")) == runs.METRICS_PER_BATCH // 2
    logged = history(client, tracker.run_id, "stage1/loss/total")
    assert [step for step, _ in logged] == list(range(1, 41 + runs.METRICS_PER_BATCH // 2))  # the rest at the end
    assert logged[:2] == [(1, 1.0), (2, 0.5)]


def test_an_experiment_made_before_the_kind_tag_gets_it(tracked, client):
    client.create_experiment(tracked)  # as an older version of the pipeline (or `mlflow experiments create`) made it
    with runs.stage_run(stages.get("validate"), load_params(None), {}, {"report": Path("r")}):
        pass
    assert client.get_experiment_by_name(tracked).tags["mlflow.experimentKind"] == "custom_model_development"
