"""A `dvc repro` with nothing new is a no-op: register finds its models' package digests in the registry without
importing mlflow (the real server's REST API, the embedded SQLite store) and opens no run. End to end: the whole
pipeline on a tiny corpus under the real `dvc repro`, then a second repro, timed."""
from __future__ import annotations

import json
import uuid

import pytest
import yaml

from stgt_pipeline.components.register import unchanged
from stgt_pipeline.params import load_params
from tests.pipeline.dvc_project import TINY_PARAMS, make_project, run

DIGEST = "a" * 64


def add_version(client, name: str, digest: str) -> str:
    if not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(name)
    version = client.create_model_version(name, source="s3://bucket/model",
                                           tags={unchanged.DIGEST_TAG: digest, "decision": "promoted"}).version
    return str(version)  # the server says "1", the SQLite store 1


@pytest.mark.parametrize("store", ["server", "sqlite"])
def test_registry_lookup_without_mlflow_sees_what_mlflow_wrote(store, mlflow_server, tmp_path):
    from mlflow import MlflowClient

    uri = mlflow_server if store == "server" else f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    name = f"t{uuid.uuid4().hex[:8]}-retrieval"
    assert unchanged.find_version(uri, name, DIGEST) is None  # no such model (or, for sqlite, no store) yet
    first = add_version(client, name, DIGEST)
    later = add_version(client, name, "b" * 64)
    found = unchanged.find_version(uri, name, DIGEST)
    assert found == unchanged.Found(first, {unchanged.DIGEST_TAG: DIGEST, "decision": "promoted"})
    assert unchanged.find_version(uri, name, "c" * 64) is None
    client.delete_model_version(name, later)
    assert unchanged.find_version(uri, name, "b" * 64) is None  # a deleted version holds nothing
    assert unchanged.find_version(uri, f"{name}x", DIGEST) is None


def test_digest_follows_weights_packaged_settings_and_code(tmp_path):
    params = load_params(None)
    checkpoint = tmp_path / "qa"
    checkpoint.mkdir()
    (checkpoint / unchanged.MODEL_FILE).write_bytes(b"weights")
    (checkpoint / unchanged.VOCAB_FILE).write_text('{"yes": 0}')
    base = unchanged.digests(params, "qa", checkpoint)
    assert base == unchanged.digests(params, "qa", checkpoint)  # deterministic
    assert unchanged.digests(params, "qa", checkpoint, code="other").package != base.package
    assert unchanged.digests(params, "qa", checkpoint, code="other").weights == base.weights
    other_k = load_params(None, ["evaluate.k_test=7"])
    assert unchanged.digests(other_k, "qa", checkpoint).package != base.package
    (checkpoint / unchanged.VOCAB_FILE).write_text('{"no": 0}')
    assert unchanged.digests(params, "qa", checkpoint).weights != base.weights


def test_matches_the_training_stage_file_names():
    from stgt_pipeline import training

    assert (unchanged.MODEL_FILE, unchanged.VOCAB_FILE) == (training.MODEL_FILE, training.VOCAB_FILE)


TINY_TRAIN = {"steps": 2, "batch_size": 4, "checkpoint_every": 1, "log_every": 1}


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_noop_repro_opens_no_run_registers_nothing_and_is_quick(mlflow_server, client, tmp_path):
    params = {**TINY_PARAMS, "pretrain": {"stage1": {**TINY_TRAIN, "losses": ["vtc", "vtm"]},
                                          "stage2": {**TINY_TRAIN, "losses": ["csal", "vtm"]}},
              "finetune": {"retrieval": {**TINY_TRAIN, "losses": ["csal", "vtm"]},
                           "qa": {**TINY_TRAIN, "answer_vocab_size": 20}},
              "evaluate": {"k_test": 4, "batch_size": 8}, "register": {"model_prefix": f"t{uuid.uuid4().hex[:8]}"}}
    repo, env = make_project(tmp_path, params)
    experiment = f"noop-{uuid.uuid4().hex[:8]}"
    env.update({"MLFLOW_TRACKING_URI": mlflow_server, "MLFLOW_EXPERIMENT_NAME": experiment, "STGT_TRACKING": "on"})
    for name in ("MLFLOW_RUN_ID", "MLFLOW_PARENT_RUN_ID", "STGT_PARENT_RUN_ID", "MLFLOW_EXPERIMENT_ID", "DVC_STAGE",
                 "DVC_ROOT", "RANK", "LOCAL_RANK", "KFP_RUN_ID"):
        env.pop(name, None)
    run(["dvc", "repro"], repo, env)
    exp_id = client.get_experiment_by_name(experiment).experiment_id
    made = client.search_runs([exp_id])
    summary = json.loads((repo / "reports/register.json").read_text())
    prefix = params["register"]["model_prefix"]
    lock = (repo / "dvc.lock").read_text()

    again = run(["dvc", "repro"], repo, env)
    assert "nothing new to register" in again.stderr
    assert [line for line in again.stdout.splitlines() if "Running stage" in line] == ["Running stage 'register':"]
    assert len(client.search_runs([exp_id])) == len(made)  # no parent, no stage run
    for task in ("retrieval", "qa"):
        versions = client.search_model_versions(f"name = '{prefix}-{task}'")
        assert [v.version for v in versions] == [summary[task]["version"]]
    assert json.loads((repo / "reports/register.json").read_text()) == summary
    assert yaml.safe_load((repo / "dvc.lock").read_text()) == yaml.safe_load(lock)
