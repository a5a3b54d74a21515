"""Graph construction (stgt-reference.md §1.3(b)3): worked by hand on a 3-frame, 2-patch clip."""

import math

import pytest
import torch

from stgt_model.graph import (
    build_block_graph,
    build_graph,
    frame_window_mask,
    graph_statistics,
    to_edge_list,
)

S = 1 / math.sqrt(2)  # cosine between (1, 0) and (1, 1)

# Frame-major nodes (node = t * 2 + p): frame 0 = (1,0), (0,1); frame 1 = (1,1), (-1,0); frame 2 = (1,0), (0,1).
HAND_TOKENS = torch.tensor(
    [[[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [-1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]]]]
)  # (B=1, T=3, N=2, D=2)

# Threshold 0.5, window 1: node 2 = (1,1) links to every (1,0)/(0,1) node in the adjacent frames (cos = S);
# nodes 0-4 and 1-5 have cos 1 but are two frames apart; node 3 = (-1,0) has only its self loop.
HAND_ADJACENCY = torch.tensor(
    [
        [1, 0, S, 0, 0, 0],
        [0, 1, S, 0, 0, 0],
        [S, S, 1, 0, S, S],
        [0, 0, 0, 1, 0, 0],
        [0, 0, S, 0, 1, 0],
        [0, 0, S, 0, 0, 1],
    ]
)


def test_frame_window_mask_joins_same_and_adjacent_frames_only():
    frames = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 1, 1]], dtype=torch.bool)
    expected = frames.repeat_interleave(2, dim=0).repeat_interleave(2, dim=1)
    assert torch.equal(frame_window_mask(3, 2, window=1), expected)
    assert frame_window_mask(3, 2, window=2).all()
    same_frame = torch.eye(3, dtype=torch.bool).repeat_interleave(2, dim=0).repeat_interleave(2, dim=1)
    assert torch.equal(frame_window_mask(3, 2, window=0), same_frame)


def test_build_graph_matches_hand_worked_adjacency():
    adjacency = build_graph(HAND_TOKENS, num_frames=3, threshold=0.5)
    assert adjacency.shape == (1, 6, 6)
    torch.testing.assert_close(adjacency[0], HAND_ADJACENCY)


def test_build_graph_accepts_flattened_frame_major_tokens():
    flat = HAND_TOKENS.reshape(1, 6, 2)
    torch.testing.assert_close(build_graph(flat, num_frames=3, threshold=0.5), build_graph(HAND_TOKENS, 3, 0.5))


def test_threshold_is_inclusive_and_drops_weaker_edges():
    assert torch.equal(build_graph(HAND_TOKENS, 3, threshold=0.75)[0], torch.eye(6))
    # cos exactly at the threshold is kept (official: where(sim < th, 0, sim))
    kept = build_graph(torch.tensor([[[[1.0, 0.0]], [[0.5, math.sqrt(3) / 2]]]]), 2, threshold=0.5)
    torch.testing.assert_close(kept[0], torch.tensor([[1.0, 0.5], [0.5, 1.0]]))


def test_wider_window_admits_edges_two_frames_apart():
    adjacency = build_graph(HAND_TOKENS, 3, threshold=0.5, window=2)[0]
    assert adjacency[0, 4] == 1 and adjacency[1, 5] == 1
    assert adjacency[0, 5] == 0  # cos 0


def test_self_loops_survive_zero_tokens_and_thresholds_above_one():
    tokens = torch.zeros(1, 2, 3, 4)
    assert torch.equal(build_graph(tokens, 2, threshold=0.5)[0], torch.eye(6))
    assert torch.equal(build_graph(HAND_TOKENS, 3, threshold=1.5)[0], torch.eye(6))
    assert torch.equal(build_block_graph(tokens, 2, threshold=0.5).to_dense()[0], torch.eye(6))


def test_no_gradient_flows_through_the_adjacency():
    tokens = HAND_TOKENS.clone().requires_grad_(True)
    adjacency = build_graph(tokens, 3, 0.5)
    blocks = build_block_graph(tokens, 3, 0.5)
    assert not adjacency.requires_grad and adjacency.grad_fn is None
    assert not blocks.weights.requires_grad and blocks.weights.grad_fn is None
    # The only gradient path to the tokens is the explicit one, the graph is a constant.
    (adjacency.sum() + tokens.sum()).backward()
    assert torch.equal(tokens.grad, torch.ones_like(tokens))


def test_block_graph_of_hand_example():
    blocks = build_block_graph(HAND_TOKENS, 3, 0.5)
    assert blocks.window == 1 and blocks.weights.shape == (1, 3, 2, 6)
    # frame 0 has no previous frame: its first block is empty; its next-frame block links both patches to node 2
    torch.testing.assert_close(blocks.weights[0, 0], torch.tensor([[0, 0, 1, 0, S, 0], [0, 0, 0, 1, S, 0]]))
    torch.testing.assert_close(blocks.to_dense()[0], HAND_ADJACENCY)


@pytest.mark.parametrize(
    "num_frames, tokens_per_frame, window", [(1, 6, 1), (2, 6, 1), (3, 5, 1), (5, 6, 1), (5, 4, 2)]
)
def test_block_graph_equals_dense_graph(num_frames, tokens_per_frame, window):
    torch.manual_seed(0)
    tokens = torch.randn(2, num_frames, tokens_per_frame, 8)
    blocks = build_block_graph(tokens, num_frames, threshold=0.2, window=window)
    assert blocks.window == min(window, num_frames - 1)
    assert torch.equal(blocks.to_dense(), build_graph(tokens, num_frames, threshold=0.2, window=window))


def test_to_edge_list_of_hand_example():
    export = to_edge_list(HAND_ADJACENCY, num_frames=3, tokens_per_frame=2)
    expected_pairs = [(0, 0), (0, 2), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2), (2, 4), (2, 5)]
    expected_pairs += [(3, 3), (4, 2), (4, 4), (5, 2), (5, 5)]
    assert export["edge_index"].dtype == torch.long and export["weight"].dtype == torch.float32
    assert [tuple(pair) for pair in export["edge_index"].T.tolist()] == expected_pairs
    torch.testing.assert_close(export["weight"], HAND_ADJACENCY[tuple(export["edge_index"])])
    assert export["frame_offsets"].tolist() == [0, 2, 4, 6]
    assert export["num_nodes"] == 6
    with pytest.raises(ValueError):
        to_edge_list(HAND_ADJACENCY.unsqueeze(0), 3, 2)


def test_graph_statistics_of_hand_example():
    stats = graph_statistics(HAND_ADJACENCY, num_frames=3, tokens_per_frame=2)
    assert stats == {
        "graphs": 1,
        "nodes": 6,
        "edges": 8,
        "self_loops": 6,
        "mean_degree": 8 / 6,
        "cross_frame_share": 1.0,
        "isolated_nodes": 1,
    }
    # same-frame edges: two identical patches in one frame of a single-frame clip
    single = build_graph(torch.tensor([[[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]]]), 1, 0.5)
    batch_stats = graph_statistics(torch.cat([single, single]), num_frames=1, tokens_per_frame=3)
    assert batch_stats["graphs"] == 2 and batch_stats["edges"] == 4 and batch_stats["cross_frame_share"] == 0.0
    assert batch_stats["isolated_nodes"] == 2
