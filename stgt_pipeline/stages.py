"""The stage table: the one description of the pipeline, from which the `stgt` commands, dvc.yaml and the Kubeflow
DAG are built.

Each stage names its folder's package (holding `stage.py` with `run(params, inputs, outputs) -> summary` and
`component.py` with its Kubeflow component), its params sections, its input and output paths, the code whose change
re-runs it, its metrics file, whether its result may be cached, how it shards, whether it trains across nodes and
whether it resumes from checkpoints.
Nothing else spells these: code that needs a stage's module, paths or flags looks them up here.
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from stgt_pipeline.params import FINETUNE_TASKS

COMPONENTS = "stgt_pipeline.components"
# The model library the training stages run on (their own package and stgt_pipeline.training are added below).
TRAINING_CODE = ("stgt_model.model", "stgt_model.qformer", "stgt_model.stgt", "stgt_model.graph_attention",
                 "stgt_model.losses", "stgt_model.qa", "stgt_model.engine", "stgt_model.data", "stgt_model.factory",
                 "stgt_model.config", "stgt_pipeline.training")

# What the evaluate stage plots (DVC plots): recall per direction, and per training phase (the pretrain stage's two,
# one per fine-tuning task) its curves as `<CURVES_DIR>/<phase>.csv`, a file each so that each is a line of its own.
EVALUATE_PLOTS = "reports/evaluate/plots"
CURVES_DIR = f"{EVALUATE_PLOTS}/curves"
RETRIEVAL_DIRECTIONS = ("t2v", "v2t")
TRAINING_PHASES = ("pretrain-stage1", "pretrain-stage2", *(f"finetune-{task}" for task in FINETUNE_TASKS))


@dataclass(frozen=True)
class Resources:
    cpu: str = "2"
    memory: str = "4Gi"
    gpus: int = 0


@dataclass(frozen=True)
class Sharding:
    """Kubeflow runs the stage once per contiguous block of `input`'s manifest rows, then `merge` ("module:function",
    `merge(params, parts, summaries, outputs) -> summary`) joins the shards' outputs into the stage's own."""

    input: str
    merge: str


@dataclass(frozen=True)
class Stage:
    name: str
    help: str
    params: tuple[str, ...]
    inputs: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    # Modules (or packages) whose change should re-run the stage, besides its own package.
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
    sharding: Sharding | None = None
    # Trains through stgt_model.engine (DDP, rank 0 writes): on Kubeflow it may run across nodes as a TrainJob.
    multi_node: bool = False
    # Resumes from engine checkpoints in `<output>.work/` (stgt_pipeline.training.open_work_dir): `stgt <stage>`
    # takes --restart, which empties that folder first.
    resumable: bool = False
    # "module:function" the runner calls before it opens the stage's MLflow run: `check(params, inputs, outputs,
    # previous)` (previous: the summary file the last run left, or None) returns the stage's summary when there is
    # nothing to do (then nothing runs and nothing is logged), None to run the stage. For a stage that is never
    # cached (`cacheable=False`), so that a repro with nothing new is still a no-op.
    noop_check: str | None = None

    @property
    def package(self) -> str:
        """The stage's folder as an import name: stgt_pipeline.components.<name>."""
        return f"{COMPONENTS}.{self.name}"

    @property
    def module(self) -> str:
        """The module holding `run`."""
        return f"{self.package}.stage"

    @property
    def component_module(self) -> str:
        """The module holding the stage's Kubeflow component."""
        return f"{self.package}.component"

    @property
    def metrics(self) -> str:
        """Small JSON summary of the run: a DVC metrics file, not cached."""
        return f"reports/{self.name}.json"

    def summaries(self) -> list[str]:
        """The summary files a `dvc repro` leaves: `metrics`, or one per item of a foreach stage (dvc_yaml.py)."""
        return [f"reports/{self.name}/{item}.json" for item in self.foreach] if self.foreach else [self.metrics]

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)

    @property
    def upstream(self) -> list[str]:
        return sorted({made[0].name for path in self.inputs.values() if (made := producer_of(path))})


def source_path(module: str, root: Path) -> str:
    """Where a module's (or package's) source lies, relative to the project root `root`: the dvc.yaml dependency.
    Found by import, so it follows the installed layout (components/ is stgt_pipeline.components)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"stage code {module!r} does not import")
    origin = Path(spec.origin).resolve()
    path = origin.parent if spec.submodule_search_locations else origin
    try:
        return path.relative_to(root.resolve()).as_posix()
    except ValueError:
        raise ValueError(f"{module} is installed at {path}, outside the project {root}: dvc.yaml is written from an "
                         "editable install of a source checkout (`make setup`)") from None


STAGES: tuple[Stage, ...] = (
    Stage(
        name="prepare",
        help="Build the video-text corpus and its manifest (synthetic by default, or a folder of your own videos).",
        params=("prepare",),
        outputs={"dataset": "data/prepared"},
        code=("stgt_pipeline.sources", "stgt_pipeline.io.manifest", "stgt_pipeline.io.remote"),
    ),
    Stage(
        name="validate",
        help="Gate the manifest with Great Expectations suites; writes an HTML report and fails on a broken dataset.",
        params=("validate",),
        inputs={"dataset": "data/prepared"},
        outputs={"report": "reports/validate"},
        code=("stgt_pipeline.quality.gx", "stgt_pipeline.io.manifest", "stgt_pipeline.io.remote"),
    ),
    Stage(
        name="extract_frames",
        help="Sample T frames per clip (decord, PyAV fallback) into sharded uint8 tensors; quarantine unreadable videos.",
        params=("extract_frames",),
        inputs={"dataset": "data/prepared", "validation": "reports/validate"},
        outputs={"frames": "data/frames"},
        code=("stgt_model.video", "stgt_pipeline.quality.gx", "stgt_pipeline.io.remote"),
        sharding=Sharding(input="dataset", merge=f"{COMPONENTS}.extract_frames.merge:merge"),
    ),
    Stage(
        name="build_graphs",
        help="Cache frozen-backbone token features (fp16 shards) and their spatio-temporal graphs, gated on graph stats.",
        params=("build_graphs", "model"),
        inputs={"frames": "data/frames", "dataset": "data/prepared"},
        outputs={"features": "data/features"},
        code=("stgt_model.backbones", "stgt_model.features", "stgt_model.graph", "stgt_model.data",
              "stgt_pipeline.quality.gx"),
    ),
    Stage(
        name="pretrain",
        help="Pre-train on the cached features: stage 1 (VTC + VTM + VTG), then stage 2 (CSAL + VTM + VTG); resumable.",
        params=("pretrain", "model"),
        inputs={"features": "data/features", "dataset": "data/prepared"},
        outputs={"checkpoint": "data/checkpoints/pretrain"},
        code=TRAINING_CODE,
        resources=Resources(cpu="8", memory="32Gi", gpus=1),
        multi_node=True,
        resumable=True,
    ),
    Stage(
        name="finetune",
        help="Fine-tune the pre-trained model per task: retrieval (CSAL + VTM) and video QA (answer classification).",
        params=("finetune", "model"),
        inputs={"pretrained": "data/checkpoints/pretrain", "features": "data/features", "dataset": "data/prepared"},
        outputs={task: f"data/checkpoints/finetune/{task}" for task in FINETUNE_TASKS},
        code=TRAINING_CODE,
        resources=Resources(cpu="8", memory="32Gi", gpus=1),
        foreach=FINETUNE_TASKS,
        foreach_param="finetune.tasks",
        resumable=True,
    ),
    Stage(
        name="evaluate",
        help="Test-split retrieval (R@1/5/10, MdR, MnR both ways), temporal-order probe and QA accuracy; plots.",
        params=("evaluate", "model", "finetune"),
        inputs={"retrieval": "data/checkpoints/finetune/retrieval", "qa": "data/checkpoints/finetune/qa",
                "pretrained": "data/checkpoints/pretrain", "features": "data/features", "dataset": "data/prepared"},
        outputs={"report": "reports/evaluate"},
        code=(*TRAINING_CODE, "stgt_model.metrics", "stgt_pipeline.scoring"),
        resources=Resources(cpu="4", memory="16Gi", gpus=1),
        metrics_files=("reports/evaluate/metrics.json",),
        # One line per series: DVC draws one line per (file, column) and revision, never per value of a column, so
        # recall is one column per direction and the curves one file per training phase (evaluate writes them).
        plots=(
            {"recall_at_k": {"title": "Recall@K (test)", "x": "k", "x_label": "K", "y_label": "R@K (%)",
                             "y": {f"{EVALUATE_PLOTS}/recall_at_k.csv": list(RETRIEVAL_DIRECTIONS)}}},
            {"training_loss": {"title": "training loss (total) per phase", "x": "step", "y_label": "loss",
                               "y": {f"{CURVES_DIR}/{phase}.csv": "loss/total" for phase in TRAINING_PHASES}}},
            {"learning_rate": {"title": "learning rate per phase", "x": "step", "y_label": "lr",
                               "y": {f"{CURVES_DIR}/{phase}.csv": "lr" for phase in TRAINING_PHASES}}},
            "reports/evaluate/plots/recall_at_k.png",
            "reports/evaluate/plots/training_curves.png",
        ),
    ),
    Stage(
        name="register",
        help="Log the fine-tuned models to MLflow, register them and move `champion` when they beat it (re-scored).",
        params=("register", "model", "finetune", "evaluate", "extract_frames"),
        inputs={"retrieval": "data/checkpoints/finetune/retrieval", "qa": "data/checkpoints/finetune/qa",
                "report": "reports/evaluate", "features": "data/features", "dataset": "data/prepared"},
        code=("stgt_pipeline.tracking.model_registry", *TRAINING_CODE, "stgt_model.metrics", "stgt_pipeline.scoring",
              "stgt_model.features", "stgt_model.video"),
        # The registry lives outside the workspace: DVC cannot tell whether it still holds this run's decision.
        cacheable=False,
        # ...so the stage asks it, in about a second: models already registered (same package digest) are a no-op.
        noop_check=f"{COMPONENTS}.register.unchanged:nothing_new",
    ),
)

BY_NAME = {s.name: s for s in STAGES}


def get(name: str) -> Stage:
    return BY_NAME[name]


def producer_of(path: str, stages: tuple[Stage, ...] | None = None) -> tuple[Stage, str] | None:
    """(the stage producing `path`, its output key), or None for a path no stage makes."""
    for stage in STAGES if stages is None else stages:
        for key, out in stage.outputs.items():
            if out == path:
                return stage, key
    return None
