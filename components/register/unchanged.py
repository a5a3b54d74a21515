"""Is there anything new to register? Each model's package digest, and a registry look-up that lets a `dvc repro`
with nothing changed finish the register stage in about a second: no MLflow run, no model version, no re-scoring.

register is `always_changed` (the registry is state DVC cannot see), so dvc runs it on every repro. Before any run
is opened (the stage table's `noop_check`, called by the runner) each model's digest is computed from what its
package is made of, without packaging it: the fine-tuned weights (model.pt, and the answer vocabulary for QA: the
`weights_digest` tag), the settings packaged with them (model config, text lengths, how frames are read, the
re-ranking depth) and the code that travels with it (pyfunc.py and stgt_model): the `package_digest` tag. When every
model in register.models has a version carrying its package digest, the stage is done: the champion check, which
needs the live registry, runs only for a model that is new.

The look-up reads the registry without importing mlflow (which alone takes seconds): a tracking server through its
REST API (`model-versions/search` with a tag filter), the embedded SQLite store with one read-only query on its
`model_versions` / `model_version_tags` tables. Any other store, or any doubt (an error, an unexpected answer, a
workspace), is "unknown" and the stage runs; it then looks each digest up again through MLflow before logging
(stage.py), so a model already registered is never registered twice.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sqlite3
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from stgt_pipeline.params import Params
from stgt_pipeline.tracking import runs

DIGEST_TAG = "package_digest"
WEIGHTS_TAG = "weights_digest"
# stgt_pipeline.training's names for a training stage's files, spelt here so that this check needs no torch (a test
# holds them equal).
MODEL_FILE = "model.pt"
VOCAB_FILE = "ans2label.json"
SEARCH_ENDPOINT = "/api/2.0/mlflow/model-versions/search"
DELETED_STAGE = "Deleted_Internal"  # how MLflow's SQL store marks a deleted version (the row stays)
# A change here changes every digest: bump it when what a package holds changes in a way the inputs below miss.
DIGEST_FORMAT = 1


@dataclass(frozen=True)
class Digests:
    weights: str
    package: str

    def tags(self) -> dict[str, str]:
        return {WEIGHTS_TAG: self.weights, DIGEST_TAG: self.package}


@dataclass(frozen=True)
class Found:
    """A registered version holding the model."""

    version: str
    tags: dict[str, str] = field(default_factory=dict)


class Unknown:
    """The registry could not be asked quickly: let the stage run."""


UNKNOWN = Unknown()


def _hash_files(digest: Any, root: Path, paths: list[Path]) -> None:
    for path in paths:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")


def code_digest() -> str:
    """What the served model runs: pyfunc.py and the stgt_model package (logged with the model as its code)."""
    spec = importlib.util.find_spec("stgt_model")
    library = Path(next(iter(spec.submodule_search_locations)))  # type: ignore[union-attr]
    digest = hashlib.sha256()
    _hash_files(digest, library.parent, sorted(library.rglob("*.py")))
    pyfunc = Path(__file__).with_name("pyfunc.py")
    _hash_files(digest, pyfunc.parent, [pyfunc])
    return digest.hexdigest()


def packaged_settings(params: Params, task: str) -> dict[str, Any]:
    """The params stage.package writes into a model's config.json, as given (before defaults are filled in)."""
    frames = params.extract_frames
    return {"task": task, "model": params.model.model_dump(mode="json"),
            "max_text_len": params.evaluate.max_text_len if task == "retrieval" else params.finetune.qa.max_text_len,
            "frames": {"num_frames": frames.num_frames, "size": frames.size, "sampling": frames.eval_sampling},
            "k_test": params.evaluate.k_test}


def digests(params: Params, task: str, checkpoint: Path, code: str | None = None) -> Digests:
    """The weights and package digests of the model the register stage would package from `checkpoint`."""
    weights = hashlib.sha256()
    files = [checkpoint / MODEL_FILE, *([checkpoint / VOCAB_FILE] if task == "qa" else [])]
    _hash_files(weights, checkpoint, files)
    package = {"format": DIGEST_FORMAT, "weights": weights.hexdigest(), "settings": packaged_settings(params, task),
               "code": code or code_digest()}
    return Digests(weights.hexdigest(), hashlib.sha256(json.dumps(package, sort_keys=True).encode()).hexdigest())


# ---------------------------------------------------------------------------------------------------------------
# the registry, read without mlflow


def _search_server(uri: str, name: str, digest: str) -> Found | None | Unknown:
    import requests

    runs.bound_http_requests()
    headers, auth = {}, None
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        headers["Authorization"] = f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"
    elif os.environ.get("MLFLOW_TRACKING_USERNAME"):
        auth = (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ.get("MLFLOW_TRACKING_PASSWORD", ""))
    verify: bool | str = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or \
        os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() != "true"
    try:
        response = requests.get(f"{uri.rstrip('/')}{SEARCH_ENDPOINT}", headers=headers, auth=auth, verify=verify,
                                params={"filter": f"name='{name}' and tags.{DIGEST_TAG}='{digest}'",
                                        "max_results": 50}, timeout=runs.PROBE_TIMEOUT_S)
        if response.status_code == 404 and "RESOURCE_DOES_NOT_EXIST" in response.text:
            return None  # no registered model of that name yet
        if response.status_code != 200:
            return UNKNOWN
        versions = response.json().get("model_versions", [])
    except (requests.RequestException, ValueError):
        return UNKNOWN
    versions = [v for v in versions if v.get("current_stage") != DELETED_STAGE and v.get("version")]
    if not versions:
        return None
    newest = max(versions, key=lambda v: int(v["version"]))
    return Found(str(newest["version"]), {t["key"]: t.get("value", "") for t in newest.get("tags", [])})


def _search_sqlite(path: Path, name: str, digest: str) -> Found | None | Unknown:
    if not path.is_file():
        return None  # no store yet: nothing is registered
    try:
        with sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5) as db:
            row = db.execute(
                "SELECT v.version FROM model_versions v JOIN model_version_tags t "
                "ON t.name = v.name AND t.version = v.version "
                "WHERE v.name = ? AND v.current_stage != ? AND t.key = ? AND t.value = ? "
                "ORDER BY v.version DESC LIMIT 1", (name, DELETED_STAGE, DIGEST_TAG, digest)).fetchone()
            if row is None:
                return None
            tags = db.execute("SELECT key, value FROM model_version_tags WHERE name = ? AND version = ?",
                              (name, row[0])).fetchall()
    except sqlite3.Error:  # no registry tables yet (a store that never registered), locked, another schema
        return UNKNOWN
    return Found(str(row[0]), {k: v or "" for k, v in tags})


def find_version(uri: str, name: str, digest: str) -> Found | None | Unknown:
    """The newest version of `name` tagged with package digest `digest`; None when there is none; UNKNOWN when the
    store cannot be read this way."""
    if os.environ.get("MLFLOW_WORKSPACE") or os.environ.get("MLFLOW_ENABLE_WORKSPACES"):
        return UNKNOWN  # names are per workspace: let MLflow's client resolve it
    if uri.startswith(("http://", "https://")):
        return _search_server(uri, name, digest)
    if uri.startswith("sqlite:///"):
        return _search_sqlite(Path(uri.removeprefix("sqlite:///").split("?", 1)[0]), name, digest)
    return UNKNOWN


# ---------------------------------------------------------------------------------------------------------------
# the stage table's noop_check


def unchanged_summary(name: str, found: Found, digest: Digests) -> dict[str, Any]:
    tags = found.tags
    return {"model": name, "version": found.version, "unchanged": True,
            "promoted": tags.get("decision") == "promoted", "reason": tags.get("reason", ""),
            "compared_with": tags.get("compared_with") or None, "eval_data_digest": tags.get("eval_data_digest", ""),
            DIGEST_TAG: digest.package}


def nothing_new(params: Params, inputs: Mapping[str, Path], outputs: Mapping[str, Path],
                previous: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The stage summary when every model in register.models is registered already (None: run the stage).

    `previous` is the summary file as the last run left it: kept as it is when it names the same versions (so
    that dvc.lock does not change), else one saying which versions hold the models."""
    if not runs.enabled():
        return None  # the stage says why it cannot run
    cfg = params.section("register")
    uri = runs.tracking_uri()
    code = code_digest()
    summary: dict[str, Any] = {}
    for task in cfg.models:
        name = f"{cfg.model_prefix}-{task}"
        checkpoint = Path(inputs[task])
        if not (checkpoint / MODEL_FILE).is_file():
            return None  # a skipped task, or a broken input: the stage reports it
        digest = digests(params, task, checkpoint, code)
        found = find_version(uri, name, digest.package)
        if not isinstance(found, Found):
            return None
        summary[task] = unchanged_summary(name, found, digest)
    versions = {task: (s["model"], s["version"]) for task, s in summary.items()}
    said = ", ".join(f"{model} v{version}" for model, version in versions.values())
    print(f"register: nothing new to register: {said} already hold these models (same package digest); "
          "no run opened, champion left as it is", file=sys.stderr)
    if previous and all(isinstance(previous.get(task), Mapping) and
                        (previous[task].get("model"), str(previous[task].get("version"))) == versions[task]
                        for task in versions):
        return dict(previous)
    return {"stage": "register", **summary}
