"""Import an official STGT / LAVIS checkpoint (stgt-reference.md §6.3) into our state-dict layout (safetensors).

The official files are pickles of LAVIS objects. They are read WITHOUT executing code from the file: a restricted
unpickler allows tensors, storages and plain containers, replaces the known LAVIS / optimizer / AMP / omegaconf
classes by inert placeholders, and refuses every other global (os.system, builtins.eval, subprocess, ...) with
an error naming it.

    stgt import-checkpoint checkpoint_best.pth out.safetensors --preset paper
"""

from __future__ import annotations

import _compat_pickle
import argparse
import json
import os
import pickle
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from stgt_model.config import ModelConfig, parse_dotted_overrides, preset_config, resolve_model_config
from stgt_model.factory import create_model
from stgt_model.qformer import map_bert_key

# ---------------------------------------------------------------------------------------------------------------
# Restricted unpickling


class RefusedGlobalError(pickle.UnpicklingError):
    """The pickle references a global that is neither allowed nor a known inert LAVIS/optimizer class."""


class CheckpointImportError(Exception):
    """The checkpoint cannot be read or does not fit the model config (one readable line)."""


ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("collections", "OrderedDict"),
        ("collections", "defaultdict"),
        ("copyreg", "_reconstructor"),  # protocol < 2 objects; its class arguments pass through find_class too
        *(
            ("builtins", name)
            for name in "dict list tuple set frozenset int float complex str bytes bytearray bool slice object".split()
        ),
        ("torch._utils", "_rebuild_tensor"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_parameter"),
        ("torch._utils", "_rebuild_parameter_with_state"),
        ("torch._tensor", "_rebuild_from_type_v2"),
        ("torch", "Tensor"),
        ("torch.nn.parameter", "Parameter"),
        ("torch", "Size"),
        ("torch", "device"),
        ("typing", "Any"),  # omegaconf metadata refers to it
        # numpy scalars and arrays (e.g. logged values inside scheduler or scaler state); numpy 1.x and 2.x paths
        ("_codecs", "encode"),  # protocol 2 writes bytes (numpy buffers) as codecs.encode(str, "latin1")
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        *(
            (module, name)
            for module in ("numpy.core.multiarray", "numpy._core.multiarray")
            for name in ("scalar", "_reconstruct")
        ),
    }
)
# Classes from these modules load as inert placeholders (LAVIS scheduler objects, optimizers, AMP scaler, configs).
STUBBED_MODULE_PREFIXES: tuple[str, ...] = (
    "lavis",
    "torch.optim",
    "torch.cuda.amp.grad_scaler",
    "torch.amp.grad_scaler",
    "omegaconf",
)


class InertPlaceholder:
    """Stands in for a stubbed class: records its constructor arguments and state, runs nothing."""

    def __new__(cls, *args: Any, **kwargs: Any) -> InertPlaceholder:
        placeholder = object.__new__(cls)
        placeholder.__dict__["_pickled_args"] = args
        return placeholder

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_pickled_state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:  # dict-like stubbed classes (SETITEMS)
        self.__dict__.setdefault("_pickled_items", {})[key] = value

    def append(self, value: Any) -> None:  # list-like stubbed classes (APPENDS)
        self.__dict__.setdefault("_pickled_list", []).append(value)

    def extend(self, values: Any) -> None:
        self.__dict__.setdefault("_pickled_list", []).extend(values)

    def __repr__(self) -> str:
        return f"<placeholder {type(self).__module__}.{type(self).__qualname__}>"


_placeholder_classes: dict[tuple[str, str], type] = {}


def placeholder_class(module: str, name: str) -> type:
    key = (module, name)
    if key not in _placeholder_classes:
        _placeholder_classes[key] = type(name, (InertPlaceholder,), {"__module__": module, "__qualname__": name})
    return _placeholder_classes[key]


def _is_stubbed(module: str) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in STUBBED_MODULE_PREFIXES)


def _is_torch_dtype(module: str, name: str) -> bool:
    return module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        # torch.save uses pickle protocol 2, which writes Python 2 names (__builtin__.dict); map them first.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in ALLOWED_GLOBALS or _is_torch_dtype(module, name):
            return super().find_class(module, name)
        if _is_stubbed(module):
            return placeholder_class(module, name)
        raise RefusedGlobalError(f"refused to load {module}.{name}: not allowed in a checkpoint")


def _restricted_load(file: Any, **kwargs: Any) -> Any:
    return RestrictedUnpickler(file, **kwargs).load()


# torch.load(pickle_module=...) needs a module-like object with Unpickler and load (and a __name__).
restricted_pickle = types.ModuleType("stgt_restricted_pickle")
restricted_pickle.Unpickler = RestrictedUnpickler
restricted_pickle.load = _restricted_load


def read_official_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a torch.save file (zip or legacy) with the restricted unpickler; tensors land on the CPU."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, pickle_module=restricted_pickle)
    except RefusedGlobalError as exc:
        raise CheckpointImportError(f"{path}: {exc}") from None
    except FileNotFoundError:
        raise CheckpointImportError(f"{path}: no such file") from None
    except Exception as exc:  # any other failure means the file is not a readable torch checkpoint
        raise CheckpointImportError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointImportError(f"{path}: expected a dict, found {type(checkpoint).__name__}")
    return checkpoint


# ---------------------------------------------------------------------------------------------------------------
# Key mapping (official LAVIS layout -> ours)

SKIPPED_OFFICIAL_KEYS: dict[str, str] = {
    "Qformer.bert.embeddings.position_ids": "buffer rebuilt at init",
    "Qformer.cls.predictions.decoder.weight": "tied to the word embeddings",
    "Qformer.cls.predictions.decoder.bias": "tied to the LM head bias",
}
# Ours, absent from official files by design (§6.3): the frozen ViT comes from its own weights; the frozen
# 2D position table is never saved.
EXPECTED_MISSING_PREFIXES: tuple[str, ...] = ("backbone.", "graph_cross_model.pos_2D_embed")
# Below this share of the weights a checkpoint should provide, an import is refused: a file of another model (or
# of something else) maps little or nothing, and an output left mostly at random init would pass for a real one.
DEFAULT_MIN_SHARE = 0.5


def map_official_key(key: str) -> str | None:
    """An official key -> ours (None: no counterpart). Q-Former keys go through qformer.map_bert_key."""
    if key.startswith("Qformer.bert."):
        mapped = map_bert_key(key.removeprefix("Qformer.bert."))
        return None if mapped is None else "qformer." + mapped
    if key.startswith("Qformer."):
        mapped = map_bert_key(key.removeprefix("Qformer."))
        return None if mapped is None else "qformer." + mapped
    return key


@dataclass
class ImportReport:
    mapped: dict[str, str] = field(default_factory=dict)  # our key -> official key
    missing: list[str] = field(default_factory=list)  # ours, should have come from the checkpoint
    expected_missing: list[str] = field(default_factory=list)  # ours, absent from official files by design
    unexpected: list[str] = field(default_factory=list)  # official keys with no place in our model
    skipped: dict[str, str] = field(default_factory=dict)  # official key -> why it is dropped on purpose
    mapped_weights: int = 0  # elements in the mapped tensors
    importable_weights: int = 0  # elements in every tensor of ours the checkpoint should provide (not expected-missing)

    @property
    def share(self) -> float:
        """The share of the weights the checkpoint should provide that it did provide."""
        return self.mapped_weights / self.importable_weights if self.importable_weights else 0.0

    def summary(self) -> str:
        return (
            f"mapped {len(self.mapped)} tensors ({self.share:.1%} of the weights it should provide), "
            f"missing {len(self.missing)}, "
            f"expected-missing {len(self.expected_missing)} (frozen backbone, pos_2D_embed), "
            f"unexpected {len(self.unexpected)}, skipped {len(self.skipped)}"
        )


def map_state_dict(official: dict[str, Tensor], expected: dict[str, Tensor]) -> tuple[dict[str, Tensor], ImportReport]:
    """Map official tensors onto our keys. `expected` holds our state dict (meta tensors are fine: shapes only)."""
    report = ImportReport()
    tensors: dict[str, Tensor] = {}
    mismatched: list[str] = []
    for key, value in official.items():
        if key in SKIPPED_OFFICIAL_KEYS:
            report.skipped[key] = SKIPPED_OFFICIAL_KEYS[key]
            continue
        if key.startswith("visual_encoder."):
            report.skipped[key] = "vision encoder weights are loaded by the backbone"
            continue
        ours = map_official_key(key)
        if ours is None or ours not in expected:
            report.unexpected.append(key)
            continue
        if tuple(value.shape) != tuple(expected[ours].shape):
            mismatched.append(f"{key} {tuple(value.shape)} vs {ours} {tuple(expected[ours].shape)}")
            continue
        tensors[ours] = value.detach().clone().contiguous()  # clone: tied official tensors share storage
        report.mapped[ours] = key
    if mismatched:
        raise CheckpointImportError(
            f"{len(mismatched)} tensors do not fit the model config, e.g. {'; '.join(mismatched[:3])}"
        )
    for key, value in expected.items():
        if key.startswith(EXPECTED_MISSING_PREFIXES) and key not in tensors:
            report.expected_missing.append(key)
            continue
        report.importable_weights += value.numel()
        if key in tensors:
            report.mapped_weights += value.numel()
        else:
            report.missing.append(key)
    return tensors, report


def check_coverage(report: ImportReport, min_share: float, source: str | Path) -> None:
    """Refuse an import that maps nothing, or less than `min_share` of the weights the checkpoint should provide."""
    expected = len(report.mapped) + len(report.missing)
    unexpected = f"{len(report.unexpected)} unexpected keys"
    if report.unexpected:
        unexpected += f", e.g. {', '.join(report.unexpected[:3])}"
    if not report.mapped:
        raise CheckpointImportError(
            f"{source}: maps none of the {expected} tensors the model expects ({unexpected}): "
            "is it a checkpoint of this model (--preset, --set)?"
        )
    if report.share < min_share:
        raise CheckpointImportError(
            f"{source}: maps {len(report.mapped)} of the {expected} tensors the model expects, {report.share:.1%} of "
            f"their weights, below the {min_share:.0%} required ({unexpected}): for a partial import lower --min-share"
        )


def import_checkpoint(
    src_path: str | Path,
    dst_path: str | Path,
    model_config: ModelConfig | str | dict[str, Any] = "paper",
    min_share: float = DEFAULT_MIN_SHARE,
) -> ImportReport:
    """Read an official checkpoint, map it onto the model built from `model_config`, write safetensors.

    The output holds only the mapped tensors (load it with strict=False: the backbone comes from its own weights).
    Its metadata records the source, our model config and the official run config (§3.1: the recipe lives there).
    Nothing is written when the checkpoint maps no tensor, or less than `min_share` of the weights it should provide.
    """
    cfg = resolve_model_config(model_config)
    checkpoint = read_official_checkpoint(src_path)
    official = checkpoint.get("model", checkpoint)
    if not isinstance(official, dict):
        raise CheckpointImportError(f"{src_path}: 'model' is a {type(official).__name__}, not a state dict")
    official = {key: value for key, value in official.items() if isinstance(value, Tensor)}
    expected = create_model(cfg, device="meta").state_dict()  # shapes only, no weights
    tensors, report = map_state_dict(official, expected)
    check_coverage(report, min_share, src_path)
    metadata = {
        "source": str(src_path),
        "model_config": cfg.model_dump_json(),
        "official_config": json.dumps(checkpoint.get("config"), default=repr),
    }
    dst_path = Path(dst_path)
    dst_path.parent.mkdir(parents=True, exist_ok=True)
    partial = dst_path.with_name(dst_path.name + ".partial")
    save_file(tensors, str(partial), metadata=metadata)
    os.replace(partial, dst_path)
    return report


# ---------------------------------------------------------------------------------------------------------------
# CLI


def fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a share between 0 and 1")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="stgt import-checkpoint",
        description="Map an official STGT/LAVIS checkpoint (.pth) onto this model's state dict (safetensors). "
        "The file is unpickled without running code from it.",
    )
    parser.add_argument("path", help="official checkpoint (torch.save of {'model', 'optimizer', 'config', ...})")
    parser.add_argument("out", help="output .safetensors file")
    parser.add_argument("--preset", default="paper", help="model preset the checkpoint belongs to (default: paper)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model config override, e.g. --set stgt.num_frames=8 (repeatable)",
    )
    parser.add_argument(
        "--min-share",
        type=fraction,
        default=DEFAULT_MIN_SHARE,
        metavar="FRACTION",
        help="refuse the import when the mapped tensors hold less than this share of the weights the checkpoint "
        "should provide (default: %(default)s); lower it for a partial import, e.g. only the Q-Former. An import "
        "that maps no tensor is always refused",
    )
    args = parser.parse_args(argv)
    try:
        cfg = preset_config(args.preset, parse_dotted_overrides(args.overrides))
        report = import_checkpoint(args.path, args.out, cfg, min_share=args.min_share)
    except (CheckpointImportError, ValueError, OSError) as exc:
        print(f"stgt import-checkpoint: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    print(f"{args.path} -> {args.out}: {report.summary()}")
    if report.missing:
        print(f"missing (left at init): {', '.join(report.missing[:10])}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
