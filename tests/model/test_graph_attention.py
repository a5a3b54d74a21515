"""Graph attention (stgt-reference.md §1.3(b)4): hand-worked values, a naive loop, and block-sparse == dense."""

import math
import warnings

import pytest
import torch

import stgt_model.graph_attention as graph_attention
from stgt_model.graph import BlockGraph, build_block_graph, build_graph
from stgt_model.graph_attention import (
    GraphAttention,
    block_sparse_graph_attention,
    dense_graph_attention,
    flex_graph_attention,
    resolve_attention_impl,
)


def naive_graph_attention(q, k, v, adjacency):
    """Per-element loops over the official formula; q, k, v (B, H, L, d), adjacency (B, L, L)."""
    batch, heads, nodes, dim = q.shape
    out = torch.zeros_like(v)
    for b in range(batch):
        for h in range(heads):
            for i in range(nodes):
                neighbours = [j for j in range(nodes) if adjacency[b, i, j] != 0]
                logits = [
                    float(q[b, h, i] @ k[b, h, j]) / math.sqrt(dim) * float(adjacency[b, i, j]) for j in neighbours
                ]
                peak = max(logits)
                exps = [math.exp(x - peak) for x in logits]
                for j, e in zip(neighbours, exps):
                    out[b, h, i] += e / sum(exps) * v[b, h, j]
    return out


def test_edge_weight_multiplies_the_scaled_logit_by_hand():
    # Node 0 attends to itself (weight 1) and to node 1 (weight 0.5); node 1 only to itself.
    q = torch.tensor([1.0, 2.0]).view(1, 1, 2, 1)
    k = torch.tensor([1.0, -1.0]).view(1, 1, 2, 1)
    v = torch.tensor([10.0, 20.0]).view(1, 1, 2, 1)
    adjacency = torch.tensor([[[1.0, 0.5], [0.0, 1.0]]])
    # logits of node 0: [1 * 1 * 1, 1 * (-1) * 0.5] = [1, -0.5] (the weight shrinks the negative logit, §7.4)
    p_self = 1 / (1 + math.exp(-1.5))
    expected = torch.tensor([p_self * 10 + (1 - p_self) * 20, 20.0]).view(1, 1, 2, 1)
    torch.testing.assert_close(dense_graph_attention(q, k, v, adjacency), expected)
    blocks = BlockGraph(weights=adjacency.view(1, 1, 2, 2), window=0)  # one frame of two patches
    torch.testing.assert_close(block_sparse_graph_attention(q, k, v, blocks), expected)


def test_dense_and_block_sparse_match_a_naive_loop():
    torch.manual_seed(0)
    frames, n = 3, 2
    tokens = torch.randn(2, frames * n, 4)
    adjacency = build_graph(tokens, frames, threshold=0.0)
    q, k, v = torch.randn(3, 2, 2, frames * n, 3).unbind(0)
    expected = naive_graph_attention(q, k, v, adjacency)
    torch.testing.assert_close(dense_graph_attention(q, k, v, adjacency), expected)
    torch.testing.assert_close(block_sparse_graph_attention(q, k, v, build_block_graph(tokens, frames, 0.0)), expected)


def _module_outputs_and_grads(module, x, graph):
    x = x.clone().requires_grad_(True)
    module.zero_grad()
    out = module(x, graph)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out.detach(), x.grad, {name: p.grad.clone() for name, p in module.named_parameters()}


@pytest.mark.parametrize(
    "frames, grid, window", [(1, (2, 3), 1), (2, (2, 3), 1), (3, (3, 5), 1), (5, (2, 3), 1), (5, (1, 4), 2)]
)
def test_block_sparse_equals_dense_in_values_and_gradients(frames, grid, window):
    torch.manual_seed(frames)
    n = grid[0] * grid[1]
    module = GraphAttention(width=16, heads=2, dropout=0.1).eval()  # eval: dropout off in both
    x = torch.randn(2, frames * n, 16)
    dense = _module_outputs_and_grads(module, x, build_graph(x, frames, 0.1, window))
    sparse = _module_outputs_and_grads(module, x, build_block_graph(x, frames, 0.1, window))
    torch.testing.assert_close(sparse[0], dense[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sparse[1], dense[1], atol=1e-5, rtol=1e-5)
    for name in dense[2]:
        torch.testing.assert_close(sparse[2][name], dense[2][name], atol=1e-5, rtol=1e-5, msg=name)


def test_zero_dropout_in_train_mode_matches_and_positive_dropout_is_applied():
    torch.manual_seed(0)
    x = torch.randn(1, 12, 8)
    graph = build_block_graph(x, 3, 0.0)
    module = GraphAttention(8, 2, dropout=0.0).train()
    torch.testing.assert_close(module(x, graph), module(x, graph.to_dense()))
    module = GraphAttention(8, 2, dropout=0.5).train()
    assert not torch.allclose(module(x, graph), module.eval()(x, graph))


def test_plain_mode_is_full_attention_with_an_all_ones_graph():
    torch.manual_seed(0)
    module = GraphAttention(8, 2).eval()
    x = torch.randn(2, 10, 8)
    torch.testing.assert_close(module(x, None), module(x, torch.ones(2, 10, 10)), atol=1e-6, rtol=1e-5)


def test_rows_without_edges_stay_finite():
    q, k, v = (torch.randn(1, 1, 3, 2, requires_grad=True) for _ in range(3))
    adjacency = torch.tensor([[[1.0, 0.6, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])
    out = dense_graph_attention(q, k, v, adjacency)
    torch.testing.assert_close(out[0, 0, 2], v[0, 0, 2])  # edges of the other rows are unaffected
    out.sum().backward()
    assert torch.isfinite(out).all() and all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_resolve_attention_impl_on_cpu():
    cpu = torch.device("cpu")
    assert resolve_attention_impl("auto", cpu, dropout_active=False) == "block_sparse"
    assert resolve_attention_impl("auto", torch.device("cuda"), dropout_active=False) == "block_sparse"
    assert resolve_attention_impl("dense", cpu, dropout_active=True) == "dense"
    with pytest.warns(UserWarning, match="falling back"):
        assert resolve_attention_impl("flex", cpu, dropout_active=False) == "block_sparse"
    with pytest.raises(ValueError):
        resolve_attention_impl("sparse", cpu, dropout_active=False)


@pytest.mark.parametrize("frames, n, window", [(1, 6, 1), (3, 15, 1), (5, 8, 2)])
def test_flex_score_mod_matches_dense_in_eager_mode_on_cpu(frames, n, window, monkeypatch):
    """The score_mod / block mask logic, run by flex_attention's unfused eager path (forward only on CPU)."""
    from torch.nn.attention.flex_attention import flex_attention

    monkeypatch.setattr(graph_attention, "_compiled_flex_attention", lambda: flex_attention)
    torch.manual_seed(0)
    graph = build_block_graph(torch.randn(2, frames * n, 16), frames, 0.05, window)
    q, k, v = torch.randn(3, 2, 2, frames * n, 8).unbind(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "flex_attention called without torch.compile()"
        out = flex_graph_attention(q, k, v, graph)
    torch.testing.assert_close(out, dense_graph_attention(q, k, v, graph.to_dense()), atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flex_attention path runs on CUDA only")
@pytest.mark.parametrize("frames, grid, head_dim", [(3, (3, 5), 16), (8, (16, 16), 88)])
def test_flex_matches_dense_on_cuda(frames, grid, head_dim):
    torch.manual_seed(0)
    n = grid[0] * grid[1]
    x = torch.randn(2, frames * n, 32, device="cuda")
    q, k, v = (torch.randn(2, 2, frames * n, head_dim, device="cuda", requires_grad=True) for _ in range(3))
    blocks = build_block_graph(x, frames, 0.05)
    expected = dense_graph_attention(q, k, v, blocks.to_dense())
    out = flex_graph_attention(q, k, v, blocks)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-4)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    expected_grads = torch.autograd.grad(expected.sum(), (q, k, v))
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-3)
