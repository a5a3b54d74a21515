"""The fine-tuned models as MLflow pyfunc models (logged from code by the register stage).

    model = mlflow.pyfunc.load_model("models:/stgt-retrieval@champion")
    model.predict(pd.DataFrame({"text": ["a red circle moves left"]}))     # -> column `embedding`: (E,) per text
    model.predict(pd.DataFrame({"video_features": [features]}))           # -> column `embedding`: (Q, E) per video
    qa = mlflow.pyfunc.load_model("models:/stgt-qa@champion")
    qa.predict(pd.DataFrame({"video_features": [features], "question": ["what colour is the square?"]}))
                                                                            # -> column `answer` (None: unknown)

`video_features` are a clip's cached frozen-backbone tokens (T, 1 + h*w, C), as build_graphs stores them: the
models hold no backbone, so they stay small and need no backbone weights or packages. A video embedding is one
L2-normalised vector per query token; retrieval scores a text against a video by the maximum over the queries.

This file is the model's code (MLflow "models from code"): it imports nothing from `components`, only
`stgt_model`, which is logged with the model (code_paths), so it loads where the project is not installed.
Its artifact folder holds model.safetensors (weights without the backbone), config.json (task, resolved model
config, text length, backbone token shape), ans2label.json (QA) and tokenizer/.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.pyfunc import PythonModel, PythonModelContext
from safetensors.torch import load_file
from torch import Tensor

from stgt_model.backbones import VisionBackbone
from stgt_model.config import ModelConfig
from stgt_model.model import STGTModel
from stgt_model.qa import AnswerVocab
from stgt_model.qformer import TextProcessor, build_tokenizer

ARTIFACTS_KEY = "stgt"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
VOCAB_FILE = "ans2label.json"
TOKENIZER_DIR = "tokenizer"
BATCH_SIZE = 32


class CachedFeaturesOnly(VisionBackbone):
    """Stands in for the frozen backbone: the served model takes the backbone's cached tokens, never frames."""

    def __init__(self, out_dim: int, grid: tuple[int, int]) -> None:
        super().__init__(out_dim=out_dim, grid=grid, image_size=0, mean=(0.0,) * 3, std=(1.0,) * 3, frozen=True)

    def forward(self, frames: Tensor) -> Tensor:
        raise ValueError("this model takes cached backbone features (column video_features), not frames")


@dataclass
class Packaged:
    """A model folder as this module reads it."""

    task: str
    model: STGTModel
    processor: TextProcessor
    vocab: AnswerVocab | None
    config: dict[str, Any]


def load_folder(folder: Path) -> Packaged:
    config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    cfg = ModelConfig.model_validate(config["model"])
    # The tokenizer ships with the model: the text model it came from need not exist where the model is served.
    cfg = cfg.model_copy(update={"qformer": cfg.qformer.model_copy(update={"tokenizer": str(folder / TOKENIZER_DIR)})})
    backbone = config["backbone"]
    model = STGTModel(cfg, CachedFeaturesOnly(backbone["out_dim"], tuple(backbone["grid"])))
    missing, unexpected = model.load_state_dict(load_file(folder / WEIGHTS_FILE), strict=False)
    if [k for k in missing if not k.startswith("backbone.")] or unexpected:
        raise ValueError(f"{folder / WEIGHTS_FILE} does not fit its config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    model.eval()
    vocab_path = folder / VOCAB_FILE
    vocab = AnswerVocab.from_dict(json.loads(vocab_path.read_text(encoding="utf-8"))) if vocab_path.is_file() else None
    processor = TextProcessor(build_tokenizer(cfg.qformer), config["max_text_len"], padding="longest")
    return Packaged(config["task"], model, processor, vocab, config)


def _features(column: pd.Series) -> Tensor:
    """Rows of (T, N, C) nested lists or arrays -> (B, T, N, C) float32."""
    return torch.from_numpy(np.stack([np.array(np.asarray(v).tolist(), dtype=np.float32) for v in column]))


class STGTPyfunc(PythonModel):
    """Retrieval: embeds texts or videos. QA: answers a question about a video."""

    def load_context(self, context: PythonModelContext) -> None:
        self.folder = Path(context.artifacts[ARTIFACTS_KEY])
        self.packaged = load_folder(self.folder)

    def predict(self, context: PythonModelContext | None, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        with torch.no_grad():
            if self.packaged.task == "qa":
                return pd.DataFrame({"answer": self._answers(model_input)})
            return pd.DataFrame({"embedding": self._embeddings(model_input)})

    def _embeddings(self, frame: pd.DataFrame) -> list[list]:
        model = self.packaged.model
        has_text = "text" in frame and frame["text"].notna().any()
        has_video = "video_features" in frame and frame["video_features"].notna().any()
        if has_text == has_video:
            raise ValueError("give either a `text` or a `video_features` column")
        out: list[list] = []
        for start in range(0, len(frame), BATCH_SIZE):
            rows = frame.iloc[start:start + BATCH_SIZE]
            if has_text:
                encoded = self.packaged.processor([str(t) for t in rows["text"]])
                feats = model.encode_text(encoded["input_ids"], encoded["attention_mask"])[1]
            else:
                feats = model.encode_video(model.video_tokens(features=_features(rows["video_features"])))[1]
            out += feats.tolist()
        return out

    def _answers(self, frame: pd.DataFrame) -> list[str | None]:
        missing = {"video_features", "question"} - set(frame.columns)
        if missing:
            raise ValueError(f"QA input needs columns video_features and question; missing {sorted(missing)}")
        vocab, answers = self.packaged.vocab, []
        for start in range(0, len(frame), BATCH_SIZE):
            rows = frame.iloc[start:start + BATCH_SIZE]
            encoded = self.packaged.processor([str(q) for q in rows["question"]])
            logits = self.packaged.model.qa_logits(encoded["input_ids"], encoded["attention_mask"],
                                                   features=_features(rows["video_features"]))
            answers += [vocab.decode(i) for i in logits.argmax(dim=-1).tolist()]
        return answers


mlflow.models.set_model(STGTPyfunc())
