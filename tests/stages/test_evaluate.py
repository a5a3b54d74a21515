"""Stage `evaluate` on the tiny corpus's trained models: every output, each rank convention, dual softmax."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from stgt_model.metrics import retrieval_metrics
from stgt_pipeline.components.evaluate import stage as evaluate
from stgt_pipeline.scoring import encode_texts, encode_videos
from stgt_pipeline.training import open_corpus, text_processor, trained_model
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


def test_tie_aware_ranks_beyond_k_test_are_the_coarse_ranks(trained, tmp_path):
    # k_test = 1: the matching head re-scores only each query's top candidate, and p_match + s cannot push it
    # below the others, so every rank the stage reports must be the rank by the coarse similarity alone. With the
    # reference -100 fill every query whose ground truth is not on top would tie with all the others instead.
    _, out = run(trained, tmp_path, k_test=1)
    t2v, v2t = pd.read_parquet(out / "ranks_t2v.parquet"), pd.read_parquet(out / "ranks_v2t.parquet")
    params = tiny_params(tmp_path)
    _, store = open_corpus(trained["dataset"], trained["features"])
    model = trained_model(params.model, trained["retrieval"]).eval()
    video_ids = list(v2t["video_id"])
    with torch.no_grad():
        _, video_feat = encode_videos(model, store, video_ids, 8)
        _, _, text_feat = encode_texts(model, text_processor(params.model, params.evaluate.max_text_len),
                                       list(t2v["text"]), 8)
        coarse = model.similarity(video_feat, text_feat).T.numpy()
    coarse_ranks = retrieval_metrics(coarse, [video_ids.index(v) for v in t2v["video_id"]])
    assert (coarse_ranks["t2v"]["ranks"] >= 1).any()  # some ground truths lie beyond k_test
    np.testing.assert_allclose(t2v["rank"], coarse_ranks["t2v"]["ranks"])
    np.testing.assert_allclose(v2t["rank"], coarse_ranks["v2t"]["ranks"])
