"""The MLflow model registry with aliases: gate a new version against the champion, promote, roll back.

Registry stages are deprecated (since MLflow 2.9); `champion` and `challenger` are aliases. The registry keeps
no alias history (mlflow/mlflow#2169), so every decision is written as tags on the version it concerns:
`decision`, `reason`, `previous_champion` (the version a promotion replaced: what rollback returns to),
`compared_with`, metric values and deltas, and the run ids involved.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

from stgt_pipeline.errors import StgtError
from stgt_pipeline.tracking import runs

if TYPE_CHECKING:
    from mlflow import MlflowClient

CHAMPION = "champion"
CHALLENGER = "challenger"
DEFAULT_MODEL_NAME = "stgt-retrieval"  # what `register` names the retrieval model (register.model_prefix + "-retrieval")


@dataclass
class Decision:
    version: str
    promoted: bool
    reason: str
    compared_with: str | None  # the champion's version at gating time, None for the first model
    deltas: dict[str, float] = field(default_factory=dict)


def registry_client() -> MlflowClient:
    """A client on the tracking store (the registry lives there too); the same URI rules as the stages."""
    uri = runs.tracking_uri()
    runs.check_reachable(uri)
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(uri)
    return MlflowClient(uri)


def aliases(client: MlflowClient, name: str) -> dict[str, str]:
    from mlflow.exceptions import MlflowException

    try:
        return dict(client.get_registered_model(name).aliases)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise StgtError(f"no registered model named {name!r} (see `stgt registry show`)") from None
        raise


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _set_version_tags(client: MlflowClient, name: str, version: str, tags: Mapping[str, Any]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))


def find_version(client: MlflowClient, name: str, tags: Mapping[str, str]) -> Any | None:
    """The newest version of `name` carrying all of `tags` (key = value), None when there is none."""
    if any("'" in f"{k}{v}" for k, v in tags.items()) or "'" in name:
        raise StgtError(f"cannot search the registry for {name!r} with tags {dict(tags)}: quote in a name or value")
    where = " and ".join([f"name = '{name}'", *(f"tags.`{k}` = '{v}'" for k, v in tags.items())])
    versions = client.search_model_versions(where, max_results=50)
    return max(versions, key=lambda v: int(v.version)) if versions else None


def _active_run_id() -> str:
    import mlflow

    run = mlflow.active_run()
    return run.info.run_id if run else ""


def register_and_gate(
    model_uri: str,
    name: str,
    metrics: Mapping[str, float],
    gate_metric: str,
    margin: float,
    rescore_champion: Callable[[str], Mapping[str, float]],
    higher_is_better: bool = True,
    version_tags: Mapping[str, str] | None = None,
) -> Decision:
    """Register `model_uri` as a new version of `name` (alias `challenger`) and promote it to `champion` when its
    `gate_metric` beats the champion's by more than `margin`; ties keep the champion. The champion is re-scored
    by `rescore_champion(champion model URI)` on the same evaluation snapshot the challenger's `metrics` came
    from, never compared with numbers from another dataset. The first model of a name is promoted.
    `version_tags` (what identifies the model, e.g. its package digest) are written last, once the decision is
    recorded and the alias moved: a version that carries them has been gated."""
    import mlflow

    if gate_metric not in metrics:
        raise StgtError(f"gate metric {gate_metric!r} is not among the challenger's metrics {sorted(metrics)}")
    client = registry_client()
    version = mlflow.register_model(model_uri, name).version
    client.set_registered_model_alias(name, CHALLENGER, version)
    champion = aliases(client, name).get(CHAMPION)
    tags: dict[str, Any] = {f"challenger.{k}": v for k, v in metrics.items()}
    if champion is None:
        decision = Decision(version, True, "first model: no champion to beat", None)
    else:
        scores = dict(rescore_champion(f"models:/{name}/{champion}"))
        if gate_metric not in scores:
            raise StgtError(f"re-scoring champion v{champion} gave no {gate_metric!r} (got {sorted(scores)})")
        deltas = {k: float(metrics[k]) - float(scores[k]) for k in metrics if k in scores}
        gain = deltas[gate_metric] if higher_is_better else -deltas[gate_metric]
        promoted = gain > margin
        reason = (f"{gate_metric} {metrics[gate_metric]:.4g} vs champion v{champion} {scores[gate_metric]:.4g}: "
                  f"gain {gain:+.4g} {'beats' if promoted else 'does not beat'} the margin {margin:g}")
        decision = Decision(version, promoted, reason, champion, deltas)
        tags.update({f"champion.{k}": v for k, v in scores.items()})
        tags.update({f"delta.{k}": v for k, v in deltas.items()})
    tags.update({
        "decision": "promoted" if decision.promoted else "rejected",
        "decided_by": "gate",
        "reason": decision.reason,
        "gate_metric": gate_metric,
        "gate_margin": margin,
        "compared_with": champion or "",
        "source_run_id": client.get_model_version(name, version).run_id or "",
        "gate_run_id": _active_run_id(),
        "decided_at": _now(),
    })
    if decision.promoted:
        tags["previous_champion"] = champion or ""
    _set_version_tags(client, name, version, tags)
    if decision.promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
    _set_version_tags(client, name, version, version_tags or {})
    return decision


def promote(name: str, version: str | int, reason: str) -> tuple[str, str | None]:
    """Point `champion` at `version` ("3" or "v3", as `stgt registry show` prints it); returns it and the version
    it replaced."""
    from mlflow.exceptions import MlflowException

    version = str(version).removeprefix("v")
    client = registry_client()
    previous = aliases(client, name).get(CHAMPION)
    if previous == version:
        raise StgtError(f"{name} v{version} is already the champion")
    try:
        client.get_model_version(name, version)
    except MlflowException:
        raise StgtError(f"{name} has no version {version} (see `stgt registry show --name {name}`)") from None
    client.set_registered_model_alias(name, CHAMPION, version)
    _set_version_tags(client, name, version, {
        "decision": "promoted", "decided_by": "manual", "reason": reason, "previous_champion": previous or "",
        "compared_with": previous or "", "gate_run_id": _active_run_id(), "decided_at": _now(),
    })
    return version, previous


def rollback(name: str, reason: str) -> tuple[str, str]:
    """Point `champion` back at the version the current champion replaced; returns (from, to)."""
    client = registry_client()
    current = aliases(client, name).get(CHAMPION)
    if current is None:
        raise StgtError(f"{name} has no champion to roll back")
    previous = client.get_model_version(name, current).tags.get("previous_champion")
    if not previous:
        raise StgtError(f"{name} v{current} records no previous champion: nothing to roll back to")
    client.set_registered_model_alias(name, CHAMPION, previous)
    _set_version_tags(client, name, current, {"rolled_back": f"champion moved back to v{previous} at {_now()}: {reason}"})
    _set_version_tags(client, name, previous, {"restored_from": current, "restored_at": _now()})
    return current, previous
