"""The fine-tuned models as MLflow pyfunc models (logged from code by the register stage).

    model = mlflow.pyfunc.load_model("models:/stgt-retrieval@champion")
    model.predict(pd.DataFrame({"text": ["a red circle moves left"]}))     # -> column `embedding`: (E,) per text
    model.predict(pd.DataFrame({"video": ["clips/a.mp4"]}))               # -> column `embedding`: (Q, E) per video
    qa = mlflow.pyfunc.load_model("models:/stgt-qa@champion")
    qa.predict(pd.DataFrame({"video": ["clips/a.mp4"], "question": ["what colour is the square?"]}))
                                                              # -> columns `answer` (None: unknown), `probability`

A video is given as one of:
- `video`: a local path or file:// URL the server can read, or an http(s):// URL it downloads;
- `video_bytes`: the file's bytes, base64-encoded (what a JSON request to `mlflow models serve` carries);
- `video_features`: a clip's cached frozen-backbone tokens (T, 1 + h*w, C), as build_graphs stores them.
A file is decoded, sampled, resized and run through the frozen backbone exactly as extract_frames and
build_graphs do for evaluation (stgt_model.features, with the frame settings and backbone weights packaged with
the model), then rounded to float16 like the cached features: the served embedding is the pipeline's.
Bad input (no such file, not a video, a missing or unknown column) raises MlflowException with
INVALID_PARAMETER_VALUE, which the scoring server answers with HTTP 400 and one line.

This file is the model's code (MLflow "models from code"): it imports nothing from `components`, only
`stgt_model`, which is logged with the model (code_paths), so it loads where the project is not installed.
Its artifact folder holds model.safetensors (weights without the backbone), backbone.safetensors (the frozen
backbone's weights; a hf_vision backbone is named by its local folder instead), config.json (task, resolved model
config, text length, backbone token shape, frame settings, evaluation's re-ranking depth), ans2label.json (QA)
and tokenizer/.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel, PythonModelContext
from safetensors.torch import load_file
from torch import Tensor

from stgt_model.backbones import VisionBackbone
from stgt_model.config import ModelConfig
from stgt_model.features import FrameSpec, build_frozen_backbone, clip_tokens, feature_extractor, read_frames
from stgt_model.model import STGTModel
from stgt_model.qa import AnswerVocab
from stgt_model.qformer import TextProcessor, build_tokenizer
from stgt_model.video.decode import DecodeError

ARTIFACTS_KEY = "stgt"
WEIGHTS_FILE = "model.safetensors"
BACKBONE_FILE = "backbone.safetensors"
CONFIG_FILE = "config.json"
VOCAB_FILE = "ans2label.json"
TOKENIZER_DIR = "tokenizer"
BATCH_SIZE = 32
VIDEO_COLUMNS = ("video", "video_bytes", "video_features")
DOWNLOAD_TIMEOUT_S = 60
MAX_DOWNLOAD_BYTES = 2 << 30


class CachedFeaturesOnly(VisionBackbone):
    """Stands in for the backbone inside the model: the model reads tokens; frames go through `Packaged.extractor`."""

    def __init__(self, out_dim: int, grid: tuple[int, int]) -> None:
        super().__init__(out_dim=out_dim, grid=grid, image_size=0, mean=(0.0,) * 3, std=(1.0,) * 3, frozen=True)

    def forward(self, frames: Tensor) -> Tensor:
        raise ValueError("the model reads backbone tokens; decode videos with Packaged.video_features")


def bad_input(message: str) -> MlflowException:
    """A caller's mistake: HTTP 400 under `mlflow models serve`, one line."""
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


@dataclass
class Packaged:
    """A model folder as this module reads it."""

    task: str
    model: STGTModel
    processor: TextProcessor
    vocab: AnswerVocab | None
    config: dict[str, Any]
    folder: Path
    _extractor: VisionBackbone | None = None

    @property
    def frames(self) -> FrameSpec | None:
        return FrameSpec.from_dict(self.config["frames"]) if "frames" in self.config else None

    @property
    def extractor(self) -> VisionBackbone:
        """The frozen backbone as build_graphs ran it; built on first use (a features-only caller never pays)."""
        if self._extractor is None:
            cfg = self.model.config.backbone
            weights = self.folder / BACKBONE_FILE
            state = load_file(weights) if weights.is_file() else None  # None: a hf_vision folder named by cfg.path
            self._extractor = feature_extractor(build_frozen_backbone(cfg, state))
        return self._extractor

    def video_features(self, video: str | Path | bytes) -> Tensor:
        """A video (path, file:// or http(s):// URL, or the file's bytes) -> float32 tokens (T, 1 + h*w, C),
        float16-rounded as the cached features are."""
        spec = self.frames
        if spec is None:
            raise bad_input("this model was packaged without frame settings: give `video_features`")
        with _local_video(video) as path:
            try:
                clip = read_frames(path, spec)
            except DecodeError as exc:
                raise bad_input(f"not a readable video: {_name(video)}: {exc.reason}") from None
        return clip_tokens(self.extractor, clip.frames[None])[0].float()


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
    return Packaged(config["task"], model, processor, vocab, config, folder)


def _name(video: Any) -> str:
    return f"<{len(video)} bytes>" if isinstance(video, bytes) else str(video)


class _local_video:
    """A context giving a local path for a path, file:// or http(s):// URL, or bytes; temporary copies removed."""

    def __init__(self, video: str | Path | bytes) -> None:
        self.video, self.tmp = video, None

    def __enter__(self) -> Path:
        video = self.video
        if isinstance(video, bytes):
            return self._write(video)
        text = str(video)
        scheme = urllib.parse.urlparse(text).scheme
        if scheme in ("http", "https"):
            try:
                with urllib.request.urlopen(text, timeout=DOWNLOAD_TIMEOUT_S) as response:
                    data = response.read(MAX_DOWNLOAD_BYTES + 1)
            except (OSError, ValueError) as exc:
                raise bad_input(f"cannot download {text}: {exc}") from None
            if len(data) > MAX_DOWNLOAD_BYTES:
                raise bad_input(f"{text} is larger than {MAX_DOWNLOAD_BYTES} bytes")
            return self._write(data)
        path = Path(urllib.parse.unquote(urllib.parse.urlparse(text).path)) if scheme == "file" else Path(text)
        if scheme not in ("", "file") and len(scheme) > 1:  # one letter: a Windows drive
            raise bad_input(f"video {text!r}: unsupported URL scheme {scheme!r} (use a path, file://, http(s)://)")
        if not path.is_file():
            raise bad_input(f"video not found: {path}")
        return path

    def _write(self, data: bytes) -> Path:
        handle, name = tempfile.mkstemp(prefix="stgt-video-")
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        self.tmp = Path(name)
        return self.tmp

    def __exit__(self, *exc: Any) -> None:
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)


def _features(column: pd.Series) -> Tensor:
    """Rows of (T, N, C) nested lists or arrays -> (B, T, N, C) float32."""
    return torch.from_numpy(np.stack([np.array(np.asarray(v).tolist(), dtype=np.float32) for v in column]))


def _present(frame: pd.DataFrame, column: str) -> bool:
    return column in frame and bool(frame[column].notna().any())


def _decode_base64(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        raise bad_input("video_bytes must be the file's bytes in base64") from None


class STGTPyfunc(PythonModel):
    """Retrieval: embeds texts or videos. QA: answers a question about a video."""

    def load_context(self, context: PythonModelContext) -> None:
        self.folder = Path(context.artifacts[ARTIFACTS_KEY])
        self.packaged = load_folder(self.folder)

    def predict(self, context: PythonModelContext | None, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        if not isinstance(model_input, pd.DataFrame):
            raise bad_input(f"expected a table of rows, got {type(model_input).__name__}")
        with torch.no_grad():
            if self.packaged.task == "qa":
                answers, probabilities = self._answers(model_input)
                return pd.DataFrame({"answer": answers, "probability": probabilities})
            return pd.DataFrame({"embedding": self._embeddings(model_input)})

    def video_tokens(self, frame: pd.DataFrame) -> Tensor:
        """(B, T, 1 + h*w, C) backbone tokens of each row's video, from whichever video column it has."""
        given = [c for c in VIDEO_COLUMNS if _present(frame, c)]
        if len(given) != 1:
            raise bad_input(f"give exactly one of the columns {', '.join(VIDEO_COLUMNS)}; got "
                            f"{', '.join(map(str, frame.columns)) or 'none'}")
        column = given[0]
        if frame[column].isna().any():
            raise bad_input(f"column {column} has an empty row")
        if column == "video_features":
            return _features(frame[column])
        if column == "video_bytes":
            return torch.stack([self.packaged.video_features(_decode_base64(v)) for v in frame[column]])
        return torch.stack([self.packaged.video_features(str(v)) for v in frame[column]])

    def _embeddings(self, frame: pd.DataFrame) -> list[list]:
        model = self.packaged.model
        has_text = _present(frame, "text")
        has_video = any(_present(frame, c) for c in VIDEO_COLUMNS)
        if has_text == has_video:
            raise bad_input(f"give either a `text` column or one video column ({', '.join(VIDEO_COLUMNS)}); "
                            f"got {', '.join(map(str, frame.columns)) or 'none'}")
        out: list[list] = []
        for start in range(0, len(frame), BATCH_SIZE):
            rows = frame.iloc[start:start + BATCH_SIZE]
            if has_text:
                encoded = self.packaged.processor([str(t) for t in rows["text"]])
                feats = model.encode_text(encoded["input_ids"], encoded["attention_mask"])[1]
            else:
                feats = model.encode_video(model.video_tokens(features=self.video_tokens(rows)))[1]
            out += feats.tolist()
        return out

    def _answers(self, frame: pd.DataFrame) -> tuple[list[str | None], list[float]]:
        if not _present(frame, "question"):
            raise bad_input("QA input needs a `question` column and one video column "
                            f"({', '.join(VIDEO_COLUMNS)})")
        vocab, answers, probabilities = self.packaged.vocab, [], []
        for start in range(0, len(frame), BATCH_SIZE):
            rows = frame.iloc[start:start + BATCH_SIZE]
            features = self.video_tokens(rows)
            encoded = self.packaged.processor([str(q) for q in rows["question"]])
            logits = self.packaged.model.qa_logits(encoded["input_ids"], encoded["attention_mask"],
                                                   features=features)
            best = logits.softmax(dim=-1).max(dim=-1)
            answers += [vocab.decode(i) for i in best.indices.tolist()]
            probabilities += best.values.tolist()
        return answers, probabilities


mlflow.models.set_model(STGTPyfunc())
