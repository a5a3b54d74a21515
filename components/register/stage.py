"""Stage `register`: log the fine-tuned models to MLflow, register them and gate the `champion` alias.

For each task in register.models the fine-tuned checkpoint is packaged as a pyfunc model (pyfunc.py beside this
file: weights as safetensors, resolved config, answer vocabulary, tokenizer; `stgt_model` as its code) and logged
in this stage's run as `<model_prefix>-<task>`. stgt_pipeline.tracking.model_registry.register_and_gate then
registers it (alias `challenger`), re-scores the current champion with the evaluate stage's scoring
(stgt_pipeline.scoring) on the same features and dataset, and moves `champion` when the gate metric
(register.gate_metric, from reports/evaluate/metrics.json) beats it by more than register.margin; the first model
of a name is promoted.
Every decision is recorded as tags on the new version, with the evaluation data digest and the model's digests
(`weights_digest`, `package_digest`: unchanged.py).

Never cached (always_changed): the registry is state outside the workspace that DVC cannot see. A model whose
package digest a version of its name already carries is not logged, registered or gated again; when that holds for
every model, the runner stops before opening a run (unchanged.nothing_new), so a `dvc repro` with nothing new is a
no-op.
"""
from __future__ import annotations

import functools
import importlib.metadata
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import torch
from safetensors.torch import save_file

import stgt_model
from stgt_model.config import ModelConfig
from stgt_model.data import ClipStore
from stgt_model.factory import create_model
from stgt_model.features import FrameSpec, build_frozen_backbone
from stgt_model.qformer import build_tokenizer
from stgt_pipeline.components.register import pyfunc as served
from stgt_pipeline.components.register import unchanged
from stgt_pipeline.errors import StgtError
from stgt_pipeline.params import Params
from stgt_pipeline.scoring import evaluate_qa, evaluate_retrieval
from stgt_pipeline.tracking import model_registry, runs
from stgt_pipeline.training import MODEL_FILE, VOCAB_FILE, open_corpus, qa_model_config, text_processor

SECTIONS = ["register", "model", "finetune", "evaluate", "extract_frames"]
# What the served model imports (stgt_model's own needs included); versions as installed, which the Makefile and
# the images install from requirements/lock.txt (torch without its local label: +cpu/+cu12x are not on PyPI).
SERVING_PACKAGES = ("torch", "transformers", "mlflow", "numpy", "pandas", "pydantic", "safetensors",
                    # reading a video as extract_frames does, and the EfficientNet architecture (weights travel)
                    "av", "decord", "opencv-python-headless", "efficientnet-lite-pytorch")
LOWER_IS_BETTER = ("MdR", "MnR")  # rank metrics; every other gate metric is a score or an accuracy
EXAMPLE_TEXT = "a red circle moves from left to right"


def run(params: Params, inputs: dict[str, Path], outputs: dict[str, Path]) -> dict[str, Any]:
    if runs.current().run_id is None:
        raise StgtError("register needs MLflow tracking: unset STGT_TRACKING=off (and run it in rank 0)")
    cfg = params.section("register")
    report = json.loads((Path(inputs["report"]) / "metrics.json").read_text(encoding="utf-8"))
    manifest, store = open_corpus(inputs["dataset"], inputs["features"])
    digests = runs.input_digests({"features": inputs["features"], "dataset": inputs["dataset"]}, runs.project_dir())
    digest = runs.combined_digest(digests) if digests else ""
    summary: dict[str, Any] = {}
    code = unchanged.code_digest()
    for task in cfg.models:
        name = f"{cfg.model_prefix}-{task}"
        if task not in report:
            raise StgtError(f"register {task}: {inputs['report']}/metrics.json has no {task!r} section")
        # The same model (same package digest) is registered once: no new version, no re-scoring of the champion.
        model_digests = unchanged.digests(params, task, Path(inputs[task]), code)
        client = model_registry.registry_client()
        found = model_registry.find_version(client, name, {unchanged.DIGEST_TAG: model_digests.package})
        if found is not None:
            summary[task] = unchanged.unchanged_summary(name, unchanged.Found(str(found.version), dict(found.tags)),
                                                        model_digests)
            continue
        with tempfile.TemporaryDirectory(prefix=f"stgt-register-{task}-") as tmp:
            folder = package(params, task, Path(inputs[task]), Path(tmp) / "stgt")
            model_uri = log_model(name, task, folder)
        gate = runs.metric_name(getattr(cfg.gate_metric, task))
        decision = model_registry.register_and_gate(
            model_uri, name, scores(report[task]), gate, cfg.margin,
            functools.partial(rescore, params, task, store, manifest),
            higher_is_better=not gate.endswith(LOWER_IS_BETTER),
            version_tags={**model_digests.tags(), "eval_data_digest": digest})
        # Versions as names ("3"), not numbers to log as metrics.
        version = str(decision.version)
        previous = None if decision.compared_with is None else str(decision.compared_with)
        summary[task] = {"model": name, "version": version, "promoted": decision.promoted,
                         "reason": decision.reason, "compared_with": previous,
                         "champion": version if decision.promoted else previous,
                         "gate_metric": gate, "gate_delta": decision.deltas.get(gate), "eval_data_digest": digest,
                         unchanged.DIGEST_TAG: model_digests.package}
    return summary


def scores(section: Mapping[str, Any]) -> dict[str, float]:
    """An evaluate metrics section as flat numbers under MLflow-valid names ("t2v.R@1" -> "t2v.R_1")."""
    return {runs.metric_name(k): v for k, v in runs.numeric_metrics(section).items()}


# ---------------------------------------------------------------------------------------------------------------
# packaging and logging


def model_config(params: Params, task: str, checkpoint: Path) -> ModelConfig:
    if task == "retrieval":
        return params.model
    vocab = json.loads((checkpoint / VOCAB_FILE).read_text(encoding="utf-8"))
    return qa_model_config(params.model, len(vocab))


def package(params: Params, task: str, checkpoint: Path, folder: Path) -> Path:
    """The pyfunc artifact folder (pyfunc.py reads it) for a fine-tuned checkpoint."""
    cfg = model_config(params, task, checkpoint)
    folder.mkdir(parents=True)
    state = torch.load(checkpoint / MODEL_FILE, map_location="cpu", weights_only=True)
    # Cloned: safetensors refuses tensors that share memory (tied weights load back into both places).
    save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, folder / served.WEIGHTS_FILE)
    backbone = create_model(cfg, device="meta").backbone  # its token shape, for the model's placeholder
    text_len = (params.evaluate.max_text_len if task == "retrieval" else params.finetune.qa.max_text_len)
    frames = params.extract_frames
    config = {"task": task, "model": cfg.model_dump(mode="json"),
              "max_text_len": text_len or cfg.qformer.max_text_len,
              "backbone": {"out_dim": backbone.out_dim, "grid": list(backbone.grid)},
              # How evaluation read a video, so a served video is read the same way (stgt_model.features).
              "frames": FrameSpec(frames.num_frames, frames.size, frames.eval_sampling).as_dict(),
              "evaluate": {"k_test": params.evaluate.k_test}}
    if cfg.backbone.name != "hf_vision":  # a hf_vision backbone (~1B weights) is named by its local folder instead
        state = build_frozen_backbone(cfg.backbone).state_dict()
        save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, folder / served.BACKBONE_FILE)
    (folder / served.CONFIG_FILE).write_text(json.dumps(config, indent=1), encoding="utf-8")
    if task == "qa":
        shutil.copy(checkpoint / VOCAB_FILE, folder / served.VOCAB_FILE)
    build_tokenizer(cfg.qformer).save_pretrained(str(folder / served.TOKENIZER_DIR))
    return folder


def pip_requirements() -> list[str]:
    return [f"{name}=={importlib.metadata.version(name).split('+')[0]}" for name in SERVING_PACKAGES]


def signature(task: str) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema
    from mlflow.types.schema import AnyType, Array

    features = Array(Array(Array(DataType.double)))  # (T, 1 + h*w, C) per clip; float32 arrays convert safely
    # A video is one of: a path or URL the server reads, the file's bytes in base64, or its cached tokens.
    videos = [ColSpec(DataType.string, "video", required=False), ColSpec(DataType.string, "video_bytes", required=False),
              ColSpec(features, "video_features", required=False)]
    if task == "qa":
        inputs = Schema([*videos, ColSpec(DataType.string, "question")])
        return ModelSignature(inputs, Schema([ColSpec(DataType.string, "answer", required=False),
                                              ColSpec(DataType.double, "probability")]))
    inputs = Schema([ColSpec(DataType.string, "text", required=False), *videos])
    return ModelSignature(inputs, Schema([ColSpec(AnyType(), "embedding")]))  # (E,) per text, (Q, E) per video


def input_example(task: str, folder: Path) -> pd.DataFrame:
    if task == "retrieval":
        return pd.DataFrame({"text": [EXAMPLE_TEXT]})
    config = json.loads((folder / served.CONFIG_FILE).read_text(encoding="utf-8"))
    h, w = config["backbone"]["grid"]
    shape = (config["model"]["stgt"]["num_frames"], 1 + h * w, config["backbone"]["out_dim"])
    return pd.DataFrame({"video_features": [torch.zeros(shape).tolist()], "question": ["what moves?"]})


def log_model(name: str, task: str, folder: Path) -> str:
    """Log the folder as a pyfunc model in the active (stage) run; returns its models:/m-<id> URI."""
    import mlflow

    info = mlflow.pyfunc.log_model(
        name=name, python_model=served.__file__, artifacts={served.ARTIFACTS_KEY: str(folder)},
        code_paths=[str(Path(stgt_model.__file__).parent)], pip_requirements=pip_requirements(),
        signature=signature(task), input_example=input_example(task, folder))
    return info.model_uri


# ---------------------------------------------------------------------------------------------------------------
# re-scoring the champion


def rescore(params: Params, task: str, store: ClipStore, manifest: pd.DataFrame, model_uri: str) -> dict[str, float]:
    """The champion's metrics from the evaluate stage's own scoring, on this run's features and dataset: retrieval
    with this run's evaluate settings, QA with the question length the champion was trained on."""
    import mlflow

    packaged = mlflow.pyfunc.load_model(model_uri).unwrap_python_model().packaged
    with torch.no_grad():
        if task == "retrieval":
            processor = text_processor(packaged.model.config, params.evaluate.max_text_len)
            metrics, _, _ = evaluate_retrieval(packaged.model, processor, store, manifest, params.evaluate)
        else:
            metrics, _ = evaluate_qa(packaged.model, packaged.vocab, packaged.processor, store, manifest,
                                     params.evaluate.batch_size)
    return scores(metrics)
