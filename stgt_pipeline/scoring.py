"""Scoring a trained model on the test split: what the evaluate stage reports and the register stage re-scores the
champion with, so that both compare like with like.

Retrieval follows the reference protocol (stgt-reference §4.2): coarse ITC scores (max over queries, no
temperature), the top `k_test` candidates of every query re-scored by the matching head, final score =
p_match + similarity. Beyond the top k, the clip4clip and albef conventions put -100 as the reference code does
(all those candidates tie); tie_aware keeps their coarse similarity, so they rank in coarse order below the
re-ranked ones (metrics-reference §2.6 revised). The maths (ranks, recall, the probe's pair accuracy, QA accuracy)
is stgt_model.metrics; this module encodes and scores.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from stgt_model.data import ClipStore, VideoQADataset, probe_pairs
from stgt_model.metrics import (
    dual_softmax,
    qa_metrics,
    rerank_fill,
    rerank_topk,
    retrieval_metrics,
    temporal_order_probe,
)
from stgt_model.model import STGTModel
from stgt_model.qa import AnswerVocab
from stgt_model.qformer import TextProcessor
from stgt_pipeline.params import EvaluateConfig

RECALL_KS_PLOTTED = (1, 2, 3, 5, 10, 20, 50)


# ---------------------------------------------------------------------------------------------------------------
# encoding


def encode_videos(model: STGTModel, store: ClipStore, video_ids: list[str], batch_size: int) -> tuple[Tensor, Tensor]:
    """-> (video tokens (V, N, width) for the matching head, query features (V, Q, E))."""
    tokens, feats = [], []
    for start in range(0, len(video_ids), batch_size):
        features = torch.stack([store.get(v) for v in video_ids[start:start + batch_size]])
        video_tokens = model.video_tokens(features=features)
        tokens.append(video_tokens)
        feats.append(model.encode_video(video_tokens)[1])
    return torch.cat(tokens), torch.cat(feats)


def encode_texts(model: STGTModel, processor: TextProcessor, texts: list[str],
                 batch_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """-> (input_ids, attention_mask) padded to one width, text features (T, E)."""
    encoded = processor(texts)
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    feats = [model.encode_text(ids[s:s + batch_size], mask[s:s + batch_size])[1] for s in range(0, len(ids), batch_size)]
    return ids, mask, torch.cat(feats)


def match_scores(model: STGTModel, video_tokens: Tensor, ids: Tensor, mask: Tensor) -> np.ndarray:
    return model.itm_scores(video_tokens, ids, mask).numpy()


# ---------------------------------------------------------------------------------------------------------------
# retrieval


def evaluate_retrieval(model: STGTModel, processor: TextProcessor, store: ClipStore, manifest: pd.DataFrame,
                       cfg: EvaluateConfig) -> tuple[dict[str, Any], dict[str, pd.DataFrame], pd.DataFrame]:
    test = manifest[(manifest["split"] == "test") & manifest["video_id"].isin(store.index["video_id"])]
    video_ids = list(test["video_id"])
    texts, text_video = [], []
    for v, captions in enumerate(test["captions"]):
        texts += [str(c) for c in captions]
        text_video += [v] * len(captions)
    video_tokens, video_feat = encode_videos(model, store, video_ids, cfg.batch_size)
    ids, mask, text_feat = encode_texts(model, processor, texts, cfg.batch_size)
    coarse_t2v = model.similarity(video_feat, text_feat).T.numpy()  # [texts x videos]

    def pair_scores(videos: np.ndarray, text_idx: np.ndarray) -> np.ndarray:
        return match_scores(model, video_tokens[videos], ids[text_idx], mask[text_idx])

    fill = rerank_fill(cfg.compat)
    scores_t2v = rerank_topk(coarse_t2v, lambda texts, videos: pair_scores(videos, texts), cfg.k_test,
                             fill=fill, pairs_per_call=cfg.batch_size)
    scores_v2t = rerank_topk(coarse_t2v.T, pair_scores, cfg.k_test, fill=fill, pairs_per_call=cfg.batch_size)
    result = retrieval_metrics(scores_t2v, text_video, compat=cfg.compat, sim_v2t=scores_v2t)
    metrics: dict[str, Any] = {
        "compat": cfg.compat, "k_test": cfg.k_test, "num_videos": len(video_ids), "num_texts": len(texts),
        "chance_R@1": 100.0 / len(video_ids),
        **{d: {k: v for k, v in result[d].items() if k != "ranks"} for d in ("t2v", "v2t")},
    }
    if cfg.dual_softmax:
        # On the ITC logits (similarity / temperature), as TS2-Net and InternVideo apply it; no re-ranking.
        logits = coarse_t2v / float(model.temp)
        dsl = retrieval_metrics(dual_softmax(logits), text_video, compat=cfg.compat,
                                sim_v2t=dual_softmax(logits.T))
        metrics["dual_softmax"] = {d: {k: v for k, v in dsl[d].items() if k != "ranks"} for d in ("t2v", "v2t")}
    ranks = {
        "t2v": pd.DataFrame({"text": texts, "video_id": [video_ids[v] for v in text_video],
                             "rank": result["t2v"]["ranks"]}),
        "v2t": pd.DataFrame({"video_id": video_ids, "rank": result["v2t"]["ranks"]}),
    }
    # R@k by the same convention as metrics.json (tie_aware: expected hits, not ranks < k), at more cut-offs
    curve = retrieval_metrics(scores_t2v, text_video, compat=cfg.compat, sim_v2t=scores_v2t, ks=RECALL_KS_PLOTTED)
    recall_curve = pd.DataFrame([{"k": k, "direction": d, "recall": curve[d][f"R@{k}"]}
                                 for d in ("t2v", "v2t") for k in RECALL_KS_PLOTTED])
    return metrics, ranks, recall_curve


# ---------------------------------------------------------------------------------------------------------------
# temporal-order probe


def evaluate_probe(model: STGTModel, processor: TextProcessor, store: ClipStore,
                   manifest: pd.DataFrame) -> tuple[dict[str, Any], pd.DataFrame]:
    pairs = [(a, b) for a, b in probe_pairs(manifest) if a in store and b in store]
    if not pairs:
        return {"skipped": "no test clip has a time-reversed twin in split 'probe'"}, pd.DataFrame(
            columns=["video_id", "twin_id", "correct"])
    caption = {v: str(c[0]) for v, c in zip(manifest["video_id"], manifest["captions"])}
    clips = [v for pair in pairs for v in pair]  # clip0, twin0, clip1, twin1, ...
    video_tokens, video_feat = encode_videos(model, store, clips, 64)
    ids, mask, text_feat = encode_texts(model, processor, [caption[v] for v in clips], 64)
    sims = model.similarity(video_feat, text_feat)  # [clips x captions]
    # Every (video, caption) combination within a pair: rows = clip / twin, columns = clip's / twin's caption.
    p = len(pairs)
    video_idx = torch.tensor([[2 * i + r for r in (0, 1) for _ in (0, 1)] for i in range(p)]).flatten()
    text_idx = torch.tensor([[2 * i + c for _ in (0, 1) for c in (0, 1)] for i in range(p)]).flatten()
    p_match = model.itm_scores(video_tokens[video_idx], ids[text_idx], mask[text_idx])
    pair_sims = sims[video_idx, text_idx]
    result = temporal_order_probe((p_match + pair_sims).view(p, 2, 2).numpy())
    # The coarse similarity alone, as a diagnostic: how much of the order the contrastive embedding carries.
    coarse = temporal_order_probe(pair_sims.view(p, 2, 2).numpy())
    result["coarse_only"] = {k: v for k, v in coarse.items() if k not in ("pair_correct", "num_pairs")}
    rows = pd.DataFrame({"video_id": [a for a, _ in pairs], "twin_id": [b for _, b in pairs],
                         "correct": result.pop("pair_correct")})
    return result, rows


# ---------------------------------------------------------------------------------------------------------------
# video QA


def evaluate_qa(model: STGTModel, vocab: AnswerVocab, processor: TextProcessor, store: ClipStore,
                manifest: pd.DataFrame, batch_size: int) -> tuple[dict[str, Any], pd.DataFrame]:
    """Accuracy over the test questions, per question type, beside always answering the top training answer."""
    dataset = VideoQADataset(store, manifest, "test", vocab)
    items = [dataset.items[i] for i in range(len(dataset))]
    predictions: list[str | None] = []
    for start in range(0, len(items), batch_size):
        batch = items[start:start + batch_size]
        features = torch.stack([store.get(video_id) for video_id, _ in batch])
        encoded = processor([qa["question"] for _, qa in batch])
        logits = model.qa_logits(encoded["input_ids"], encoded["attention_mask"], features=features)
        predictions += [vocab.decode(i) for i in logits.argmax(dim=-1).tolist()]
    answers = [qa["answer"] for _, qa in items]
    types = [qa["type"] for _, qa in items]
    train_answers = [qa["answer"] for qas in manifest.loc[manifest["split"] == "train", "qa"] if qas is not None
                     for qa in qas]
    metrics = qa_metrics(predictions, answers, types, vocab.answers, train_answers)
    rows = pd.DataFrame({"video_id": [v for v, _ in items], "question": [qa["question"] for _, qa in items],
                         "type": types, "answer": answers, "prediction": predictions})
    return metrics, rows
