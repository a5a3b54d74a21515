"""params.yaml as Kubeflow pipeline parameters: one typed parameter per leaf key, named `section__key`.

KFP parameter names must be Python identifiers, so `prepare.folder.root` becomes `prepare__folder__root`.
Each stage component takes only its own sections' parameters, so KFP's cache key for a stage changes exactly when
one of its params changes (as DVC's `params:` deps do). Sections (nested config classes) are flattened; an open
mapping (a dict-typed key) is one `dict` parameter. KFP has no null parameter value: a key whose default is null
becomes a string parameter where "" means null.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from pydantic import BaseModel

from stgt_pipeline.errors import StgtError
from stgt_pipeline.kfp.conventions import SEPARATOR, name_of
from stgt_pipeline.params import Params, load_params, parse_override

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


def run_arguments(overrides: Iterable[str], known: Iterable[str],
                  params_path: str | Path | None = None) -> dict[str, Any]:
    """`--set prepare.num_videos=8` -> {"prepare__num_videos": 8}, for a pipeline taking parameters `known`.

    A `<section>.preset` override (model.preset=tiny) is no parameter of its own: the preset is resolved as the
    stages resolve it (params.yaml < preset < --set, with `params_path`) and passed as every key of its section.
    """
    known = set(known)
    arguments: dict[str, Any] = {}
    preset_sections: list[str] = []
    for text in overrides:
        parts, value = parse_override(text)
        name = SEPARATOR.join(parts)
        if name in known:
            arguments[name] = "" if value is None else value  # KFP has no null: "" stands for it
        elif params_path is not None and len(parts) == 2 and parts[1] == "preset":
            preset_sections.append(parts[0])
        else:
            raise StgtError(f"--set {text}: not a pipeline parameter (a params.yaml key of a pipeline stage)")
    if preset_sections:
        resolved = load_params(params_path, list(overrides))
        for param in pipeline_params(resolved, preset_sections):
            if param.name in known:
                arguments[param.name] = "" if param.default is None else param.default
    return arguments
