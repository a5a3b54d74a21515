"""Stage `register` against the real MLflow server: tiny fine-tuned models (the real pretrain, finetune and evaluate
stages on the tiny corpus), registered twice. First run: both models promoted to champion. Second run, another
model (weights nudged) with a worse evaluate report: champion unchanged, the new version tagged with the reason, and
the champion re-scored on the same snapshot to exactly the numbers the evaluate stage reported for it. Then the
champions served as pyfunc. The same model registered again is a no-op: no run, no version, no re-scoring."""
from __future__ import annotations

import json
import re
import shutil
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from stgt_model.data import ClipStore
from stgt_pipeline import training
from stgt_pipeline.components.evaluate import stage as evaluate
from stgt_pipeline.components.finetune import stage as finetune
from stgt_pipeline.components.pretrain import stage as pretrain
from stgt_pipeline.components.register import stage as register
from stgt_pipeline.errors import StgtError
from stgt_pipeline.runner import run_stage
from tests.stages.tiny_corpus import build_corpus, tiny_params

TINY_EMBED_DIM, TINY_QUERIES = 32, 4  # model preset `tiny`


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Input paths of the register stage: tiny checkpoints, their evaluate report, features and dataset (~30 s)."""
    root = tmp_path_factory.mktemp("register")
    paths = build_corpus(root)
    params = tiny_params(root)
    paths["pretrained"] = root / "pretrain"
    pretrain.run(params, paths, {"checkpoint": paths["pretrained"]})
    paths.update(retrieval=root / "retrieval", qa=root / "qa")
    finetune.run(params, paths, {"retrieval": paths["retrieval"], "qa": paths["qa"]})
    paths["report"] = root / "evaluate"
    evaluate.run(params, paths, {"report": paths["report"]})
    return {k: paths[k] for k in ("retrieval", "qa", "report", "features", "dataset")}


def worse_report(report: Path, dest: Path) -> Path:
    """A copy of the evaluate report with both gate metrics lowered (a worse config's report)."""
    shutil.copytree(report, dest)
    metrics = json.loads((dest / "metrics.json").read_text())
    metrics["retrieval"]["t2v"]["R@1"] -= 10.0
    metrics["qa"]["accuracy"] -= 1.0
    (dest / "metrics.json").write_text(json.dumps(metrics))
    return dest


def changed_model(checkpoint: Path, dest: Path) -> Path:
    """A copy of a fine-tuned checkpoint with one weight nudged: another model to register."""
    shutil.copytree(checkpoint, dest)
    state = torch.load(dest / training.MODEL_FILE, weights_only=True)
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = state[key] + 1e-4
    torch.save(state, dest / training.MODEL_FILE)
    return dest


def test_register_promotes_then_keeps_champion_and_serves(tracked: str, client, trained: dict[str, Path],
                                                          clean_env: Path) -> None:
    import mlflow

    prefix = f"t{uuid.uuid4().hex[:8]}"
    tiny_params(clean_env, register={"model_prefix": prefix})
    first = run_stage("register", params_path="params.yaml", inputs=trained)
    assert json.loads(Path("reports/register.json").read_text()) == first
    for task in ("retrieval", "qa"):
        assert first[task]["promoted"] and first[task]["champion"] == first[task]["version"]
        assert first[task]["reason"] == "first model: no champion to beat"
        assert re.fullmatch(r"[0-9a-f]{32}", first[task]["eval_data_digest"])
        tags = client.get_model_version(f"{prefix}-{task}", first[task]["version"]).tags
        assert tags["package_digest"] == first[task]["package_digest"]
        assert re.fullmatch(r"[0-9a-f]{64}", tags["weights_digest"])

    worse = worse_report(trained["report"], clean_env / "worse_evaluate")
    changed = {task: changed_model(trained[task], clean_env / f"changed_{task}") for task in ("retrieval", "qa")}
    second = run_stage("register", params_path="params.yaml", inputs={**trained, **changed, "report": worse})
    reported = json.loads((trained["report"] / "metrics.json").read_text())
    for task, gate, champion_value in (("retrieval", "t2v.R_1", reported["retrieval"]["t2v"]["R@1"]),
                                       ("qa", "accuracy", reported["qa"]["accuracy"])):
        name = f"{prefix}-{task}"
        decision = second[task]
        assert not decision["promoted"] and decision["compared_with"] == first[task]["version"]
        assert client.get_registered_model(name).aliases == {"champion": first[task]["version"],
                                                             "challenger": decision["version"]}
        tags = client.get_model_version(name, decision["version"]).tags
        assert tags["decision"] == "rejected" and "does not beat the margin 0" in tags["reason"]
        # Re-scored on the same snapshot with the evaluate stage's functions: exactly what evaluate reported.
        assert float(tags[f"champion.{gate}"]) == pytest.approx(champion_value)
        assert float(tags[f"delta.{gate}"]) == pytest.approx(-10.0 if task == "retrieval" else -1.0)
        assert tags["eval_data_digest"] == first[task]["eval_data_digest"]
        assert tags["gate_run_id"] == tags["source_run_id"]  # logged and gated in the register stage's run
        run = client.get_run(tags["source_run_id"])
        assert run.data.tags["stage"] == "register" and "mlflow.parentRunId" in run.data.tags

    retrieval = mlflow.pyfunc.load_model(f"models:/{prefix}-retrieval@champion")
    texts = retrieval.predict(pd.DataFrame({"text": ["a red circle moves", "a blue square"]}))
    assert [len(e) for e in texts["embedding"]] == [TINY_EMBED_DIM] * 2
    store = ClipStore(trained["features"])
    clip = store.array(store.index["video_id"][0])
    videos = retrieval.predict(pd.DataFrame({"video_features": [clip.astype(np.float32), clip.tolist()]}))
    assert np.asarray(videos["embedding"][0]).shape == (TINY_QUERIES, TINY_EMBED_DIM)
    assert np.allclose(videos["embedding"][0], videos["embedding"][1], atol=1e-3)  # fp16 store: array or lists
    qa = mlflow.pyfunc.load_model(f"models:/{prefix}-qa@champion")
    vocab = json.loads((trained["qa"] / training.VOCAB_FILE).read_text())
    answers = qa.predict(pd.DataFrame({"video_features": [clip], "question": ["what colour is the circle?"]}))
    assert answers["answer"][0] in vocab


def test_the_same_model_again_is_a_noop_and_a_changed_one_is_registered(tracked: str, client, trained: dict[str, Path],
                                                                        clean_env: Path) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    tiny_params(clean_env, register={"model_prefix": prefix})
    first = run_stage("register", params_path="params.yaml", inputs=trained)
    written = Path("reports/register.json").read_bytes()
    experiment = client.get_experiment_by_name(tracked).experiment_id
    made = len(client.search_runs([experiment]))  # the parent and the stage's run

    def versions(task: str) -> list[str]:
        return sorted(v.version for v in client.search_model_versions(f"name = '{prefix}-{task}'"))

    again = run_stage("register", params_path="params.yaml", inputs=trained)
    assert len(client.search_runs([experiment])) == made  # no run, parent or stage
    for task in ("retrieval", "qa"):
        assert versions(task) == [first[task]["version"]]
        assert again[task]["version"] == first[task]["version"]
    assert Path("reports/register.json").read_bytes() == written  # the registration's summary stays (dvc.lock too)

    # One model changed: the stage runs, registers and gates that one only.
    qa = changed_model(trained["qa"], clean_env / "changed_qa")
    third = run_stage("register", params_path="params.yaml", inputs={**trained, "qa": qa})
    assert len(client.search_runs([experiment])) == made + 2
    assert third["retrieval"]["unchanged"] and third["retrieval"]["version"] == first["retrieval"]["version"]
    assert versions("retrieval") == [first["retrieval"]["version"]]
    assert versions("qa") == sorted([first["qa"]["version"], third["qa"]["version"]])
    assert third["qa"]["compared_with"] == first["qa"]["version"]  # gated against the champion
    assert third["qa"]["package_digest"] != first["qa"]["package_digest"]

    # Both registered now, whichever was before: no-ops again, naming the version that holds each.
    for inputs, expected in (({**trained, "qa": qa}, third), (trained, first)):
        before = len(client.search_runs([experiment]))
        summary = run_stage("register", params_path="params.yaml", inputs=inputs)
        assert len(client.search_runs([experiment])) == before
        assert {t: summary[t]["version"] for t in ("retrieval", "qa")} == \
            {t: expected[t]["version"] for t in ("retrieval", "qa")}
    assert versions("qa") == sorted([first["qa"]["version"], third["qa"]["version"]])


def test_register_needs_tracking(clean_env: Path, monkeypatch: pytest.MonkeyPatch, trained: dict[str, Path]) -> None:
    monkeypatch.setenv("STGT_TRACKING", "off")
    with pytest.raises(StgtError, match="register needs MLflow tracking"):
        run_stage("register", inputs=trained)


def test_serving_pins_match_the_lock() -> None:
    lock = Path(__file__).resolve().parents[2] / "requirements" / "lock.txt"
    pins = {line.split("==")[0].lower(): line.strip() for line in lock.read_text().splitlines() if "==" in line}
    for requirement in register.pip_requirements():
        name = requirement.split("==")[0]
        assert requirement == ("torch==2.13.0" if name == "torch" else pins[name])
