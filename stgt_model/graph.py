"""The spatio-temporal token graph of the STGT module (stgt-reference.md §1.3(b)3 and §7.3).

Nodes are the patch tokens of all frames in frame-major order: node = t * N + p (CLS tokens are not nodes).
A candidate edge joins two nodes whose frames are at most `window` apart (the official temporal mask has
window 1 and no spatial restriction). A candidate is kept when the cosine similarity of the stop-gradient
tokens is at least `threshold`; its weight is that cosine. Throughout this package a weight of 0 means
"no edge", exactly as the official code masks `graph == 0`.

Self loops always survive, with weight 1 (the cosine of a token with itself). The official code gets ~1.0 from
the normalised dot product; pinning it keeps rows of all-zero tokens or thresholds above 1 from having no edge.

Two layouts are offered: the dense (B, T*N, T*N) adjacency of the official code, and `BlockGraph`, which holds
only the (2 * window + 1) frame blocks around each frame, (B, T, N, (2w+1)*N), and never materialises the
(T*N)^2 matrix (used by the block-sparse graph attention).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

OFFICIAL_FRAME_WINDOW = 1  # the official temporal mask: edges join the same or adjacent frames only


def frame_window_mask(
    num_frames: int, tokens_per_frame: int, window: int = OFFICIAL_FRAME_WINDOW,
    device: torch.device | str | None = None,
) -> Tensor:
    """Bool (T*N, T*N): True where the two nodes' frames are at most `window` apart (official `gen_graph_mask`)."""
    frame_of_node = torch.arange(num_frames * tokens_per_frame, device=device) // tokens_per_frame
    return (frame_of_node[:, None] - frame_of_node[None, :]).abs() <= window


def split_frames(tokens: Tensor, num_frames: int) -> Tensor:
    """(B, T, N, D) or frame-major (B, T*N, D) -> (B, T, N, D)."""
    if tokens.dim() == 4:
        if tokens.shape[1] != num_frames:
            raise ValueError(f"tokens have {tokens.shape[1]} frames, expected num_frames={num_frames}")
        return tokens
    if tokens.dim() != 3 or tokens.shape[1] % num_frames:
        raise ValueError(
            f"expected tokens (B, T, N, D) or (B, T*N, D) with T={num_frames}, got shape {tuple(tokens.shape)}"
        )
    batch, nodes, dim = tokens.shape
    return tokens.view(batch, num_frames, nodes // num_frames, dim)


def gather_frame_neighbours(frames: Tensor, window: int) -> Tensor:
    """(..., T, N, D) -> (..., T, (2w+1)*N, D): for frame t the tokens of frames t-w .. t+w, zeros off the ends."""
    if window == 0:
        return frames
    pad_shape = (*frames.shape[:-3], window, *frames.shape[-2:])
    padding = frames.new_zeros(pad_shape)
    padded = torch.cat([padding, frames, padding], dim=-3)
    num_frames = frames.shape[-3]
    return torch.cat([padded[..., k : k + num_frames, :, :] for k in range(2 * window + 1)], dim=-2)


def neighbour_frame_exists(num_frames: int, window: int, device: torch.device | str | None = None) -> Tensor:
    """Bool (T, 2w+1): whether frame t + k - w exists, i.e. whether block k of frame t is real or padding."""
    frame = torch.arange(num_frames, device=device)[:, None]
    offset = torch.arange(-window, window + 1, device=device)[None, :]
    neighbour = frame + offset
    return (neighbour >= 0) & (neighbour < num_frames)


@dataclass(frozen=True)
class BlockGraph:
    """The graph restricted to the frame window, without the (T*N)^2 matrix.

    weights[b, t, p, k * N + q] is the weight of the edge from node (t, p) to node (t + k - window, q);
    it is 0 where there is no edge or where that frame does not exist.
    """

    weights: Tensor  # (B, T, N, (2 * window + 1) * N)
    window: int

    @property
    def num_frames(self) -> int:
        return self.weights.shape[1]

    @property
    def tokens_per_frame(self) -> int:
        return self.weights.shape[2]

    def to_dense(self) -> Tensor:
        """The equivalent dense (B, T*N, T*N) adjacency."""
        batch, frames, n = self.weights.shape[:3]
        dense = self.weights.new_zeros(batch, frames, n, frames, n)
        for t in range(frames):
            for k in range(2 * self.window + 1):
                neighbour = t + k - self.window
                if 0 <= neighbour < frames:
                    dense[:, t, :, neighbour, :] = self.weights[:, t, :, k * n : (k + 1) * n]
        return dense.view(batch, frames * n, frames * n)


@torch.no_grad()
def build_graph(tokens: Tensor, num_frames: int, threshold: float, window: int = OFFICIAL_FRAME_WINDOW) -> Tensor:
    """Dense weighted adjacency (B, T*N, T*N) of the official `build_graph` (no gradient flows through it)."""
    frames = split_frames(tokens, num_frames)
    batch, _, n, dim = frames.shape
    unit = F.normalize(frames.detach().reshape(batch, num_frames * n, dim), dim=-1)
    similarity = unit @ unit.transpose(1, 2)
    keep = (similarity >= threshold) & frame_window_mask(num_frames, n, window, device=tokens.device)
    adjacency = torch.where(keep, similarity, torch.zeros_like(similarity))
    adjacency.diagonal(dim1=1, dim2=2).fill_(1.0)
    return adjacency


@torch.no_grad()
def build_block_graph(tokens: Tensor, num_frames: int, threshold: float,
                      window: int = OFFICIAL_FRAME_WINDOW) -> BlockGraph:
    """Same graph as `build_graph`, as frame blocks; memory grows with T * N^2 instead of (T * N)^2.

    The window is capped at T - 1 because blocks beyond it would always be empty (T = 1 keeps one block).
    """
    frames = split_frames(tokens, num_frames)
    n = frames.shape[2]
    window = min(window, num_frames - 1)
    unit = F.normalize(frames.detach(), dim=-1)
    similarity = unit @ gather_frame_neighbours(unit, window).transpose(-1, -2)  # (B, T, N, (2w+1)*N)
    real_block = neighbour_frame_exists(num_frames, window, device=tokens.device).repeat_interleave(n, dim=1)
    keep = (similarity >= threshold) & real_block[:, None, :]
    weights = torch.where(keep, similarity, torch.zeros_like(similarity))
    own_frame_block = weights[..., window * n : (window + 1) * n]
    own_frame_block.diagonal(dim1=-2, dim2=-1).fill_(1.0)
    return BlockGraph(weights=weights, window=window)


def to_edge_list(adjacency: Tensor, num_frames: int, tokens_per_frame: int) -> dict[str, Tensor | int]:
    """Sparse export of one graph (T*N, T*N): edge_index[0] = source node i, edge_index[1] = node j it attends to.

    Returns edge_index (2, E) int64, weight (E,) float32, frame_offsets (T+1,) with the first node of every
    frame (node = t * N + p), num_nodes, num_frames and tokens_per_frame.
    """
    num_nodes = num_frames * tokens_per_frame
    if adjacency.shape != (num_nodes, num_nodes):
        raise ValueError(f"expected one adjacency of shape ({num_nodes}, {num_nodes}), got {tuple(adjacency.shape)}")
    source, target = adjacency.nonzero(as_tuple=True)
    return {
        "edge_index": torch.stack([source, target]).long(),
        "weight": adjacency[source, target].float(),
        "frame_offsets": torch.arange(num_frames + 1, device=adjacency.device) * tokens_per_frame,
        "num_nodes": num_nodes,
        "num_frames": num_frames,
        "tokens_per_frame": tokens_per_frame,
    }


def graph_statistics(adjacency: Tensor, num_frames: int, tokens_per_frame: int) -> dict[str, float | int]:
    """Summary of one (T*N, T*N) or a batch (B, T*N, T*N) of graphs, pooled over the batch.

    Edges are directed non-self entries (the graph is symmetric up to rounding, so an undirected pair counts
    twice); mean_degree is edges per node; isolated_nodes are nodes whose only edge is their self loop.
    """
    graphs = adjacency if adjacency.dim() == 3 else adjacency.unsqueeze(0)
    num_nodes = num_frames * tokens_per_frame
    if graphs.shape[1:] != (num_nodes, num_nodes):
        raise ValueError(f"expected adjacency (..., {num_nodes}, {num_nodes}), got {tuple(adjacency.shape)}")
    is_edge = graphs != 0
    self_loop = torch.eye(num_nodes, dtype=torch.bool, device=graphs.device)
    neighbour_edge = is_edge & ~self_loop
    frame_of_node = torch.arange(num_nodes, device=graphs.device) // tokens_per_frame
    cross_frame = neighbour_edge & (frame_of_node[:, None] != frame_of_node[None, :])
    edges = int(neighbour_edge.sum())
    nodes = graphs.shape[0] * num_nodes
    return {
        "graphs": graphs.shape[0],
        "nodes": nodes,
        "edges": edges,
        "self_loops": int((is_edge & self_loop).sum()),
        "mean_degree": edges / nodes,
        "cross_frame_share": int(cross_frame.sum()) / edges if edges else 0.0,
        "isolated_nodes": int((neighbour_edge.sum(-1) == 0).sum()),
    }
