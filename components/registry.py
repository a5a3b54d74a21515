"""The stage registry: the one description of the pipeline from which dvc.yaml (and later the Kubeflow DAG) is built.

Each stage names its module (holding `run(params, inputs, outputs) -> summary`), its params sections, its input
and output paths, its metrics file, and whether its result may be cached.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType


@dataclass(frozen=True)
class Resources:
    cpu: str = "2"
    memory: str = "4Gi"
    gpus: int = 0


@dataclass(frozen=True)
class Stage:
    name: str
    help: str
    params: tuple[str, ...]
    inputs: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    # Source files whose change should re-run the stage (besides the stage module itself).
    code: tuple[str, ...] = ()
    cacheable: bool = True
    resources: Resources = Resources()

    @property
    def module(self) -> str:
        return f"components.{self.name}"

    @property
    def metrics(self) -> str:
        """Small JSON summary of the run: a DVC metrics file, not cached."""
        return f"reports/{self.name}.json"

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)

    @property
    def upstream(self) -> list[str]:
        producers = {path: st.name for st in STAGES for path in st.outputs.values()}
        return sorted({producers[p] for p in self.inputs.values() if p in producers})


STAGES: tuple[Stage, ...] = (
    Stage(
        name="prepare",
        help="Build the video-text corpus and its manifest (synthetic by default, or a folder of your own videos).",
        params=("prepare",),
        outputs={"dataset": "data/prepared"},
        code=("components/sources",),
    ),
    Stage(
        name="validate",
        help="Gate the manifest with Great Expectations suites; writes an HTML report and fails on a broken dataset.",
        params=("validate",),
        inputs={"dataset": "data/prepared"},
        outputs={"report": "reports/validate"},
        code=("components/suites", "components/gx.py"),
    ),
    Stage(
        name="extract_frames",
        help="Sample T frames per clip (decord, PyAV fallback) into sharded uint8 tensors; quarantine unreadable videos.",
        params=("extract_frames",),
        inputs={"dataset": "data/prepared", "validation": "reports/validate"},
        outputs={"frames": "data/frames"},
        code=("stgt_model/video", "components/suites", "components/gx.py"),
    ),
)

BY_NAME = {s.name: s for s in STAGES}


def get(name: str) -> Stage:
    return BY_NAME[name]
