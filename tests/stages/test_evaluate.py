"""Stage `evaluate` on the tiny corpus's trained models: every output, each rank convention, dual softmax."""
import json

import pandas as pd
import pytest

from stgt_pipeline.components.evaluate import stage as evaluate
from tests.stages.tiny_corpus import corpus, tiny_params, trained  # noqa: F401 - session fixtures

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def run(trained, tmp_path, **evaluate_params):
    params = tiny_params(tmp_path, evaluate=evaluate_params)
    inputs = {k: trained[k] for k in ("dataset", "features", "pretrained", "retrieval", "qa")}
    out = tmp_path / "report"
    return evaluate.run(params, inputs, {"report": out}), out


def test_evaluate_writes_metrics_ranks_probe_qa_and_plots(trained, tmp_path):
    summary, out = run(trained, tmp_path)
    metrics = json.loads((out / "metrics.json").read_text())

    retrieval = metrics["retrieval"]
    assert retrieval["compat"] == "tie_aware" and "dual_softmax" not in retrieval
    for direction in ("t2v", "v2t"):
        assert {"R@1", "R@5", "R@10", "MdR", "MnR"} <= set(retrieval[direction])
        assert 0 <= retrieval[direction]["R@1"] <= retrieval[direction]["R@5"] <= 100
    ranks = pd.read_parquet(out / "ranks_t2v.parquet")
    assert len(ranks) == retrieval["num_texts"] and ranks["rank"].between(0, retrieval["num_videos"] - 1).all()
    assert len(pd.read_parquet(out / "ranks_v2t.parquet")) == retrieval["num_videos"]
    assert summary["t2v_R@1"] == retrieval["t2v"]["R@1"]

    probe = metrics["temporal_order"]
    assert probe["num_pairs"] == retrieval["num_videos"] == len(pd.read_parquet(out / "probe.parquet"))
    assert 0 <= probe["pair_accuracy"] <= min(probe["forward_accuracy"], probe["reversed_accuracy"])
    coarse = probe["coarse_only"]
    assert set(coarse) == {"pair_accuracy", "forward_accuracy", "reversed_accuracy"}
    assert 0 <= coarse["pair_accuracy"] <= min(coarse["forward_accuracy"], coarse["reversed_accuracy"])

    qa = metrics["qa"]
    predictions = pd.read_parquet(out / "qa_predictions.parquet")
    assert qa["num_questions"] == len(predictions) > 0
    assert set(qa["per_type"]) == set(predictions["type"])
    assert qa["accuracy"] == pytest.approx(100 * (predictions["prediction"] == predictions["answer"]).mean())

    for name in ("recall_at_k.csv", "recall_at_k.png", "curves.csv", "training_curves.png"):
        assert (out / "plots" / name).stat().st_size > 0
    assert set(pd.read_csv(out / "plots" / "curves.csv")["run"]) == {"pretrain", "retrieval", "qa"}


@pytest.mark.parametrize("compat", ["clip4clip", "albef"])
def test_evaluate_reports_the_chosen_convention_and_dual_softmax_beside_it(trained, tmp_path, compat):
    _, out = run(trained, tmp_path, compat=compat, dual_softmax=True)
    retrieval = json.loads((out / "metrics.json").read_text())["retrieval"]
    assert retrieval["compat"] == compat
    assert {"t2v", "v2t"} <= set(retrieval["dual_softmax"])
    if compat == "albef":
        assert retrieval["v2t"]["MnR"] is None  # ALBEF/LAVIS report no mean rank
