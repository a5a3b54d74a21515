"""The registered models a user points at: `models:/<name>@<alias>` or `models:/<name>/<version>`, resolved to
one registry version (what an index records) and loaded as the pyfunc the register stage logged."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from stgt_pipeline.errors import StgtError
from stgt_pipeline.tracking import model_registry, runs

DEFAULT_RETRIEVAL = "models:/stgt-retrieval@champion"
DEFAULT_QA = "models:/stgt-qa@champion"
_REGISTERED = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))")


@dataclass(frozen=True)
class ModelRef:
    uri: str  # as the user gave it
    name: str
    version: str
    run_id: str

    def as_dict(self) -> dict[str, str]:
        return {"uri": self.uri, "name": self.name, "version": self.version, "run_id": self.run_id}

    @property
    def pinned_uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def resolve(uri: str) -> ModelRef:
    """The registry version behind `uri` (an alias moves; a version does not)."""
    match = _REGISTERED.fullmatch(uri.strip())
    if not match:
        raise StgtError(f"model {uri!r}: expected models:/<name>@<alias> or models:/<name>/<version>")
    from mlflow.exceptions import MlflowException

    client = model_registry.registry_client()
    name = match["name"]
    try:
        version = (client.get_model_version_by_alias(name, match["alias"]) if match["alias"]
                   else client.get_model_version(name, match["version"]))
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            raise StgtError(f"model {uri!r} not found in the registry at {runs.redact(runs.tracking_uri())} "
                            "(see `stgt registry show`)") from None
        raise
    return ModelRef(uri=uri, name=name, version=str(version.version), run_id=version.run_id or "")


def load(uri: str) -> tuple[ModelRef, Any]:
    """(its registry version, the STGTPyfunc object) for a registered model URI."""
    import mlflow

    ref = resolve(uri)
    # The pinned version, not the alias: the alias may move between resolving and loading.
    python_model = mlflow.pyfunc.load_model(ref.pinned_uri).unwrap_python_model()
    if not hasattr(python_model, "packaged"):
        raise StgtError(f"model {uri!r} is not an STGT model logged by the register stage")
    return ref, python_model
