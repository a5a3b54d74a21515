"""`stgt registry show|promote|rollback`, `stgt runs` and `stgt ui`: the tracking store from the command line."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn, Sequence

from stgt_pipeline.errors import StgtError
from stgt_pipeline.tracking import model_registry, runs

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _require_store() -> str:
    """The tracking URI; the embedded default must exist already (opening it would create an empty one)."""
    uri = runs.tracking_uri()
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        if not db.is_file():
            raise StgtError(f"no MLflow store at {db}: run a stage first, or set MLFLOW_TRACKING_URI")
    runs.check_reachable(uri)
    return uri


def _table(header: Sequence[str], rows: list[Sequence[Any]]) -> str:
    cells = [list(map(str, header))] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def _when(millis: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(millis / 1000)) if millis else "-"


# --------------------------------------------------------------------------------------------------------------
# registry


def _alias_order(alias: str) -> tuple[int, str]:
    return (0 if alias == model_registry.CHAMPION else 1 if alias == model_registry.CHALLENGER else 2, alias)


def _registry_show(args: argparse.Namespace) -> int:
    _require_store()
    client = model_registry.registry_client()
    names = [args.name] if args.name else [m.name for m in client.search_registered_models()]
    if not names:
        print(f"no registered models in {runs.redact(runs.tracking_uri())}")
        return 0
    for name in names:
        by_version: dict[str, list[str]] = {}
        for alias, version in model_registry.aliases(client, name).items():
            by_version.setdefault(version, []).append(alias)
        versions = sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version), reverse=True)
        print(f"model {name}: {len(versions)} version(s)")
        rows = [(f"v{v.version}", ",".join(sorted(by_version.get(v.version, []), key=_alias_order)) or "-",
                 _when(v.creation_timestamp), v.tags.get("decision", "-"), v.tags.get("previous_champion") or "-",
                 v.tags.get("rolled_back") or v.tags.get("reason", "")) for v in versions]
        print(_table(("version", "aliases", "created", "decision", "previous", "reason"), rows))
    return 0


def _registry_promote(args: argparse.Namespace) -> int:
    _require_store()
    version, previous = model_registry.promote(args.name, args.version, args.reason)
    print(f"{args.name}: champion is now v{version}" + (f" (was v{previous})" if previous else ""))
    return 0


def _registry_rollback(args: argparse.Namespace) -> int:
    _require_store()
    current, previous = model_registry.rollback(args.name, args.reason)
    print(f"{args.name}: champion moved back from v{current} to v{previous}")
    return 0


# --------------------------------------------------------------------------------------------------------------
# runs and UI


def _key_metrics(metrics: dict[str, float], limit: int = 6) -> str:
    shown = sorted(k for k in metrics if not k.startswith("system/"))
    return " ".join(f"{k}={metrics[k]:.4g}" for k in shown[:limit]) + (" ..." if len(shown) > limit else "")


def _runs(args: argparse.Namespace) -> int:
    uri = _require_store()
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    name = args.experiment or runs.experiment_name()
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        raise StgtError(f"no MLflow experiment {name!r} in {runs.redact(uri)}")
    # The latest stage run names its pipeline run, whoever created that (dvc, a `stgt` command, Kubeflow).
    latest = client.search_runs([experiment.experiment_id], "tags.`stgt.role` = 'stage'",
                                order_by=["attributes.start_time DESC"], max_results=1)
    if not latest:
        print(f"no stage runs in experiment {name!r}")
        return 0
    parent_id = latest[0].data.tags.get("mlflow.parentRunId")
    stages = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'",
                                order_by=["attributes.start_time ASC"]) if parent_id else latest
    if parent_id:
        parent = client.get_run(parent_id)
        tags = parent.data.tags
        print(f"pipeline run {parent.info.run_name}  {parent.info.status}  started {_when(parent.info.start_time)}  "
              f"id {parent_id}")
        print(f"  git {tags.get('git.sha', '?')[:12]} (dirty: {tags.get('git.dirty', '?')})  "
              f"params {tags.get('params_hash', '?')}")
    rows = []
    for run in stages:
        end = run.info.end_time or int(time.time() * 1000)
        detail = run.data.tags.get("error") or _key_metrics(run.data.metrics)
        rows.append((run.info.run_name, run.info.status, f"{(end - run.info.start_time) / 1000:.1f}", detail))
    print(_table(("stage", "status", "seconds", "metrics / error"), rows))
    return 0


def _ui(args: argparse.Namespace) -> NoReturn:
    uri = runs.tracking_uri()
    if not uri.startswith("sqlite:///"):
        raise StgtError(f"runs are on {runs.redact(uri)}: open that server in a browser "
                        "(`stgt ui` serves the embedded SQLite store)")
    _require_store()
    if args.host not in LOOPBACK:
        print(f"note: serving on {args.host}: anyone who can reach port {args.port} can read and change runs",
              file=sys.stderr)
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
               "--default-artifact-root", runs.artifact_location(uri),
               "--host", args.host, "--port", str(args.port), "--workers", "1"]
    print(f"MLflow UI on http://{args.host}:{args.port} (Ctrl+C stops it)", flush=True)
    # mlflow replaces this process, so signals reach it (and it stops its workers). Its job runner (7 processes)
    # serves GenAI jobs only: not needed to browse runs.
    os.execve(sys.executable, command, {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ})


def add_tracking_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("registry", help="registered models: show, promote a version, roll back the champion",
                       description="The MLflow model registry (aliases champion/challenger; decisions as version tags).")
    reg = p.add_subparsers(dest="registry_command", metavar="ACTION", required=True)
    name_help = "registered model name"

    q = reg.add_parser("show", help="models, versions, aliases and recorded decisions",
                       description="Registered models with their versions, aliases and the decisions recorded on them.")
    q.add_argument("--name", help=f"{name_help} (default: all)")
    q.set_defaults(func=_registry_show)

    q = reg.add_parser("promote", help="make VERSION the champion (records the previous one)",
                       description="Point the champion alias at VERSION; the replaced version is recorded for rollback.")
    q.add_argument("version", metavar="VERSION", help="model version number, as `stgt registry show` lists it")
    q.add_argument("--name", default=model_registry.DEFAULT_MODEL_NAME, help=f"{name_help} (default: %(default)s)")
    q.add_argument("--reason", default="manual promotion", help="recorded on the version (default: %(default)s)")
    q.set_defaults(func=_registry_promote)

    q = reg.add_parser("rollback", help="point champion back at the version it replaced",
                       description="Point the champion alias back at the version the current champion replaced.")
    q.add_argument("--name", default=model_registry.DEFAULT_MODEL_NAME, help=f"{name_help} (default: %(default)s)")
    q.add_argument("--reason", default="manual rollback", help="recorded on the version (default: %(default)s)")
    q.set_defaults(func=_registry_rollback)

    p = sub.add_parser("runs", help="the latest pipeline run and its stage runs (status, key metrics)",
                       description="Where MLflow tracking put the latest pipeline run.")
    p.add_argument("--experiment",
                   help=f"MLflow experiment (default: $MLFLOW_EXPERIMENT_NAME, else {runs.DEFAULT_EXPERIMENT})")
    p.set_defaults(func=_runs)

    p = sub.add_parser("ui", help="the MLflow UI on the embedded store (loopback only by default)",
                       description="Serve the MLflow UI for ./mlflow.db; Ctrl+C stops it.")
    p.add_argument("--port", type=int, default=5000, help="port to listen on (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.set_defaults(func=_ui)
