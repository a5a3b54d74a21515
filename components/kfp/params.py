"""params.yaml as Kubeflow pipeline parameters: one typed parameter per leaf key, named `section__key`.

KFP parameter names must be Python identifiers, so `prepare.folder.root` becomes `prepare__folder__root`.
Each stage component takes only its own sections' parameters, so KFP's cache key for a stage changes exactly when
one of its params changes (as DVC's `params:` deps do). Sections (nested config classes) are flattened; an open
mapping (a dict-typed key) is one `dict` parameter. KFP has no null parameter value: a key whose default is null
becomes a string parameter where "" means null.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from pydantic import BaseModel

from components.config import Params, parse_override
from components.errors import StgtError

SEPARATOR = "__"
_TYPES: tuple[type, ...] = (bool, int, float, str, list, dict)


@dataclass(frozen=True)
class PipelineParam:
    key: str  # dotted params.yaml key: prepare.folder.root
    annotation: type
    default: Any
    nullable: bool  # the params.yaml default is null; "" stands for it

    @property
    def name(self) -> str:
        return name_of(self.key)

    @property
    def section(self) -> str:
        return self.key.split(".", 1)[0]


def name_of(key: str) -> str:
    return key.replace(".", SEPARATOR)


def key_of(name: str) -> str:
    return name.replace(SEPARATOR, ".")


def _leaves(prefix: str, section: BaseModel) -> Iterable[tuple[str, Any]]:
    """(dotted key, JSON value) for every leaf of a config section, in declaration order."""
    data = section.model_dump(mode="json", by_alias=True)
    for name, field in type(section).model_fields.items():
        key = field.alias or name
        value = getattr(section, name)
        if isinstance(value, BaseModel):
            yield from _leaves(f"{prefix}.{key}", value)
        else:
            yield f"{prefix}.{key}", data[key]


def _param(key: str, value: Any) -> PipelineParam:
    if value is None:
        return PipelineParam(key, str, "", nullable=True)
    annotation = next((t for t in _TYPES if type(value) is t), None)
    if annotation is None:
        raise TypeError(f"params key {key}: {type(value).__name__} values cannot be a pipeline parameter")
    return PipelineParam(key, annotation, value, nullable=False)


def pipeline_params(params: Params, sections: Iterable[str]) -> list[PipelineParam]:
    """The leaf keys of `sections`, in params.yaml order, with `params` values as defaults."""
    return [_param(key, value) for section in sections for key, value in _leaves(section, params.section(section))]


def nested(values: Mapping[str, Any]) -> dict[str, Any]:
    """{"prepare.folder.root": x} -> {"prepare": {"folder": {"root": x}}}: the shape of params.yaml."""
    tree: dict[str, Any] = {}
    for key, value in values.items():
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def run_arguments(overrides: Iterable[str], known: Iterable[str]) -> dict[str, Any]:
    """`--set prepare.num_videos=8` -> {"prepare__num_videos": 8}, for a pipeline taking parameters `known`."""
    known = set(known)
    arguments: dict[str, Any] = {}
    for text in overrides:
        parts, value = parse_override(text)
        name = SEPARATOR.join(parts)
        if name not in known:
            raise StgtError(f"--set {text}: not a pipeline parameter (a params.yaml key of a pipeline stage)")
        arguments[name] = "" if value is None else value  # KFP has no null: "" stands for it
    return arguments
