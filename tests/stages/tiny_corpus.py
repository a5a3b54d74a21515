"""A tiny synthetic corpus run through the real upstream stages, for the training and evaluation stage tests.

prepare (16 synthetic clips + reversed twins, 48 px) -> extract_frames (4 frames, 32 px) -> build_graphs (the
`tiny` model: random tiny ViT, 2-layer Q-Former). About 10 s; built once per test session
(the `corpus` and `trained` fixtures).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from stgt_pipeline.components.build_graphs import stage as build_graphs
from stgt_pipeline.components.extract_frames import stage as extract_frames
from stgt_pipeline.components.finetune import stage as finetune
from stgt_pipeline.components.prepare import stage as prepare
from stgt_pipeline.components.pretrain import stage as pretrain
from stgt_pipeline.params import Params, load_params

TRAIN = {"steps": 3, "batch_size": 4, "checkpoint_every": 1, "log_every": 1}


def tiny_params(tmp: Path, **sections: dict) -> Params:
    raw = {
        "prepare": {"num_videos": 16, "frames_per_video": 8, "width": 48, "height": 48, "test_share": 0.25,
                    "val_share": 0.0},
        "extract_frames": {"num_frames": 4, "size": 32, "workers": 1},
        "build_graphs": {"batch_size": 8, "device": "cpu"},
        "model": {"preset": "tiny"},
        "pretrain": {"stage1": {**TRAIN, "losses": ["vtc", "vtm", "vtg"]},
                     "stage2": {**TRAIN, "losses": ["csal", "vtm", "vtg"]}},
        "finetune": {"retrieval": {**TRAIN, "losses": ["csal", "vtm"]}, "qa": {**TRAIN, "answer_vocab_size": 20}},
        "evaluate": {"k_test": 4, "batch_size": 8},
    }
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return load_params(path)


def build_corpus(root: Path) -> dict[str, Path]:
    """-> {"dataset": ..., "features": ...} under root."""
    params = tiny_params(root)
    paths = {"dataset": root / "prepared", "frames": root / "frames", "features": root / "features"}
    prepare.run(params, {}, {"dataset": paths["dataset"]})
    extract_frames.run(params, {"dataset": paths["dataset"]}, {"frames": paths["frames"]})
    build_graphs.run(params, {"frames": paths["frames"], "dataset": paths["dataset"]},
                     {"features": paths["features"]})
    return {"dataset": paths["dataset"], "features": paths["features"]}


# ---------------------------------------------------------------------------------------------------------------
# Session-wide artefacts. The fixtures are imported by several test modules; pytest would build a session fixture
# once per importing module, so the artefacts are cached here instead.

_BUILT: dict[str, dict[str, Path]] = {}


def _cached(name: str, root: Path, build) -> dict[str, Path]:
    if name not in _BUILT:
        _BUILT[name] = build(root / name)
    return _BUILT[name]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _cached("corpus", tmp_path_factory.getbasetemp(), build_corpus)


@pytest.fixture(scope="session")
def trained(corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """corpus + the tiny pretrain and finetune outputs: inputs for evaluate."""

    def build(root: Path) -> dict[str, Path]:
        params = tiny_params(root)
        paths = {**corpus, "pretrained": root / "pretrain", "retrieval": root / "finetune" / "retrieval",
                 "qa": root / "finetune" / "qa"}
        pretrain.run(params, corpus, {"checkpoint": paths["pretrained"]})
        finetune.run(params, {**corpus, "pretrained": paths["pretrained"]},
                     {"retrieval": paths["retrieval"], "qa": paths["qa"]})
        return paths

    return _cached("trained", tmp_path_factory.getbasetemp(), build)
