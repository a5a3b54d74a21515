"""MLflow tracking for every stage: one parent run per pipeline run, one nested run per stage.

Where runs go: `MLFLOW_TRACKING_URI`, else the embedded default `sqlite:///<project>/mlflow.db` with artifacts in
`<project>/mlartifacts/` (the project is `$DVC_ROOT` under dvc, so queued `dvc exp run`s working in temporary
copies still land in the user's store; else the current directory).

Which run a stage logs to (the first rule that applies):
1. `MLFLOW_RUN_ID` is set: KFP 2.17's MLflow plugin created this task's run, already nested under the pipeline
   run's parent, and closes it itself: the stage logs into that run instead of adding a third level.
2. `STGT_PARENT_RUN_ID` or `MLFLOW_PARENT_RUN_ID` is set (a wrapper or a first KFP task owns the parent: see
   open_parent_run / finish_parent_run below, used by stgt_pipeline.kfp.run.parent_run), or a run is active in this
   process (a notebook's): a nested run under it; the owner closes the parent.
3. Under `dvc repro` / `dvc exp run` (dvc sets `DVC_STAGE` for stage commands): the stages of one dvc invocation
   share a parent. `.stgt/parent_run` records it with the invocation's key (pid and start time of the dvc
   process, the nearest ancestor without `DVC_STAGE`); a stage with another key (a new repro) starts a new
   parent. Each stage closes the parent after it (FAILED when the stage failed) and the next one reopens it, so
   no parent is left RUNNING however dvc stops. Stages dvc skips as up to date get no run; a repro with nothing
   to run makes no parent.
4. Otherwise (one `stgt <stage>` command): a parent of its own, closed with the stage.

Tracking is off with `STGT_TRACKING=off`, and in ranks other than 0 (`RANK`, `LOCAL_RANK`; mlflow/mlflow#11782).
mlflow is imported only when a run starts: it costs seconds.

When the server fails (down, not an MLflow server, answering errors), a stage fails in seconds with one line naming
the server and what it answered (TrackingError): MLflow's HTTP retries are bounded (HTTP_LIMITS, unless the
environment sets them), a failure before the stage runs stops it there, and one while or after it runs is kept
until the stage is done (its outputs are written), then reported; nothing more is sent to that server meanwhile.
"""
from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
import re
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from stgt_pipeline.errors import StgtError
from stgt_pipeline.io.atomic import write_json
from stgt_pipeline.params import Params, params_hash

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from stgt_pipeline.stages import Stage

DEFAULT_EXPERIMENT = "stgt"
PROBE_TIMEOUT_S = 5.0
# MLflow's defaults retry a failing request 7 times with backoff factor 2 (about 4 minutes) and wait 120 s for an
# answer; a stage makes a dozen requests. These bound a dead or broken server to seconds a request. The names are
# mlflow.environment_variables' (3.17.2); a value already in the environment wins.
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}
# MLflow 3's UI opens an experiment in the GenAI view (traces, assistant) unless the experiment says what it is: the
# web app reads this tag (values of its ExperimentKind: "custom_model_development" is "Machine learning", the
# runs / models view; "genai_development" the GenAI one). An experiment already tagged keeps the kind a user chose.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
PARENT_RECORD = Path(".stgt") / "parent_run"
MANIFEST_NAME = "manifest.parquet"  # stgt_pipeline.io.manifest.MANIFEST_NAME, without importing pandas and pyarrow
# MLflow's dataset digest column holds 36 characters: a DVC directory md5 ("<32 hex>.dir") fits exactly.
DIGEST_CHARS = 32

# "token"/"key"/"auth" as words only: num_query_tokens, tokenizer and keyframes are ordinary params.
_SECRET_KEY = re.compile(r"password|passwd|secret|credential|(?:token|key|auth)(?![a-z])", re.IGNORECASE)
_SECRET_VALUE = re.compile(r"^(?:AKIA|ASIA)[A-Z0-9]{16}$|^(?:ghp|gho|github_pat|xox[abp]|sk)[-_]|^Bearer\s", re.IGNORECASE)
_URL_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
_INVALID_METRIC_CHARS = re.compile(r"[^/\w.\- :]")


# --------------------------------------------------------------------------------------------------------------
# settings


def enabled() -> bool:
    if os.environ.get("STGT_TRACKING", "on").strip().lower() in ("off", "0", "false", "no"):
        return False
    return all(os.environ.get(var, "0") in ("", "0") for var in ("RANK", "LOCAL_RANK"))


def project_dir() -> Path:
    return Path(os.environ.get("DVC_ROOT") or ".").resolve()


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_dir() / 'mlflow.db'}"


def experiment_name() -> str:
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


def artifact_location(uri: str) -> str | None:
    """Artifacts of an in-process SQLite store go beside the database (MLflow would write ./mlruns instead)."""
    if not uri.startswith("sqlite:///"):
        return None  # a server decides (--default-artifact-root / --artifacts-destination)
    return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()


def redact(text: str) -> str:
    """Drop the user:password part of URLs (tracking URIs and params may carry it)."""
    return _URL_USERINFO.sub("***@", text)


def bound_http_requests() -> None:
    """MLflow's retries and timeout for the requests that follow, unless the environment sets them (HTTP_LIMITS)."""
    for name, value in HTTP_LIMITS.items():
        os.environ.setdefault(name, value)


def check_reachable(uri: str) -> None:
    """Fail in seconds, naming the server, rather than in MLflow's retry loop (minutes with its default retries).
    For a server, also bounds the retries of the MLflow requests that follow (bound_http_requests)."""
    if not uri.startswith(("http://", "https://")):
        return
    bound_http_requests()
    import requests

    where = f"MLflow tracking server at {redact(uri)}"
    try:
        response = requests.get(f"{uri.rstrip('/')}/health", timeout=PROBE_TIMEOUT_S)
    except requests.Timeout:
        raise StgtError(f"{where} is unreachable: no answer within {PROBE_TIMEOUT_S:g}s") from None
    except requests.RequestException as exc:
        reason = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(exc))
        raise StgtError(f"{where} is unreachable: {reason.group(1) if reason else type(exc).__name__}") from None
    if response.status_code == 403:
        # MLflow >= 3.5 only answers Host headers it allows; a pod reaching it by service name needs the flag.
        raise StgtError(f"{where} refused this client (HTTP 403): start it with --allowed-hosts naming that host")
    if response.status_code >= 500:
        raise StgtError(f"{where} is unreachable: /health answered HTTP {response.status_code}")


# --------------------------------------------------------------------------------------------------------------
# what a run records


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; empty mappings stay values."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def loggable_params(sections: Mapping[str, Any]) -> dict[str, str]:
    """Dotted params as text, without anything that looks like a credential (by key or by value)."""
    params = {}
    for key, value in flatten(sections).items():
        text = value if isinstance(value, str) else json.dumps(value)
        if not (_SECRET_KEY.search(key) or _SECRET_VALUE.search(text)):
            params[key] = redact(text)
    return params


def numeric_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of a stage summary (booleans as 0/1), by dotted key."""
    return {k: float(v) for k, v in flatten(summary).items() if isinstance(v, (int, float))}


def metric_name(key: str) -> str:
    """MLflow rejects metric names outside [/\w.\- :]: "R@1" is logged as "R_1"."""
    return _INVALID_METRIC_CHARS.sub("_", key)


def git_state(cwd: Path) -> tuple[str, str]:
    """(commit sha, "true"/"false" dirty flag); ("unknown", "unknown") outside a git checkout (a container)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=20).stdout

    try:
        # Untracked files are skipped: data folders are git-ignored, and scanning them costs time.
        sha = git("rev-parse", "HEAD").strip()
        return sha, "true" if git("status", "--porcelain", "--untracked-files=no").strip() else "false"
    except (OSError, subprocess.SubprocessError):
        return "unknown", "unknown"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _dvc_lock_outs(project: Path) -> dict[str, str]:
    import yaml

    lock_path = project / "dvc.lock"
    lock = yaml.safe_load(lock_path.read_text(encoding="utf-8")) if lock_path.is_file() else None
    stages = (lock or {}).get("stages", {})
    return {out["path"]: out["md5"] for stage in stages.values() for out in stage.get("outs", []) if "md5" in out}


def input_digests(inputs: Mapping[str, Path], project: Path) -> dict[str, str]:
    """Per input: the md5 dvc.lock records for it, else the sha256 of the manifest it holds.

    dvc.lock is read only under dvc: dvc rewrites it after each stage, so the producer's `outs` entry is the
    content this stage reads; outside dvc the lock may describe an older version of the data.
    """
    lock = _dvc_lock_outs(project) if os.environ.get("DVC_STAGE") else {}
    digests = {}
    for key, path in inputs.items():
        relative = os.path.relpath(Path(path).resolve(), project)
        if relative in lock:
            digests[key] = lock[relative]
        elif (Path(path) / MANIFEST_NAME).is_file():
            digests[key] = sha256_file(Path(path) / MANIFEST_NAME)[:DIGEST_CHARS]
    return digests


def combined_digest(digests: Mapping[str, str]) -> str:
    """One digest for all inputs: the input's own when there is one."""
    if len(digests) == 1:
        return next(iter(digests.values()))
    return hashlib.sha256(json.dumps(dict(sorted(digests.items()))).encode()).hexdigest()[:DIGEST_CHARS]


def one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return redact(f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": "))[:500]


# --------------------------------------------------------------------------------------------------------------
# tracking failures as one line


class TrackingError(StgtError):
    """A request to the tracking store failed: one line naming the server and what it answered."""


# Where MLflow's messages say which status a request got: verify_rest_response ("failed with error code 404 != 200"),
# urllib3 once retries ran out ("too many 503 error responses"), requests' raise_for_status ("503 Server Error").
_HTTP_STATUS = (re.compile(r"error code (\d{3})\b"), re.compile(r"too many (\d{3}) error responses"),
                re.compile(r"\b(\d{3}) (?:Client|Server) Error\b"))
_ENDPOINT = re.compile(r"(/(?:ajax-)?api/[\w./-]+)")
_STATUS_HINTS = {401: "check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD",
                 403: "this client is not allowed (credentials, or the server's --allowed-hosts)",
                 404: "is it an MLflow tracking server, and the URI its root?"}


def is_tracking_failure(exc: BaseException) -> bool:
    """An MLflow client error (mlflow is not imported for the test: such an error means it is loaded)."""
    mlflow_exceptions = sys.modules.get("mlflow.exceptions")
    return mlflow_exceptions is not None and isinstance(exc, mlflow_exceptions.MlflowException)


def _is_request_failure(exc: BaseException) -> bool:
    """What our own calls to the tracking server raise when it fails: MLflow's errors, or requests' (artifacts)."""
    requests_exceptions = sys.modules.get("requests.exceptions")
    return is_tracking_failure(exc) or (requests_exceptions is not None
                                        and isinstance(exc, requests_exceptions.RequestException))


def _http_status(exc: BaseException, text: str) -> int | None:
    response = getattr(exc, "response", None)  # requests.HTTPError
    if getattr(response, "status_code", None):
        return int(response.status_code)
    for pattern in _HTTP_STATUS:
        found = pattern.search(text)
        if found:
            return int(found.group(1))
    if type(exc).__name__ == "RestException":  # the server's JSON error: its code maps to the status it sent
        return int(exc.get_http_status_code())
    return None


def describe_failure(exc: BaseException) -> str:
    """What a failed tracking request met, in a few words, e.g. 'answered HTTP 503 on /api/2.0/mlflow/runs/create'."""
    text = redact(str(exc))
    endpoint = _ENDPOINT.search(text)
    on = f" on {endpoint.group(1)}" if endpoint else ""
    status = _http_status(exc, text)
    if status is not None:
        said = text.splitlines()[0][:200] if type(exc).__name__ == "RestException" else ""
        hint = _STATUS_HINTS.get(status)
        return f"answered HTTP {status}{on}" + (f" ({said})" if said else "") + (f": {hint}" if hint else "")
    if "Connection refused" in text or "Failed to establish a new connection" in text:
        return f"is unreachable (connection refused){on}"
    if "timed out" in text or "timeout" in text.lower():
        return f"did not answer within {os.environ.get('MLFLOW_HTTP_REQUEST_TIMEOUT', '?')}s{on}"
    if "Connection aborted" in text or "RemoteDisconnected" in text or "Connection reset" in text:
        return f"closed the connection without an answer{on}"
    lines = text.strip().splitlines()
    return f"failed{on}: {lines[0][:200] if lines else type(exc).__name__}"


@contextlib.contextmanager
def failures_as_one_line(uri: str, outcome: str = "") -> Iterator[None]:
    """Requests to the tracking store inside the block: a failure becomes one TrackingError line."""
    try:
        yield
    except Exception as exc:
        if not _is_request_failure(exc):
            raise
        raise tracking_error(exc, uri, outcome) from None


def tracking_error(exc: BaseException, uri: str, outcome: str = "") -> TrackingError:
    """One line: what the failure means (`outcome`, e.g. "validate did not run"), the server, what it answered."""
    where = f"MLflow tracking server at {redact(uri)}" if uri.startswith(("http://", "https://")) else \
        f"MLflow tracking store {redact(uri)}"
    return TrackingError((f"{outcome}: " if outcome else "") + f"{where} {describe_failure(exc)}")


# --------------------------------------------------------------------------------------------------------------
# the stage-facing API


class Tracker:
    """What a stage logs through. This base does nothing (tracking off, or a rank other than 0)."""

    run_id: str | None = None

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def log_summary(self, summary: Mapping[str, Any], summary_file: str | Path) -> None:
        """The stage's summary numbers as metrics and its JSON file as an artifact."""

    def log_step_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Per-step metrics of a loop (training curves): buffered and sent in batches (flush), so that tracking
        costs the loop a request every STEP_METRICS_FLUSH_S seconds at most, not one per step."""

    def flush(self) -> None:
        """Send the buffered step metrics now (stage_run does when the stage ends, however it ends)."""


# Buffered step metrics are sent when this many seconds passed since the last send, or when a batch is full.
STEP_METRICS_FLUSH_S = 10.0
METRICS_PER_BATCH = 1000  # MLflow's log_batch limit


class MlflowTracker(Tracker):
    """Logs to one MLflow run. The first failed request is kept (`failure`) and nothing more is sent: the stage
    goes on (its work is worth more than its log) and stage_run reports the failure once the stage is done."""

    def __init__(self, client: MlflowClient, run_id: str, uri: str = "") -> None:
        self.client = client
        self.run_id = run_id
        self.uri = uri
        self.failure: BaseException | None = None
        self._pending: list[Any] = []  # mlflow.entities.Metric, buffered by log_step_metrics
        self._flushed_at = time.monotonic()

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        """`fn(*args, **kwargs)` unless a request failed already; a tracking failure is kept, not raised."""
        if self.failure is not None:
            return
        try:
            fn(*args, **kwargs)
        except Exception as exc:
            if not _is_request_failure(exc):
                raise
            self.failure = exc

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.call(self.client.log_batch, self.run_id, metrics=[Metric(metric_name(k), float(v), now, step or 0)
                                                                 for k, v in metrics.items()])

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        self.call(self.client.log_batch, self.run_id,
                  params=[Param(k, v) for k, v in loggable_params(params).items()])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.call(self.client.log_batch, self.run_id,
                  tags=[RunTag(k, redact(str(v))) for k, v in tags.items() if v is not None])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if Path(path).is_dir():
            self.call(self.client.log_artifacts, self.run_id, str(path), artifact_path)
        else:
            self.call(self.client.log_artifact, self.run_id, str(path), artifact_path)

    def log_summary(self, summary: Mapping[str, Any], summary_file: str | Path) -> None:
        self.log_metrics(numeric_metrics(summary))
        self.log_artifact(summary_file)

    def log_step_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending.extend(Metric(metric_name(k), float(v), now, int(step)) for k, v in metrics.items())
        if len(self._pending) >= METRICS_PER_BATCH or time.monotonic() - self._flushed_at >= STEP_METRICS_FLUSH_S:
            self.flush()

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        self._flushed_at = time.monotonic()
        for start in range(0, len(pending), METRICS_PER_BATCH):
            self.call(self.client.log_batch, self.run_id, metrics=pending[start:start + METRICS_PER_BATCH])


_CURRENT: contextvars.ContextVar[Tracker] = contextvars.ContextVar("stgt_tracker", default=Tracker())


def current() -> Tracker:
    """The running stage's tracker, for code deep inside a stage (a training loop logging per-step metrics)."""
    return _CURRENT.get()


# --------------------------------------------------------------------------------------------------------------
# runs


@dataclass
class Parent:
    run_id: str
    owned: bool  # created or reopened by this process, so closed by it after the stage


def dvc_invocation() -> str:
    """Key of the dvc process running this stage: the nearest ancestor without DVC_STAGE, which dvc sets for
    stage commands only (there may be a shell in between)."""
    import psutil

    for proc in psutil.Process().parents():
        try:
            if "DVC_STAGE" in proc.environ():
                continue
        except psutil.Error:
            pass  # unreadable environment: take this ancestor
        return f"{proc.pid}:{proc.create_time():.3f}"
    return f"{os.getpid()}:orphan"  # no ancestor at all: a parent of its own


def experiment_id(client: MlflowClient, uri: str) -> str:
    """The experiment the runs go to, created (as a model-training experiment: EXPERIMENT_KIND) when missing."""
    from mlflow.exceptions import MlflowException

    if os.environ.get("MLFLOW_EXPERIMENT_ID"):
        return os.environ["MLFLOW_EXPERIMENT_ID"]
    name = experiment_name()
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location(uri), tags=EXPERIMENT_KIND)
        except MlflowException:  # created meanwhile by a parallel task
            experiment = client.get_experiment_by_name(name)
    if experiment is None or experiment.lifecycle_stage != "active":
        raise StgtError(f"MLflow experiment {name!r} is deleted: restore it in the UI or set MLFLOW_EXPERIMENT_NAME")
    if not any(key in experiment.tags for key in EXPERIMENT_KIND):  # made before the tag (or by someone else)
        for key, value in EXPERIMENT_KIND.items():
            client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


def _read_parent_record() -> dict[str, str]:
    try:
        return json.loads(PARENT_RECORD.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _dvc_parent(client: MlflowClient, exp_id: str, uri: str, name: str, tags: dict[str, str]) -> Parent:
    from mlflow.exceptions import MlflowException

    key = {"invocation": dvc_invocation(), "experiment_id": exp_id,
           "store": hashlib.sha256(uri.encode()).hexdigest()[:16]}  # the URI itself may hold a password
    record = _read_parent_record()
    if record and all(record.get(k) == v for k, v in key.items()):
        try:
            if client.get_run(record["run_id"]).info.lifecycle_stage == "active":
                client.update_run(record["run_id"], status="RUNNING")
                return Parent(record["run_id"], owned=True)
        except MlflowException:
            pass  # deleted meanwhile: start a new parent
    run = client.create_run(exp_id, run_name=name,
                            tags={**tags, "pipeline.kind": "dvc", "dvc.invocation": key["invocation"]})
    write_json(PARENT_RECORD, {**key, "run_id": run.info.run_id})
    return Parent(run.info.run_id, owned=True)


def resolve_parent(client: MlflowClient, exp_id: str, uri: str, stage_name: str, tags: dict[str, str]) -> Parent:
    """Rules 2-4 of the module docstring."""
    import mlflow

    explicit = os.environ.get("STGT_PARENT_RUN_ID") or os.environ.get("MLFLOW_PARENT_RUN_ID")
    active = mlflow.active_run()
    if explicit or active:
        return Parent(explicit or active.info.run_id, owned=False)
    at = f" @ {tags['git.sha'][:8]}" if tags["git.sha"] != "unknown" else ""
    if os.environ.get("DVC_STAGE"):
        return _dvc_parent(client, exp_id, uri, f"dvc repro{at}", tags)
    run = client.create_run(exp_id, run_name=f"stgt {stage_name}{at}", tags={**tags, "pipeline.kind": "stgt"})
    return Parent(run.info.run_id, owned=True)


def _report_dirs(stage: Stage, outputs: Mapping[str, Path], failed: bool) -> list[tuple[Path, str]]:
    """Stage outputs under reports/ (HTML reports, plots), logged whole under the output's name. A failing
    stage keeps its evidence in `<output>.failed` (validate does), which is logged instead."""
    found = []
    for key, declared in stage.outputs.items():
        path = Path(outputs[key])
        if failed:
            path, key = path.with_name(f"{path.name}.failed"), f"{key}.failed"
        if declared.startswith("reports/") and path.is_dir():
            found.append((path, key))
    return found


def _is_nested(value: Any) -> bool:
    return hasattr(value, "__len__") and not isinstance(value, str)


def _log_datasets(inputs: Mapping[str, Path], digests: Mapping[str, str]) -> None:
    """Each input holding a manifest as an MLflow dataset, its digest the same as the run's data_digest tag."""
    import mlflow
    import pandas as pd

    for key, path in inputs.items():
        manifest = Path(path) / MANIFEST_NAME
        if not manifest.is_file():
            continue
        table = pd.read_parquet(manifest)
        # MLflow infers a schema from the frame; the nested columns (captions, QA pairs) are left out of it.
        flat = table[[c for c in table.columns if not table[c].map(_is_nested).any()]]
        with warnings.catch_warnings():  # hints about ambiguous local sources and integer columns: noise here
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_pandas(flat, source=str(manifest), name=Path(path).name, digest=digests[key])
            mlflow.log_input(dataset, context=key)


def _run_tags(stage: Stage, params: Params, inputs: Mapping[str, Path]) -> tuple[dict, dict, dict[str, str]]:
    """(tags of the pipeline run, tags of the stage run, the inputs' data digests)."""
    project = project_dir()
    sha, dirty = git_state(project)
    common = {"git.sha": sha, "git.dirty": dirty}
    if sha != "unknown":
        common["mlflow.source.git.commit"] = sha
    if os.environ.get("KFP_RUN_ID"):
        common["kfp.run_id"] = os.environ["KFP_RUN_ID"]
    digests = input_digests(inputs, project)
    stage_tags = {**common, "stgt.role": "stage", "stage": stage.name,
                  "params_hash": params_hash(params, list(stage.params)),
                  **{f"data_digest.{k}": v for k, v in digests.items()}}
    if digests:
        stage_tags["data_digest"] = combined_digest(digests)
    return {**common, "stgt.role": "pipeline", "params_hash": params_hash(params)}, stage_tags, digests


def _create_stage_run(client: MlflowClient, uri: str, stage: Stage, pipeline_tags: dict,
                      stage_tags: dict) -> tuple[str, Parent | None]:
    """The stage's run id and its parent (None when an orchestrator made the run: rule 1)."""
    from mlflow.entities import RunTag
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    if os.environ.get("MLFLOW_RUN_ID"):
        client.log_batch(os.environ["MLFLOW_RUN_ID"], tags=[RunTag(k, v) for k, v in stage_tags.items()])
        return os.environ["MLFLOW_RUN_ID"], None
    exp_id = experiment_id(client, uri)
    parent = resolve_parent(client, exp_id, uri, stage.name, pipeline_tags)
    # Created here rather than by start_run(parent_run_id=...), which an MLFLOW_RUN_ID left in the environment
    # would hijack (mlflow/mlflow#15713).
    run = client.create_run(exp_id, run_name=stage.name, tags={**stage_tags, MLFLOW_PARENT_RUN_ID: parent.run_id})
    return run.info.run_id, parent


def _open_stage_run(client: MlflowClient, uri: str, stage: Stage, params: Params,
                    inputs: Mapping[str, Path]) -> tuple[MlflowTracker, Parent | None]:
    """Create (or join) the stage's run and its parent, start it as the fluent run, log params and datasets.
    When the server fails, raises TrackingError (having ended the fluent run if it had started): the stage has
    not run."""
    import mlflow

    with failures_as_one_line(uri, f"{stage.name} did not run"):
        pipeline_tags, stage_tags, digests = _run_tags(stage, params, inputs)
        run_id, parent = _create_stage_run(client, uri, stage, pipeline_tags, stage_tags)
        # The fluent run makes mlflow.log_* and log_model inside the stage land here too; system metrics for stages
        # that train (they ask for a GPU), else as MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING says. GPU metrics
        # (system/gpu_*) come with them where a GPU is present: MLflow's monitor reads it through nvidia-ml-py (in
        # the lock) and leaves it out, silently, where NVML finds no GPU.
        mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None,
                         log_system_metrics=True if stage.resources.gpus > 0 else None)
    tracker = MlflowTracker(client, run_id, uri)
    dumped = params.dump()
    tracker.log_params({section: dumped[section] for section in stage.params})
    tracker.call(_log_datasets, inputs, digests)
    if tracker.failure is not None:
        failure = tracking_error(tracker.failure, uri, f"{stage.name} did not run")
        _close_stage_run(tracker, parent, "FAILED")
        raise failure
    return tracker, parent


def _record_error(tracker: MlflowTracker, parent: Parent | None, stage: Stage, exc: BaseException) -> None:
    tracker.set_tags({"error": one_line(exc)})
    if parent and parent.owned:
        tracker.call(tracker.client.set_tag, parent.run_id, "error", f"{stage.name}: {one_line(exc)}")


def _close_stage_run(tracker: MlflowTracker, parent: Parent | None, status: str) -> None:
    """End the fluent run and close a parent this process owns; after a failed request only the fluent run is
    ended (so that no run stays active in this process), with its one bounded attempt to tell the server."""
    import mlflow

    if tracker.failure is not None:
        with contextlib.suppress(Exception):
            mlflow.end_run(status)
        return
    tracker.call(mlflow.end_run, status)
    if parent and parent.owned:
        tracker.call(tracker.client.set_terminated, parent.run_id, status)


@contextlib.contextmanager
def stage_run(stage: Stage, params: Params, inputs: Mapping[str, Path], outputs: Mapping[str, Path]) -> Iterator[Tracker]:
    """A tracked stage: its run is open (and current()) inside the block, closed FINISHED or FAILED after.

    A tracking failure is one TrackingError line: raised at once before the stage runs; kept while and after it
    runs, and raised when the block is done (unless the stage itself failed: its own error is the one to read).
    """
    if not enabled():
        yield Tracker()
        return
    uri = tracking_uri()
    check_reachable(uri)
    import mlflow
    from mlflow import MlflowClient

    uri_from_env = "MLFLOW_TRACKING_URI" in os.environ
    mlflow.set_tracking_uri(uri)  # for the fluent run below; it also exports MLFLOW_TRACKING_URI, undone after
    try:
        tracker, parent = _open_stage_run(MlflowClient(uri), uri, stage, params, inputs)
    except BaseException:
        if not uri_from_env:
            mlflow.set_tracking_uri(None)
        raise
    token = _CURRENT.set(tracker)
    status = "FAILED"
    try:
        yield tracker
        status = "FINISHED"
    except BaseException as exc:
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        if is_tracking_failure(exc):  # the stage's own MLflow calls (register's model logging)
            tracker.failure = tracker.failure or exc
            raise tracking_error(exc, uri, f"{stage.name} failed") from None
        _record_error(tracker, parent, stage, exc)
        raise
    finally:
        _CURRENT.reset(token)
        tracker.flush()  # the curves up to the end (or the failure)
        for path, name in _report_dirs(stage, outputs, failed=status != "FINISHED"):
            tracker.log_artifact(path, name)
        _close_stage_run(tracker, parent, status)
        if not uri_from_env:
            mlflow.set_tracking_uri(None)
    if tracker.failure is not None:
        raise tracking_error(tracker.failure, uri, f"{stage.name}'s outputs are written, but its MLflow run "
                                                   f"{tracker.run_id} is incomplete")


# --------------------------------------------------------------------------------------------------------------
# the parent run of a Kubeflow pipeline run (without KFP's MLflow plugin): opened by the pipeline's first task,
# found by the stage tasks through its `kfp.run_id` tag, closed by the exit task

PARAMS_PER_BATCH = 100  # MLflow's log_batch limit


def _plugin_owns_runs() -> bool:
    """KFP's MLflow plugin made this task's run (rule 1): it also made and closes the parent."""
    return bool(os.environ.get("MLFLOW_RUN_ID"))


def _client() -> tuple[MlflowClient, str]:
    from mlflow import MlflowClient

    uri = tracking_uri()
    check_reachable(uri)
    return MlflowClient(uri), uri


def open_parent_run(name: str, kfp_run_id: str, params: Params) -> str:
    """Create the pipeline run's parent; returns its id, "" when tracking is off or the plugin owns the runs."""
    if not enabled() or _plugin_owns_runs():
        return ""
    from mlflow.entities import Param

    client, uri = _client()
    sha, dirty = git_state(project_dir())
    tags = {"git.sha": sha, "git.dirty": dirty, "stgt.role": "pipeline", "pipeline.kind": "kfp",
            "kfp.run_id": kfp_run_id, "params_hash": params_hash(params)}
    with failures_as_one_line(uri, "the pipeline's parent run was not opened"):
        run = client.create_run(experiment_id(client, uri), run_name=name, tags=tags)
        logged = [Param(k, v) for k, v in loggable_params(params.dump()).items()]
        for start in range(0, len(logged), PARAMS_PER_BATCH):
            client.log_batch(run.info.run_id, params=logged[start:start + PARAMS_PER_BATCH])
    return run.info.run_id


def find_parent_run(kfp_run_id: str) -> str:
    """The id of the parent open_parent_run made for this Kubeflow run; "" when there is none."""
    if not enabled() or _plugin_owns_runs() or not kfp_run_id:
        return ""
    client, uri = _client()
    with failures_as_one_line(uri, "the pipeline's parent run was not found"):
        found = client.search_runs(
            [experiment_id(client, uri)], max_results=1,
            filter_string=f"tags.`kfp.run_id` = '{kfp_run_id}' and tags.`stgt.role` = 'pipeline'")
    return found[0].info.run_id if found else ""


def run_status(state: str) -> str:
    """A Kubeflow final state (SUCCEEDED, FAILED, CANCELED, ...) as an MLflow run status."""
    state = state.upper()
    if state in ("SUCCEEDED", "SKIPPED", "CACHED"):
        return "FINISHED"
    return "KILLED" if state.startswith("CANCEL") else "FAILED"


def finish_parent_run(run_id: str, status: Any) -> str:
    """Close the parent as the pipeline ended; `status` is a dsl.PipelineTaskFinalStatus or its state. Returns
    the MLflow status set ("" when there was nothing to close)."""
    if not enabled() or _plugin_owns_runs() or not run_id:
        return ""
    client, uri = _client()
    state = str(getattr(status, "state", status))
    result = run_status(state)
    message = getattr(status, "error_message", "") or ""
    with failures_as_one_line(uri, f"the pipeline's parent run {run_id} was not closed"):
        if result != "FINISHED":
            client.set_tag(run_id, "kfp.state", state)
            if message:
                client.set_tag(run_id, "error", redact(message.strip().splitlines()[0])[:500])
        client.set_terminated(run_id, result)
    return result
