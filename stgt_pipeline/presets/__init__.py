"""Named benchmark recipes: `--set prepare.preset=msrvtt_1ka` selects stgt_pipeline/presets/msrvtt_1ka.yaml.

A preset file holds params overrides, section by section (prepare, extract_frames, ...), applied over params.yaml
and under `--set` (see stgt_pipeline/params.py::load_params). Its `recipe:` key holds the rest of the reference
recipe (epochs, batch size, max_txt_len, ...) for stages that do not exist yet; it is never merged into params,
so params validation stays strict, and later stages read it with `load_recipe`.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from stgt_pipeline.errors import ConfigError

PRESETS_DIR = Path(__file__).parent
RECIPE_KEY = "recipe"


def available() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def _read(name: str) -> dict[str, Any]:
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"prepare.preset: unknown preset {name!r}; expected one of {', '.join(available())}")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of params sections")
    return data


def load_preset(name: str) -> dict[str, Any]:
    """The params overrides of preset `name` (its `recipe` left out)."""
    return {k: v for k, v in _read(name).items() if k != RECIPE_KEY}


def load_recipe(name: str) -> dict[str, Any]:
    """The reference-recipe fields no params section holds yet (finetune epochs, batch size, text length...)."""
    return _read(name).get(RECIPE_KEY) or {}


def merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` over `base`: mappings merge key by key, any other value (lists included) replaces."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
