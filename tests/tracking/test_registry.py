"""Champion/challenger gating, manual promotion and rollback on a real server, through the helpers and the CLI."""
from __future__ import annotations

import pytest

from stgt_pipeline.cli import main
from stgt_pipeline.errors import StgtError
from stgt_pipeline.tracking import model_registry

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

PIP_REQUIREMENTS = ["torch==2.13.0"]  # skips MLflow's ~10 s requirement inference


@pytest.fixture
def scored_models(tracked):
    """Two tiny logged models and the evaluation snapshot that scores them: (uri_a, uri_b, score)."""
    import mlflow
    import torch

    torch.manual_seed(0)
    inputs = torch.randn(16, 4)
    targets = inputs.sum(dim=1, keepdim=True)
    weak = torch.nn.Linear(4, 1)
    strong = torch.nn.Linear(4, 1)
    with torch.no_grad():
        weak.weight.fill_(0.5)
        weak.bias.zero_()
        strong.weight.fill_(0.9)
        strong.bias.zero_()

    def score(model: torch.nn.Module) -> dict[str, float]:
        with torch.no_grad():
            mse = torch.mean((model(inputs) - targets) ** 2).item()
        return {"neg_mse": -mse, "mse": mse}

    with mlflow.start_run(run_name="train") as run:
        # MLflow 3.17 saves torch models as "pt2" (torch.export) by default, which traces the input example.
        uris = [mlflow.pytorch.log_model(m, name=n, input_example=inputs[:2].numpy(),
                                         pip_requirements=PIP_REQUIREMENTS).model_uri
                for n, m in (("weak", weak), ("strong", strong))]
    return uris[0], uris[1], score, run.info.run_id


def rescore_with(score):
    import mlflow

    return lambda uri: score(mlflow.pytorch.load_model(uri))


def test_gate_promotes_first_and_better_models_keeps_champion_over_worse_and_rolls_back(scored_models, client, capsys):
    weak_uri, strong_uri, score, train_run = scored_models
    import mlflow

    name = "stgt-gate"
    gate = dict(name=name, gate_metric="neg_mse", margin=0.001, rescore_champion=rescore_with(score))
    weak_scores = score(mlflow.pytorch.load_model(weak_uri))
    strong_scores = score(mlflow.pytorch.load_model(strong_uri))

    first = model_registry.register_and_gate(weak_uri, metrics=weak_scores, **gate)
    assert first.promoted and first.version == "1" and first.compared_with is None
    v1 = client.get_model_version(name, "1")
    assert v1.tags["decision"] == "promoted" and v1.tags["previous_champion"] == ""
    assert v1.tags["source_run_id"] == train_run

    better = model_registry.register_and_gate(strong_uri, metrics=strong_scores, **gate)
    assert better.promoted and better.compared_with == "1"
    assert better.deltas["neg_mse"] == pytest.approx(strong_scores["neg_mse"] - weak_scores["neg_mse"])
    v2 = client.get_model_version(name, "2")
    assert v2.tags["previous_champion"] == "1" and v2.tags["decision"] == "promoted"
    assert float(v2.tags["champion.neg_mse"]) == pytest.approx(weak_scores["neg_mse"])
    assert float(v2.tags["delta.neg_mse"]) > 0.001

    worse = model_registry.register_and_gate(weak_uri, metrics=weak_scores, **gate)
    assert not worse.promoted and worse.version == "3"
    aliases = client.get_registered_model(name).aliases
    assert aliases["champion"] == "2" and aliases["challenger"] == "3"
    v3 = client.get_model_version(name, "3")
    assert v3.tags["decision"] == "rejected" and v3.tags["compared_with"] == "2" and "previous_champion" not in v3.tags
    assert "does not beat the margin 0.001" in v3.tags["reason"] and float(v3.tags["delta.neg_mse"]) < 0

    assert main(["registry", "rollback", "--name", name, "--reason", "latency regression"]) == 0
    assert "champion moved back from v2 to v1" in capsys.readouterr().out
    assert client.get_registered_model(name).aliases["champion"] == "1"
    assert "latency regression" in client.get_model_version(name, "2").tags["rolled_back"]
    assert client.get_model_version(name, "1").tags["restored_from"] == "2"
    with pytest.raises(StgtError, match="v1 records no previous champion"):
        model_registry.rollback(name, "again")

    assert main(["registry", "promote", "v3", "--name", name, "--reason", "wins on the new benchmark"]) == 0
    assert "champion is now v3 (was v1)" in capsys.readouterr().out
    v3 = client.get_model_version(name, "3")
    assert v3.tags["previous_champion"] == "1" and v3.tags["reason"] == "wins on the new benchmark"
    assert v3.tags["decided_by"] == "manual" and v2.tags["decided_by"] == "gate"
    assert main(["registry", "promote", "3", "--name", name]) == 2
    assert "v3 is already the champion" in capsys.readouterr().err

    assert main(["registry", "show", "--name", name]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == f"model {name}: 3 version(s)"
    assert table[1].split() == ["version", "aliases", "created", "decision", "previous", "reason"]
    assert table[2].split()[:2] == ["v3", "champion,challenger"]
    assert "wins on the new benchmark" in table[2]
    assert "latency regression" in table[3]
    assert main(["registry", "show", "--name", "no-such-model"]) == 2
    assert "no registered model named 'no-such-model'" in capsys.readouterr().err
