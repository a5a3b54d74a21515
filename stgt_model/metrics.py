"""Evaluation metrics: video-text retrieval, video QA accuracy and the temporal-order probe (pure numpy/torch).

Retrieval (metrics-reference.md §2, stgt-reference.md §4.2). `sim_t2v` is [num_texts x num_videos] and
`text_to_video[t]` is the video of text t; a video may have several captions, and v2t treats all of them as its
ground truths. Ranks are 0-based; R@k is a percentage, MdR/MnR are 1-based. Three conventions:

- "tie_aware" (§2.6 revised, the default): the expected result under random tie-breaking. For each (query, ground
  truth) pair with b candidates strictly better and m others tied with it, rank = b + m / 2 and its R@k hit is
  clamp((k - b) / (m + 1), 0, 1) (a ground truth tied with one other at the top counts 0.5 toward R@1); a query
  with several ground truths takes the best of them, and ground truths tied with it do not count against it (the
  same expectation taken over the whole tie group: `_expected_hit`).
  MdR = np.median(rank) + 1, MnR = mean(rank) + 1.
- "clip4clip" (§2.1): CLIP4Clip's `compute_metrics` when every video has exactly one caption, else its
  multi-sentence path (-inf padded [V, C_max, V] tensor; t2v by double argsort, v2t by max over caption groups).
- "albef" (§2.2): ALBEF/LAVIS `itm_eval`: position in `np.argsort(row)[::-1]`, minimum over a video's captions,
  MdR (STGT's fork) on t2v only, no MnR. Tie order is np.argsort's and therefore platform dependent: with NumPy
  2.4.6 on an AVX2 CPU even 4-long rows are not sorted stably; only rows of <= 3 candidates are predictable.

STGT re-ranks the top k candidates of every query with its matching head (`rerank_topk`). The reference codebases
put -100 in every other cell, so all candidates beyond k tie; clip4clip and albef keep that fill
(`rerank_fill`). Under tie_aware those candidates keep their coarse similarity, below every re-ranked one, so
R@5, R@10, MdR and MnR stay meaningful whatever k is.

Accuracies and shares are percentages too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from math import comb
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

Convention = Literal["tie_aware", "clip4clip", "albef"]
CONVENTIONS: tuple[str, ...] = ("tie_aware", "clip4clip", "albef")
RECALL_KS: tuple[int, ...] = (1, 5, 10)
RERANK_FILL_VALUE = -100.0  # official: cells outside the ITM top-k (stgt-reference §4.2)

ArrayLike = np.ndarray | Tensor | Sequence


def _to_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _as_scores(x: ArrayLike) -> np.ndarray:
    """Float scores in their own dtype: the compat paths must sort the same float32 values the reference sorts."""
    scores = _to_numpy(x)
    return scores if np.issubdtype(scores.dtype, np.floating) else scores.astype(np.float64)


# ---------------------------------------------------------------------------------------------------------------
# Retrieval: entry point


def retrieval_metrics(
    sim_t2v: ArrayLike,
    text_to_video: ArrayLike,
    compat: Convention = "tie_aware",
    sim_v2t: ArrayLike | None = None,
    ks: Sequence[int] = RECALL_KS,
) -> dict[str, dict[str, Any]]:
    """{"t2v": {...}, "v2t": {...}}, each with R@k for every k in `ks` (R@1, R@5, R@10 by default), MdR, MnR (None
    where the convention has none), num_queries and ranks (0-based, one per query: texts in input order for t2v,
    videos for v2t).

    `sim_v2t` [num_videos x num_texts] defaults to sim_t2v.T; pass it when the two directions are scored
    separately, as in STGT's re-ranking where each direction takes its own top-k (§4.2).
    """
    if compat not in CONVENTIONS:
        raise ValueError(f"compat must be one of {CONVENTIONS}, got {compat!r}")
    sim = _as_scores(sim_t2v)
    video_of_text = _check_text_to_video(text_to_video, sim.shape)
    sim_vt = sim.T if sim_v2t is None else _as_scores(sim_v2t)
    if sim_vt.shape != sim.shape[::-1]:
        raise ValueError(f"sim_v2t has shape {sim_vt.shape}, expected {sim.shape[::-1]}")
    texts_of_video = _video_to_texts(video_of_text, sim.shape[1])
    ks = tuple(ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must hold recall cut-offs of at least 1, got {ks}")
    if compat == "tie_aware":
        return _tie_aware_metrics(sim, sim_vt, video_of_text, texts_of_video, ks)
    if compat == "albef":
        return _albef_metrics(sim, sim_vt, video_of_text, texts_of_video, ks)
    return _clip4clip_metrics(sim, sim_vt, video_of_text, texts_of_video, ks)


def _check_text_to_video(text_to_video: ArrayLike, shape: tuple[int, ...]) -> np.ndarray:
    video_of_text = _to_numpy(text_to_video).astype(np.int64)
    if len(shape) != 2 or video_of_text.shape != (shape[0],):
        raise ValueError(f"sim_t2v must be [num_texts x num_videos] with one text_to_video entry per row; "
                         f"got sim {shape} and text_to_video {video_of_text.shape}")
    if video_of_text.size and (video_of_text.min() < 0 or video_of_text.max() >= shape[1]):
        raise ValueError(f"text_to_video must index the {shape[1]} video columns")
    return video_of_text


def _video_to_texts(video_of_text: np.ndarray, num_videos: int) -> list[np.ndarray]:
    """Each video's texts in input order. Every video needs one: it is a v2t query with no answer otherwise."""
    texts_of_video = [np.flatnonzero(video_of_text == v) for v in range(num_videos)]
    missing = [v for v, texts in enumerate(texts_of_video) if not len(texts)]
    if missing:
        raise ValueError(f"videos without any caption: {missing[:10]}{' ...' if len(missing) > 10 else ''}")
    return texts_of_video


def _recalls(ranks: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    return {f"R@{k}": 100.0 * float(np.sum(ranks < k)) / len(ranks) for k in ks}


def _summary(ranks: np.ndarray, median_rank: float | None, mean_rank: float | None,
             ks: Sequence[int]) -> dict[str, Any]:
    return {**_recalls(ranks, ks), "MdR": median_rank, "MnR": mean_rank, "num_queries": len(ranks), "ranks": ranks}


# ---------------------------------------------------------------------------------------------------------------
# Retrieval: tie-aware (metrics-reference §2.6, revised)


def _best_tie_counts(sim: np.ndarray, ground_truths: Sequence[np.ndarray]
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per query (row q of `sim`), around its best-placed ground truth: the candidates strictly better (b), the
    other candidates tied with it (m) and the ground truths tied with it, itself included (g). No ground truth is
    better than the best one, and one below its tie group cannot come first, so these counts decide the query."""
    if np.isnan(sim).any():
        raise ValueError("similarities contain NaN: a NaN ground truth has no rank")
    sorted_rows = np.sort(sim, axis=1)  # ascending; binary search then counts better and tied candidates
    better, tied, own = (np.empty(len(ground_truths)) for _ in range(3))
    for query, candidates in enumerate(ground_truths):
        best_score = np.max(sim[query, candidates])
        below = np.searchsorted(sorted_rows[query], best_score, side="left")
        not_above = np.searchsorted(sorted_rows[query], best_score, side="right")
        own[query] = np.count_nonzero(sim[query, candidates] == best_score)
        better[query], tied[query] = sim.shape[1] - not_above, not_above - below - own[query]
    return better, tied, own


def _expected_hit(better: np.ndarray, tied: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """P(a ground truth lands before position k) when the tie group (m other candidates, g ground truths) is put in
    random order after the b better ones: 1 - C(m, r) / C(m + g, r) for r = k - b free places, which is §2.6's
    clamp((k - b) / (m + 1), 0, 1) for one ground truth. Ground truths tied with each other do not push each other
    down: one of them certainly takes the first of their places."""
    free = np.clip(k - better, 0, None).astype(int)
    return np.array([1.0 - comb(int(m), r) / comb(int(m + g), r) if r <= m + g else 1.0
                     for r, m, g in zip(free, tied, own)])


def _tie_aware_summary(better: np.ndarray, tied: np.ndarray, own: np.ndarray, ks: Sequence[int]) -> dict[str, Any]:
    ranks = better + tied / (own + 1)  # the first ground truth's expected position: b + m / 2 for one of them
    recalls = {f"R@{k}": 100.0 * float(np.mean(_expected_hit(better, tied, own, k))) for k in ks}
    return {**recalls, "MdR": float(np.median(ranks)) + 1, "MnR": float(np.mean(ranks)) + 1,
            "num_queries": len(ranks), "ranks": ranks}


def _tie_aware_metrics(
    sim: np.ndarray, sim_vt: np.ndarray, video_of_text: np.ndarray, texts_of_video: list[np.ndarray],
    ks: Sequence[int],
) -> dict[str, dict[str, Any]]:
    t2v = _best_tie_counts(sim, video_of_text[:, None])
    v2t = _best_tie_counts(sim_vt, texts_of_video)
    return {"t2v": _tie_aware_summary(*t2v, ks), "v2t": _tie_aware_summary(*v2t, ks)}


# ---------------------------------------------------------------------------------------------------------------
# Retrieval: ALBEF / LAVIS itm_eval (metrics-reference §2.2)


def _albef_ranks(sim: np.ndarray, ground_truths: Sequence[np.ndarray]) -> np.ndarray:
    """Position in np.argsort(row)[::-1] (default kind, as itm_eval), minimum over the query's ground truths."""
    order = np.argsort(sim, axis=1)[:, ::-1]  # row-wise identical to itm_eval's per-row np.argsort(score)[::-1]
    is_truth = np.zeros(sim.shape, dtype=bool)
    is_truth[np.repeat(np.arange(len(sim)), [len(c) for c in ground_truths]), np.concatenate(ground_truths)] = True
    # the first ground truth met in that order holds the minimum position
    return np.take_along_axis(is_truth, order, axis=1).argmax(axis=1).astype(np.float64)


def _albef_metrics(
    sim: np.ndarray, sim_vt: np.ndarray, video_of_text: np.ndarray, texts_of_video: list[np.ndarray],
    ks: Sequence[int],
) -> dict[str, dict[str, Any]]:
    # itm_eval's img_r* is text->video and txt_r* video->text; only STGT's fork adds a (t2v) MedianR, nobody MnR.
    t2v = _albef_ranks(sim, video_of_text[:, None])
    v2t = _albef_ranks(sim_vt, texts_of_video)
    return {"t2v": _summary(t2v, float(np.median(t2v)) + 1, None, ks), "v2t": _summary(v2t, None, None, ks)}


# ---------------------------------------------------------------------------------------------------------------
# Retrieval: CLIP4Clip metrics.py (metrics-reference §2.1)


def _clip4clip_square(x: np.ndarray, ks: Sequence[int]) -> dict[str, Any]:
    """`compute_metrics` on a square matrix whose diagonal is the ground truth. Every tied position of a row's
    ground truth goes into `ind` and grows the denominator. The per-query rank returned is the mean of the row's
    positions in `ind` (NaN for a row with none, i.e. an inf/NaN ground truth, which the reference skips)."""
    sorted_rows = np.sort(-x, axis=1)
    rows, ind = np.where(sorted_rows - np.diag(-x)[:, None] == 0)
    metrics = {f"R@{k}": float(np.sum(ind < k)) * 100 / len(ind) for k in ks}
    counts = np.bincount(rows, minlength=len(x))
    ranks = np.full(len(x), np.nan)
    np.divide(np.bincount(rows, weights=ind, minlength=len(x)), counts, out=ranks, where=counts > 0)
    return {**metrics, "MdR": float(np.median(ind)) + 1, "MnR": float(np.mean(ind)) + 1,
            "num_queries": len(x), "ranks": ranks}


def _clip4clip_grouped(sim_t2v: np.ndarray, texts_of_video: list[np.ndarray]) -> np.ndarray:
    """[V, C_max, V]: each video's caption rows, padded to C_max with -inf rows (the cut_off_points reshape).
    The reference pads with a default-dtype np.full, so the tensor it sorts is float64 whatever the input."""
    c_max = max(len(texts) for texts in texts_of_video)
    padding = np.full((c_max, sim_t2v.shape[1]), -np.inf)
    return np.stack([np.concatenate((sim_t2v[texts], padding[len(texts):])) for texts in texts_of_video])


def _clip4clip_multi_t2v(grouped: np.ndarray, video_of_text: np.ndarray, slot_of_text: np.ndarray,
                         ks: Sequence[int]) -> dict[str, Any]:
    """`tensor_text_to_video_metrics`: torch.argsort order for ties, captions with an inf/NaN own score (the
    padding) dropped, R@k in float32 as the reference's tensor division gives, MedianR by torch.median (lower
    middle of an even count)."""
    sim = torch.from_numpy(grouped)
    first = torch.argsort(sim.permute(1, 0, 2), dim=-1, descending=True)
    second = torch.argsort(first, dim=-1, descending=False)  # [C_max, V, V]: rank of each video per caption
    own_scores = torch.flatten(torch.diagonal(sim, dim1=0, dim2=2))
    valid = torch.flatten(torch.diagonal(second, dim1=1, dim2=2))[~(own_scores.isinf() | own_scores.isnan())]
    metrics = {f"R@{k}": float(torch.sum(valid < k) * 100 / len(valid)) for k in ks}
    ranks = second[slot_of_text, video_of_text, video_of_text].numpy().astype(np.float64)
    ranks[~np.isfinite(grouped[video_of_text, slot_of_text, video_of_text])] = np.nan  # dropped, as above
    return {**metrics, "MdR": float(torch.median(valid + 1)), "MnR": float(np.mean(valid.numpy() + 1)),
            "num_queries": len(ranks), "ranks": ranks}


def _clip4clip_group_max(grouped: np.ndarray) -> np.ndarray:
    """`tensor_video_to_text_sim`: NaN -> -inf, max over each video's captions -> [V (query) x V (group)]."""
    grouped = np.where(np.isnan(grouped), -np.inf, grouped)
    return grouped.max(axis=1).T


def _slot_of_text(texts_of_video: list[np.ndarray], num_texts: int) -> np.ndarray:
    slots = np.empty(num_texts, dtype=np.int64)
    for texts in texts_of_video:
        slots[texts] = np.arange(len(texts))
    return slots


def _clip4clip_metrics(
    sim: np.ndarray, sim_vt: np.ndarray, video_of_text: np.ndarray, texts_of_video: list[np.ndarray],
    ks: Sequence[int],
) -> dict[str, dict[str, Any]]:
    if all(len(texts) == 1 for texts in texts_of_video):
        # Square path: reorder so that the ground truth is the diagonal (sorting per row makes column order moot).
        text_of_video = np.concatenate(texts_of_video)
        t2v = _clip4clip_square(sim[text_of_video], ks)
        v2t = _clip4clip_square(sim_vt[:, text_of_video], ks)
        t2v["ranks"] = t2v["ranks"][np.argsort(text_of_video)]  # back to the caller's text order
        return {"t2v": t2v, "v2t": v2t}
    slot_of_text = _slot_of_text(texts_of_video, len(video_of_text))
    t2v = _clip4clip_multi_t2v(_clip4clip_grouped(sim, texts_of_video), video_of_text, slot_of_text, ks)
    v2t = _clip4clip_square(_clip4clip_group_max(_clip4clip_grouped(sim_vt.T, texts_of_video)), ks)
    return {"t2v": t2v, "v2t": v2t}


# ---------------------------------------------------------------------------------------------------------------
# Score post-processing: dual softmax (§2.4) and STGT's ITM re-ranking (stgt-reference §4.2)


def dual_softmax(sim: ArrayLike, temperature: float = 1.0) -> np.ndarray:
    """S * softmax(S / temperature) over the QUERY axis (axis 0), for each candidate column (TS2-Net/InternVideo1
    inference DSL: a prior that each candidate matches few queries). Off by default; it needs the whole query set
    at once, so evaluate reports it next to the plain numbers, never instead of them. Returns float64."""
    scores = torch.as_tensor(_as_scores(sim), dtype=torch.float64)
    return (scores * torch.softmax(scores / temperature, dim=0)).numpy()


def rerank_fill(compat: Convention) -> float | None:
    """What `rerank_topk` puts outside the top k under each convention: the reference codebases' -100
    (clip4clip, albef), or nothing (tie_aware, §2.6 revised): those candidates keep their coarse similarity."""
    if compat not in CONVENTIONS:
        raise ValueError(f"compat must be one of {CONVENTIONS}, got {compat!r}")
    return None if compat == "tie_aware" else RERANK_FILL_VALUE


def rerank_topk(
    coarse_sim: ArrayLike,
    itm_scores_fn: Callable[[np.ndarray, np.ndarray], ArrayLike],
    k: int,
    fill: float | None = RERANK_FILL_VALUE,
    pairs_per_call: int = 256,
) -> np.ndarray:
    """STGT's protocol for one direction: per query row, the top-k candidates by the coarse ITC score are scored
    by the matching head and those cells become p_ITM + s, every other cell `fill`. k is capped at the number of
    candidates (tiny test sets).

    fill=None keeps every other cell at its coarse score s instead, so candidates beyond k stay in coarse order.
    They also stay below the re-ranked ones: those were the k best by s, and p_ITM >= 0 (checked) cannot lower
    them. The one exception is a re-ranked candidate whose s equals that of one left out (the top-k choice
    between equal scores is arbitrary) and whose p_ITM adds nothing in float: the two then tie, as they did.

    itm_scores_fn(query_indices, candidate_indices) -> match probabilities, one per (query, candidate) pair. The
    pairs of consecutive queries go together, at most pairs_per_call (and at least one query's k) per call: the
    matching head runs in batches instead of one small pass per query."""
    sims = torch.as_tensor(_as_scores(coarse_sim))
    scores = sims.clone() if fill is None else torch.full_like(sims, fill)
    top_sim, top_idx = sims.topk(k=min(k, sims.shape[1]), dim=1)  # torch.topk as the official compute_sim_matrix
    queries_per_call = max(1, pairs_per_call // top_idx.shape[1])
    for start in range(0, len(sims), queries_per_call):
        rows = torch.arange(start, min(start + queries_per_call, len(sims)))
        candidates = top_idx[rows]
        query_of_pair = rows[:, None].expand_as(candidates)
        p_match = torch.as_tensor(_to_numpy(itm_scores_fn(query_of_pair.flatten().numpy(),
                                                          candidates.flatten().numpy())), dtype=sims.dtype)
        if fill is None and not bool((p_match >= 0).all()):  # NaN fails too
            raise ValueError("rerank_topk with fill=None needs match probabilities >= 0: a negative score could "
                             "drop a re-ranked candidate below the ones left out")
        scores[query_of_pair, candidates] = p_match.view_as(candidates) + top_sim[rows]
    return scores.numpy()


# ---------------------------------------------------------------------------------------------------------------
# Video QA accuracy (metrics-reference §2.7, stgt-reference §4.3)


def majority_answer(train_answers: Iterable[str]) -> str:
    """The most frequent training answer; ties broken alphabetically, as AnswerVocab.build ranks answers."""
    counts = Counter(train_answers)
    if not counts:
        raise ValueError("no training answers")
    return min(counts, key=lambda answer: (-counts[answer], answer))


def _percent(hits: np.ndarray) -> float:
    return 100.0 * float(np.mean(hits))


def qa_metrics(
    predictions: Sequence[str | None],
    answers: Sequence[str],
    question_types: Sequence[str],
    vocab: Collection[str],
    train_answers: Iterable[str],
) -> dict[str, Any]:
    """Exact-match accuracy over ALL questions. A ground truth outside `vocab` counts wrong even if a generative
    model produced that string (ClipBERT/ALPRO; dropping them inflates accuracy, §2.7). The majority baseline
    always answers the most frequent training answer, under the same rule.

    Keys: accuracy, majority_answer, majority_accuracy, num_questions, num_oov, oov_share and
    per_type {type: {accuracy, majority_accuracy, count, share}}.
    """
    if not (len(predictions) == len(answers) == len(question_types)) or not len(answers):
        raise ValueError(f"need as many predictions ({len(predictions)}) and question types "
                         f"({len(question_types)}) as answers ({len(answers)}), and at least one")
    majority = majority_answer(train_answers)
    gold = np.array(answers, dtype=object)
    in_vocab = np.array([answer in vocab for answer in answers])
    correct = (np.array(predictions, dtype=object) == gold) & in_vocab
    majority_correct = (gold == majority) & in_vocab
    types = np.array(question_types, dtype=object)
    per_type = {}
    for kind in sorted(set(question_types)):
        of_kind = types == kind
        per_type[kind] = {"accuracy": _percent(correct[of_kind]),
                          "majority_accuracy": _percent(majority_correct[of_kind]),
                          "count": int(np.sum(of_kind)), "share": _percent(of_kind)}
    return {"accuracy": _percent(correct), "majority_answer": majority,
            "majority_accuracy": _percent(majority_correct), "num_questions": len(answers),
            "num_oov": int(np.sum(~in_vocab)), "oov_share": _percent(~in_vocab), "per_type": per_type}


# ---------------------------------------------------------------------------------------------------------------
# Temporal-order probe (clip vs its time-reversed twin)


def temporal_order_probe(pair_scores: ArrayLike) -> dict[str, Any]:
    """pair_scores [P, 2, 2] = [[s(clip, cap_clip), s(clip, cap_twin)], [s(twin, cap_clip), s(twin, cap_twin)]].

    A pair passes when each caption scores strictly higher with its own clip than with the other one. Ties fail:
    a model blind to frame order scores a clip and its reversal alike and must get 0, not 50 or 100.
    Keys: pair_accuracy (both captions), forward_accuracy (the clip's caption), reversed_accuracy (the twin's),
    num_pairs, pair_correct (bool per pair).
    """
    scores = _to_numpy(pair_scores)
    if scores.ndim != 3 or scores.shape[1:] != (2, 2) or not len(scores):
        raise ValueError(f"pair_scores must be [P, 2, 2] with P >= 1, got {scores.shape}")
    forward = scores[:, 0, 0] > scores[:, 1, 0]
    backward = scores[:, 1, 1] > scores[:, 0, 1]
    both = forward & backward
    return {"pair_accuracy": _percent(both), "forward_accuracy": _percent(forward),
            "reversed_accuracy": _percent(backward), "num_pairs": len(scores), "pair_correct": both}
