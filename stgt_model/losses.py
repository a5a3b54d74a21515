"""STGT training losses (stgt-reference.md §2) as pure functions on tensors, plus the cross-rank gathers.

Shapes: b local samples, B_all = b * world gathered samples, Q queries, E the alignment width. Video features
are (b, Q, E) and text features (b, E), both L2-normalised. Logits are (b, B_all): local rows against gathered
columns; the positive of local row i is column rank * b + i.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100
HARD_NEGATIVE_MASK_VALUE = -10000.0  # official: the local positives' logits before sampling (§2(c))
CSAL_BELOW_FLOOR_VALUE = -100.0  # official: cross-similarities under the floor (§2(b))


# ---------------------------------------------------------------------------------------------------------------
# Gathers (single process: the local tensors, with their gradient, as in the reference §2)


def rank_and_world_size() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def concat_all_gather(tensor: Tensor) -> Tensor:
    """Concatenate `tensor` from all ranks along dim 0, WITHOUT gradient (official `concat_all_gather`)."""
    _, world_size = rank_and_world_size()
    if world_size == 1:
        return tensor
    with torch.no_grad():
        gathered = [torch.empty_like(tensor) for _ in range(world_size)]
        dist.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered, dim=0)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient and returns this rank's slice (LAVIS GatherLayer)."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> tuple[Tensor, ...]:
        gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, tensor.contiguous())
        return tuple(gathered)

    @staticmethod
    def backward(ctx, *grads: Tensor) -> Tensor:
        stacked = torch.stack(grads)
        dist.all_reduce(stacked)
        return stacked[dist.get_rank()]


def all_gather_with_grad(tensor: Tensor) -> Tensor:
    """Concatenate `tensor` from all ranks along dim 0, keeping the gradient (used for the VTM video tokens)."""
    _, world_size = rank_and_world_size()
    if world_size == 1:
        return tensor
    return torch.cat(_GatherWithGrad.apply(tensor), dim=0)


def positive_indices(batch_size: int, rank: int, device: torch.device | str | None = None) -> Tensor:
    """Column of each local sample's positive among the gathered samples: rank * b + i."""
    return torch.arange(batch_size, device=device) + rank * batch_size


# ---------------------------------------------------------------------------------------------------------------
# Contrastive logits, VTC and CSAL


def max_query_similarity(video_feat: Tensor, text_feat: Tensor) -> Tensor:
    """s(i, j) = max_k q_ik . t_j for video_feat (Bv, Q, E) and text_feat (Bt, E) -> (Bv, Bt). No temperature."""
    return torch.einsum("vqe,te->vtq", video_feat, text_feat).amax(dim=-1)


def contrastive_logits(
    video_feat: Tensor, text_feat: Tensor, video_feat_all: Tensor, text_feat_all: Tensor, temp: Tensor | float
) -> tuple[Tensor, Tensor]:
    """(video->text, text->video) logits, each (b, B_all): local rows against gathered columns, divided by temp."""
    video_to_text = max_query_similarity(video_feat, text_feat_all) / temp
    text_to_video = max_query_similarity(video_feat_all, text_feat).t() / temp
    return video_to_text, text_to_video


def vtc_loss(logits_v2t: Tensor, logits_t2v: Tensor, positives: Tensor, label_smoothing: float = 0.1) -> Tensor:
    """Standard VTC: mean of the two directions' cross-entropies with one-hot targets (smoothing 0.1, §2(a))."""
    return 0.5 * (
        F.cross_entropy(logits_v2t, positives, label_smoothing=label_smoothing)
        + F.cross_entropy(logits_t2v, positives, label_smoothing=label_smoothing)
    )


def twin_order_loss(logits_v2t: Tensor, logits_t2v: Tensor, positives: Tensor, twin_columns: Tensor) -> Tensor:
    """Not in STGT: each sample against its time-reversed twin alone, both directions (two-way cross-entropy).

    twin_columns (b,): the gathered column of each local sample's twin, -1 for a sample without one. The twin is
    already a negative of VTC and CSAL, but one among the batch: early on the other, easy negatives take most of
    the gradient, and the model learned frame order only late (the same hard-negative idea as the time-order
    contrast of Bagad et al., "Test of Time", CVPR 2023). Zero (with gradient) when no sample has its twin."""
    rows = (twin_columns >= 0).nonzero().squeeze(1)
    if len(rows) == 0:
        return logits_v2t.sum() * 0.0
    columns = torch.stack([positives[rows], twin_columns[rows]], dim=1)  # the positive first
    target = torch.zeros(len(rows), dtype=torch.long, device=logits_v2t.device)
    return 0.5 * (
        F.cross_entropy(logits_v2t[rows[:, None], columns], target)
        + F.cross_entropy(logits_t2v[rows[:, None], columns], target)
    )


def mean_query_embedding(video_feat: Tensor) -> Tensor:
    """(B, Q, E) normalised queries -> (B, E): their mean, re-normalised (CSAL's video embedding)."""
    return F.normalize(video_feat.mean(dim=1), dim=-1)


def csal_targets(
    video_feat: Tensor,
    text_feat: Tensor,
    video_feat_all: Tensor,
    text_feat_all: Tensor,
    scale: float = 5.0,
    floor: float = 0.05,
) -> Tensor:
    """CSAL soft targets Y (b, B_all) exactly as the reference §2(b):

    S^v = vbar_i . vbar_j and S^t = t_i . t_j, each with non-positive entries set to 0; C = S^v * S^t;
    C < floor -> -100; Y = softmax(scale * C) over the columns. NOT detached: as in the official code the
    gradient flows into the similarities (§2(b)).
    """
    video_sim = mean_query_embedding(video_feat) @ mean_query_embedding(video_feat_all).t()
    text_sim = text_feat @ text_feat_all.t()
    video_sim = video_sim * (video_sim > 0)
    text_sim = text_sim * (text_sim > 0)
    cross = video_sim * text_sim
    cross = torch.where(cross < floor, torch.full_like(cross, CSAL_BELOW_FLOOR_VALUE), cross)
    return torch.softmax(scale * cross, dim=1)


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """-(1/b) sum_i sum_j Y_ij log softmax(logits_i)_j."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def csal_loss(logits_v2t: Tensor, logits_t2v: Tensor, targets: Tensor, smoothing: float = 0.01) -> Tensor:
    """CSAL: both directions against the same smoothed targets (1 - s) * Y + s / B_all (§2(b))."""
    smoothed = (1.0 - smoothing) * targets + smoothing / targets.shape[1]
    return 0.5 * (soft_cross_entropy(logits_v2t, smoothed) + soft_cross_entropy(logits_t2v, smoothed))


# ---------------------------------------------------------------------------------------------------------------
# VTM


def sample_hard_negatives(
    logits_v2t: Tensor, logits_t2v: Tensor, positives: Tensor, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """BLIP-2 hard negatives (§2(c)): (negative video index for each local text, negative text index for each video).

    Indices address the gathered samples. Each is drawn with torch.multinomial from the softmax of the logits
    after the local positives are set to -10000 (so a positive is never drawn while B_all >= 2).
    """
    if logits_v2t.shape[1] < 2:
        raise ValueError("VTM needs at least 2 samples across all ranks to draw a negative")
    with torch.no_grad():
        is_positive = F.one_hot(positives, logits_v2t.shape[1]).bool()
        weights_t2v = torch.softmax(logits_t2v.masked_fill(is_positive, HARD_NEGATIVE_MASK_VALUE), dim=1)
        weights_v2t = torch.softmax(logits_v2t.masked_fill(is_positive, HARD_NEGATIVE_MASK_VALUE), dim=1)
        negative_video = torch.multinomial(weights_t2v, 1, generator=generator).squeeze(1)
        negative_text = torch.multinomial(weights_v2t, 1, generator=generator).squeeze(1)
    return negative_video, negative_text


def vtm_labels(batch_size: int, device: torch.device | str | None = None) -> Tensor:
    """Labels of the 3b VTM pairs, b (pos, pos) then b (pos, neg video) and b (neg text, pos): [1]*b + [0]*2b."""
    return torch.cat(
        [
            torch.ones(batch_size, dtype=torch.long, device=device),
            torch.zeros(2 * batch_size, dtype=torch.long, device=device),
        ]
    )


def vtm_loss(itm_logits: Tensor) -> Tensor:
    """Cross-entropy of the (3b, 2) match logits (already averaged over the queries) without smoothing."""
    if itm_logits.shape[0] % 3:
        raise ValueError(f"expected 3b VTM pairs, got {itm_logits.shape[0]}")
    return F.cross_entropy(itm_logits, vtm_labels(itm_logits.shape[0] // 3, itm_logits.device))


# ---------------------------------------------------------------------------------------------------------------
# VTG


def decoder_input_ids(input_ids: Tensor, bos_token_id: int) -> Tensor:
    """The text ids with the first token ([CLS]) replaced by the [DEC] bos token (§2(d))."""
    decoder_ids = input_ids.clone()
    decoder_ids[:, 0] = bos_token_id
    return decoder_ids


def vtg_labels(input_ids: Tensor, pad_token_id: int) -> Tensor:
    """LM labels: the ids with padding set to -100 (ignored)."""
    return input_ids.masked_fill(input_ids == pad_token_id, IGNORE_INDEX)


def vtg_loss(prediction_logits: Tensor, labels: Tensor, label_smoothing: float = 0.1) -> Tensor:
    """Causal LM loss: the logits at position t predict label t + 1 (shifted); -100 ignored; smoothing 0.1."""
    shifted_logits = prediction_logits[:, :-1].reshape(-1, prediction_logits.shape[-1])
    shifted_labels = labels[:, 1:].reshape(-1)
    return F.cross_entropy(shifted_logits, shifted_labels, ignore_index=IGNORE_INDEX, label_smoothing=label_smoothing)
