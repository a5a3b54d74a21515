"""What a run records, worked out by hand: flattened params without credentials, summary metrics, digests."""
from __future__ import annotations

import hashlib
import json

from stgt_pipeline.tracking import runs


def test_params_are_flattened_and_credentials_never_logged():
    sections = {
        "prepare": {
            "seed": 0, "val_share": 0.1, "folder": {"root": None, "captions": "c.csv"}, "splits": {},
            "benchmark": {"root": "s3://reader:hunter2@bucket/videos", "extensions": [".mp4", ".webm"]},
            "api_key": "abc", "aws_access_key_id": "AKIAABCDEFGHIJKLMNOP", "db_password": "p", "hf_token": "t",
            "credentials": {"user": "u"}, "secretAccessKey": "s", "keyframes": 8, "note": "ghp_abcdef123",
            "num_query_tokens": 32, "tokenizer": "bert-base-uncased", "basic_auth": "u:p", "apiKey": "k",
        }
    }
    assert runs.loggable_params(sections) == {
        "prepare.seed": "0",
        "prepare.val_share": "0.1",
        "prepare.folder.root": "null",
        "prepare.folder.captions": "c.csv",
        "prepare.splits": "{}",
        "prepare.benchmark.root": "s3://***@bucket/videos",
        "prepare.benchmark.extensions": '[".mp4", ".webm"]',
        "prepare.keyframes": "8",
        "prepare.num_query_tokens": "32",
        "prepare.tokenizer": "bert-base-uncased",
    }


def test_summary_numbers_become_metrics_by_dotted_key():
    summary = {"stage": "validate", "seconds": 1.5, "success": True, "videos": 3, "splits": {"train": 2, "test": 1},
               "note": "text is not a metric"}
    assert runs.numeric_metrics(summary) == {"seconds": 1.5, "success": 1.0, "videos": 3.0, "splits.train": 2.0,
                                                 "splits.test": 1.0}
    assert runs.metric_name("t2v/R@1") == "t2v/R_1" and runs.metric_name("loss step:3") == "loss step:3"


def test_input_digest_prefers_dvc_lock_under_dvc_else_manifest_sha(tmp_path, monkeypatch):
    dataset = tmp_path / "data" / "prepared"
    dataset.mkdir(parents=True)
    (dataset / "manifest.parquet").write_bytes(b"manifest bytes")
    reports = tmp_path / "reports" / "validate"
    reports.mkdir(parents=True)
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  prepare:\n    cmd: stgt prepare\n    outs:\n"
        "    - path: data/prepared\n      hash: md5\n      md5: 0123456789abcdef0123456789abcdef.dir\n")
    inputs = {"dataset": dataset, "validation": reports}
    manifest_sha = hashlib.sha256(b"manifest bytes").hexdigest()[:32]

    monkeypatch.delenv("DVC_STAGE", raising=False)
    assert runs.input_digests(inputs, tmp_path) == {"dataset": manifest_sha}
    monkeypatch.setenv("DVC_STAGE", "extract_frames")
    digests = runs.input_digests(inputs, tmp_path)
    assert digests == {"dataset": "0123456789abcdef0123456789abcdef.dir"}
    assert runs.combined_digest(digests) == digests["dataset"]
    both = {"a": "1", "b": "2"}
    assert runs.combined_digest(both) == hashlib.sha256(json.dumps(both).encode()).hexdigest()[:32]


def test_errors_and_uris_are_one_redacted_line():
    exc = ValueError("cannot reach https://bob:s3cret@host/api\nsecond line")
    assert runs.one_line(exc) == "ValueError: cannot reach https://***@host/api"
    assert runs.artifact_location("sqlite:////tmp/x/mlflow.db") == "file:///tmp/x/mlartifacts"
    assert runs.artifact_location("http://server:5000") is None
