"""The stage registry: the one description of the pipeline from which dvc.yaml and the Kubeflow DAG are built.

Each stage names its module (holding `run(params, inputs, outputs) -> summary`), its params sections, its input
and output paths, its metrics file, and whether its result may be cached.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType


# The model library the training stages run on (their own module is added by dvcgen).
TRAINING_CODE = ("stgt_model/model.py", "stgt_model/qformer.py", "stgt_model/stgt.py", "stgt_model/graph_attention.py",
                 "stgt_model/losses.py", "stgt_model/qa.py", "stgt_model/engine.py", "stgt_model/data.py",
                 "stgt_model/factory.py", "stgt_model/config.py")
FINETUNE_TASKS = ("retrieval", "qa")


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
    # DVC `foreach`: one dvc.yaml stage per item, each narrowing the list param `foreach_param` to its item and
    # owning the outputs whose key is the item; Kubeflow likewise runs one task per item. The plain CLI does every
    # item in one run.
    foreach: tuple[str, ...] = ()
    foreach_param: str | None = None
    # Files inside the outputs that DVC shows as metrics / plots (dvc.yaml top level: no extra outputs).
    metrics_files: tuple[str, ...] = ()
    plots: tuple[str | dict, ...] = ()

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
        code=("components/sources", "components/manifest.py", "components/remote_media.py"),
    ),
    Stage(
        name="validate",
        help="Gate the manifest with Great Expectations suites; writes an HTML report and fails on a broken dataset.",
        params=("validate",),
        inputs={"dataset": "data/prepared"},
        outputs={"report": "reports/validate"},
        code=("components/suites", "components/gx.py", "components/manifest.py", "components/remote_media.py"),
    ),
    Stage(
        name="extract_frames",
        help="Sample T frames per clip (decord, PyAV fallback) into sharded uint8 tensors; quarantine unreadable videos.",
        params=("extract_frames",),
        inputs={"dataset": "data/prepared", "validation": "reports/validate"},
        outputs={"frames": "data/frames"},
        code=("stgt_model/video", "components/suites", "components/gx.py", "components/remote_media.py"),
    ),
    Stage(
        name="build_graphs",
        help="Cache frozen-backbone token features (fp16 shards) and their spatio-temporal graphs, gated on graph stats.",
        params=("build_graphs", "model"),
        inputs={"frames": "data/frames", "dataset": "data/prepared"},
        outputs={"features": "data/features"},
        code=("stgt_model/backbones.py", "stgt_model/graph.py", "stgt_model/data.py", "components/suites",
              "components/gx.py"),
    ),
    Stage(
        name="pretrain",
        help="Pre-train on the cached features: stage 1 (VTC + VTM + VTG), then stage 2 (CSAL + VTM + VTG); resumable.",
        params=("pretrain", "model"),
        inputs={"features": "data/features", "dataset": "data/prepared"},
        outputs={"checkpoint": "data/checkpoints/pretrain"},
        code=TRAINING_CODE,
        resources=Resources(cpu="8", memory="32Gi", gpus=1),
    ),
    Stage(
        name="finetune",
        help="Fine-tune the pre-trained model per task: retrieval (CSAL + VTM) and video QA (answer classification).",
        params=("finetune", "model"),
        inputs={"pretrained": "data/checkpoints/pretrain", "features": "data/features", "dataset": "data/prepared"},
        outputs={task: f"data/checkpoints/finetune/{task}" for task in FINETUNE_TASKS},
        code=(*TRAINING_CODE, "components/pretrain.py"),
        resources=Resources(cpu="8", memory="32Gi", gpus=1),
        foreach=FINETUNE_TASKS,
        foreach_param="finetune.tasks",
    ),
    Stage(
        name="evaluate",
        help="Test-split retrieval (R@1/5/10, MdR, MnR both ways), temporal-order probe and QA accuracy; plots.",
        params=("evaluate", "model", "finetune"),
        inputs={"retrieval": "data/checkpoints/finetune/retrieval", "qa": "data/checkpoints/finetune/qa",
                "pretrained": "data/checkpoints/pretrain", "features": "data/features", "dataset": "data/prepared"},
        outputs={"report": "reports/evaluate"},
        code=(*TRAINING_CODE, "stgt_model/metrics.py", "components/pretrain.py", "components/finetune.py",
              "components/plots.py"),
        resources=Resources(cpu="4", memory="16Gi", gpus=1),
        metrics_files=("reports/evaluate/metrics.json",),
        plots=(
            {"reports/evaluate/plots/recall_at_k.csv": {"x": "k", "y": "recall", "title": "Recall@K (test)"}},
            {"reports/evaluate/plots/curves.csv": {"x": "step", "y": "loss/total", "title": "training loss"}},
            "reports/evaluate/plots/recall_at_k.png",
            "reports/evaluate/plots/training_curves.png",
        ),
    ),
    Stage(
        name="register",
        help="Log the fine-tuned models to MLflow, register them and move `champion` when they beat it (re-scored).",
        params=("register", "model", "finetune", "evaluate"),
        inputs={"retrieval": "data/checkpoints/finetune/retrieval", "qa": "data/checkpoints/finetune/qa",
                "report": "reports/evaluate", "features": "data/features", "dataset": "data/prepared"},
        code=("components/mlflow_models.py", "components/registry_ops.py", "components/evaluate.py", *TRAINING_CODE),
        # The registry lives outside the workspace: DVC cannot tell whether it still holds this run's decision.
        cacheable=False,
    ),
)

BY_NAME = {s.name: s for s in STAGES}


def get(name: str) -> Stage:
    return BY_NAME[name]
