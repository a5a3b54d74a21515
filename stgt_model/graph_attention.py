"""Graph attention of the STGT module (stgt-reference.md §1.3(b)4 and §7.4), in three implementations.

Official formula, per head h and graph weight G_ij (0 = no edge):
    e_ij = (q_i . k_j) / sqrt(d_k);  e_ij <- e_ij * G_ij;  e_ij <- -inf where G_ij == 0;
    P = dropout(softmax_j(e));  O = concat_h(P V) W_O + b_O
The weights MULTIPLY the scaled logits (not an additive bias), which shrinks negative logits towards 0: an
official quirk kept on purpose (§7.4).

- `dense_graph_attention`: that formula on the full (T*N)^2 matrix (the reference).
- `block_sparse_graph_attention`: the frame window makes the graph block-sparse, so each frame attends only to
  the keys of frames t-w .. t+w: logits (B, H, T, N, (2w+1)*N), memory O(T * N^2) instead of O((T*N)^2).
- `flex_graph_attention`: torch flex_attention on CUDA (block mask = frame window, score_mod = the weighting);
  it has no attention dropout, so it is only used when dropout is inactive.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stgt_model.graph import BlockGraph, gather_frame_neighbours

AttentionImpl = Literal["auto", "dense", "block_sparse", "flex"]
ATTENTION_IMPLS: tuple[str, ...] = ("auto", "dense", "block_sparse", "flex")


def weighted_masked_softmax(logits: Tensor, weights: Tensor) -> Tensor:
    """softmax(logits * weights) over the last dim with non-edges (weight 0) excluded.

    Non-edges get the dtype's most negative finite value rather than the official -inf: for any row with an
    edge their exp underflows to exactly 0 (same result), and a row without edges (impossible with self loops)
    yields a finite uniform average instead of NaN, without extra full-size masking passes.
    """
    return torch.softmax((logits * weights).masked_fill(weights == 0, torch.finfo(logits.dtype).min), dim=-1)


def _attention_dropout(probs: Tensor, dropout_p: float) -> Tensor:
    return F.dropout(probs, dropout_p) if dropout_p > 0 else probs


def dense_graph_attention(q: Tensor, k: Tensor, v: Tensor, adjacency: Tensor, dropout_p: float = 0.0) -> Tensor:
    """Reference: q, k, v (B, H, L, d_k), adjacency (B, L, L) -> (B, H, L, d_k)."""
    logits = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    probs = weighted_masked_softmax(logits, adjacency.unsqueeze(1).to(logits.dtype))
    return _attention_dropout(probs, dropout_p) @ v


def block_sparse_graph_attention(q: Tensor, k: Tensor, v: Tensor, graph: BlockGraph, dropout_p: float = 0.0) -> Tensor:
    """Same result as `dense_graph_attention` on `graph.to_dense()`, computing only the frame-window blocks."""
    batch, heads, nodes, head_dim = q.shape
    frames, n = graph.num_frames, graph.tokens_per_frame
    q, k, v = (x.view(batch, heads, frames, n, head_dim) for x in (q, k, v))
    neighbour_keys = gather_frame_neighbours(k, graph.window)  # (B, H, T, (2w+1)*N, d_k)
    neighbour_values = gather_frame_neighbours(v, graph.window)
    logits = q @ neighbour_keys.transpose(-2, -1) / math.sqrt(head_dim)  # (B, H, T, N, (2w+1)*N)
    probs = weighted_masked_softmax(logits, graph.weights.unsqueeze(1).to(logits.dtype))
    return (_attention_dropout(probs, dropout_p) @ neighbour_values).view(batch, heads, nodes, head_dim)


def flex_attention_available() -> bool:
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


@functools.cache
def _compiled_flex_attention() -> Callable[..., Tensor]:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


@functools.lru_cache(maxsize=32)
def _frame_window_block_mask(num_frames: int, tokens_per_frame: int, window: int, device: str):
    from torch.nn.attention.flex_attention import create_block_mask

    def within_window(b, h, q_idx, kv_idx):
        return (q_idx // tokens_per_frame - kv_idx // tokens_per_frame).abs() <= window

    nodes = num_frames * tokens_per_frame
    return create_block_mask(within_window, B=None, H=None, Q_LEN=nodes, KV_LEN=nodes, device=device)


def flex_graph_attention(q: Tensor, k: Tensor, v: Tensor, graph: BlockGraph) -> Tensor:
    """`dense_graph_attention` (without dropout) via flex_attention; the weights are read from the block form."""
    n, window, weights = graph.tokens_per_frame, graph.window, graph.weights

    def multiply_by_edge_weight(score, b, h, q_idx, kv_idx):
        frame_offset = kv_idx // n - q_idx // n
        slot = (frame_offset + window).clamp(0, 2 * window) * n + kv_idx % n
        weight = torch.where(frame_offset.abs() <= window, weights[b, q_idx // n, q_idx % n, slot], 0.0)
        return torch.where(weight != 0, score * weight, float("-inf"))

    block_mask = _frame_window_block_mask(graph.num_frames, n, window, str(q.device))
    # flex_attention scales q.k by 1/sqrt(d_k) before score_mod, matching the official order (scale, then weight).
    return _compiled_flex_attention()(q, k, v, score_mod=multiply_by_edge_weight, block_mask=block_mask)


def resolve_attention_impl(requested: str, device: torch.device, dropout_active: bool) -> str:
    """Pick the implementation actually run. "auto" is block_sparse (exact, on every device); "flex" is opt-in
    and falls back to block_sparse (with a warning) off CUDA or while attention dropout is active.
    """
    if requested not in ATTENTION_IMPLS:
        raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, got {requested!r}")
    if requested == "auto":
        return "block_sparse"
    flex_usable = device.type == "cuda" and flex_attention_available() and not dropout_active
    if requested == "flex" and not flex_usable:
        warnings.warn(
            "flex graph attention needs CUDA and inactive dropout; falling back to block_sparse", stacklevel=2
        )
        return "block_sparse"
    return requested


class GraphAttention(nn.Module):
    """Official `GraphAttention` (parameter names W_Q, W_K, W_V, W_O). No residual, no LayerNorm (§1.3(b)4).

    `graph`: a dense (B, L, L) adjacency -> dense reference; a `BlockGraph` -> block-sparse, or flex when
    `use_flex`; None -> plain full attention over all L nodes (the repo's "no graph" ablation, §1.3(e)).
    """

    def __init__(self, width: int, heads: int, dropout: float = 0.1) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.dropout = dropout
        self.W_Q = nn.Linear(width, width)
        self.W_K = nn.Linear(width, width)
        self.W_V = nn.Linear(width, width)
        self.W_O = nn.Linear(width, width)

    def _split_heads(self, x: Tensor) -> Tensor:
        batch, nodes, width = x.shape
        return x.view(batch, nodes, self.heads, width // self.heads).transpose(1, 2)

    def forward(self, x: Tensor, graph: Tensor | BlockGraph | None, use_flex: bool = False) -> Tensor:
        q, k, v = (self._split_heads(proj(x)) for proj in (self.W_Q, self.W_K, self.W_V))
        dropout_p = self.dropout if self.training else 0.0
        if graph is None:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        elif isinstance(graph, BlockGraph):
            if use_flex and dropout_p == 0.0:
                out = flex_graph_attention(q, k, v, graph)
            else:
                out = block_sparse_graph_attention(q, k, v, graph, dropout_p)
        else:
            out = dense_graph_attention(q, k, v, graph, dropout_p)
        return self.W_O(out.transpose(1, 2).flatten(2))
