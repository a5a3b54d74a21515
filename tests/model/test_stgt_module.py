"""The STGT module (stgt-reference.md §1.3): names, embeddings, pooling, shapes and implementation parity."""

import math

import pytest
import torch
from torch import nn

from stgt_model.stgt import CrossGraphTransformer, pool_frame_tokens, sincos_2d_position_table

# Trainable keys of the official checkpoints for one layer (§6.3), without the `graph_cross_model.` prefix.
OFFICIAL_TRAINABLE_KEYS = {
    "ln_post.weight",
    "ln_post.bias",
    "proj",
    "time_embed",
    "resblocks.0.proj_fc.weight",
    "resblocks.0.proj_fc.bias",
    *(
        f"resblocks.0.{prefix}{name}"
        for prefix in ("message_attn.", "")
        for name in (
            "attn.in_proj_weight",
            "attn.in_proj_bias",
            "attn.out_proj.weight",
            "attn.out_proj.bias",
            "ln_1.weight",
            "ln_1.bias",
            "mlp.c_fc.weight",
            "mlp.c_fc.bias",
            "mlp.c_proj.weight",
            "mlp.c_proj.bias",
            "ln_2.weight",
            "ln_2.bias",
        )
    ),
    *(f"resblocks.0.graphattn.{w}.{p}" for w in ("W_Q", "W_K", "W_V", "W_O") for p in ("weight", "bias")),
}


def small_module(**overrides) -> CrossGraphTransformer:
    config = dict(width=16, layers=1, heads=2, num_frames=8, grid=(3, 5), sim_threshold=0.1)
    config.update(overrides)
    return CrossGraphTransformer(**config)


def test_parameter_names_mirror_the_official_checkpoint():
    torch.manual_seed(0)
    module = small_module()
    assert {name for name, p in module.named_parameters() if p.requires_grad} == OFFICIAL_TRAINABLE_KEYS
    assert set(module.state_dict()) == OFFICIAL_TRAINABLE_KEYS | {"pos_2D_embed"}
    assert module.proj.shape == (16, 16) and module.time_embed.shape == (8, 16)


def test_input_projection_only_when_input_width_differs():
    assert small_module(in_dim=16).input_proj is None
    module = small_module(in_dim=40, out_dim=12)
    assert module.input_proj.in_features == 40 and module.proj.shape == (16, 12)
    assert module(torch.randn(1, 2, 16, 40)).shape == (1, 2 * 9, 12)
    with pytest.raises(ValueError):
        module(torch.randn(1, 2, 16, 16))


def test_pos_2d_embed_is_a_frozen_buffer():
    module = small_module()
    module.requires_grad_(True)
    assert "pos_2D_embed" in dict(module.named_buffers())
    assert "pos_2D_embed" not in dict(module.named_parameters())
    assert not module.pos_2D_embed.requires_grad
    torch.testing.assert_close(module.pos_2D_embed, sincos_2d_position_table(16, (3, 5)))


def test_sincos_table_worked_by_hand():
    # width 4, grid 1x2: omega = [1]; channels = [sin(col), cos(col), sin(row), cos(row)], CLS row = 0
    expected = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 1], [math.sin(1), math.cos(1), 0, 1]])
    torch.testing.assert_close(sincos_2d_position_table(4, (1, 2)), expected)
    # width 8, grid 2x3: omega = [1, 1/100]; patch (row 1, col 2) is row 1 + 1 * 3 + 2 = 6
    table = sincos_2d_position_table(8, (2, 3))
    c, r = 2.0, 1.0
    expected_row = [math.sin(c), math.sin(c / 100), math.cos(c), math.cos(c / 100)]
    expected_row += [math.sin(r), math.sin(r / 100), math.cos(r), math.cos(r / 100)]
    torch.testing.assert_close(table[6], torch.tensor(expected_row))
    with pytest.raises(ValueError):
        sincos_2d_position_table(6, (2, 2))


def test_official_random_position_table_is_small_noise():
    torch.manual_seed(0)
    table = CrossGraphTransformer(64, 1, 2, 8, (16, 16), pos_embed="official_random").pos_2D_embed
    assert table.shape == (257, 64)
    assert abs(table.std().item() - 0.02) < 0.002 and table[0].abs().sum() > 0


def test_init_follows_the_official_scheme():
    torch.manual_seed(0)
    module = CrossGraphTransformer(64, 1, 4, 8, (4, 4))
    block = module.resblocks[0]
    for linear in (block.proj_fc, block.graphattn.W_Q, block.mlp.c_fc, block.attn.out_proj):
        # trunc_normal_'s bounds (+-2) are absolute, so at std 0.02 it is effectively a plain normal (as in timm)
        assert abs(linear.weight.std().item() - 0.02) < 0.004
        assert torch.equal(linear.bias, torch.zeros_like(linear.bias))
    assert torch.equal(block.ln_1.weight, torch.ones(64)) and torch.equal(module.ln_post.bias, torch.zeros(64))
    assert abs(module.proj.std().item() - 64**-0.5) < 0.01
    assert abs(module.time_embed.std().item() - 0.02) < 0.006


def test_init_scale_options_for_narrow_modules():
    torch.manual_seed(0)
    official = CrossGraphTransformer(64, 1, 4, 8, (4, 4))
    torch.manual_seed(0)
    module = CrossGraphTransformer(64, 1, 4, 8, (4, 4), in_dim=96, time_embed_std=0.5, init_std=0.15)
    block = module.resblocks[0]
    for weight in (block.proj_fc.weight, block.graphattn.W_V.weight, block.mlp.c_proj.weight,
                   block.attn.in_proj_weight, block.message_attn.attn.in_proj_weight):
        assert abs(weight.std().item() - 0.15) < 0.02
    assert abs(module.input_proj.weight.std().item() - 0.02) < 0.004  # the input projection keeps 0.02
    assert abs(module.time_embed.std().item() - 0.5) < 0.15
    assert torch.equal(official.pos_2D_embed, module.pos_2D_embed)


def test_pooling_keeps_cls_column_max_and_row_max():
    # one frame pair, grid 2 rows x 3 cols, width 1; patches of frame t hold t * 10 + [[1, 5, 2], [4, 0, 6]]
    patches = torch.tensor([[1.0, 5.0, 2.0], [4.0, 0.0, 6.0]]).flatten()
    frames = torch.stack([torch.cat([torch.tensor([-t]), patches + 10 * t]) for t in (1.0, 2.0)])
    pooled = pool_frame_tokens(frames.view(1, 2, 7, 1), grid=(2, 3))
    # per frame: CLS, column maxima [4, 5, 6], row maxima [5, 6]
    expected = [-1, 14, 15, 16, 15, 16, -2, 24, 25, 26, 25, 26]
    assert pooled.flatten().tolist() == expected


def test_single_frame_keeps_every_token():
    x = torch.randn(2, 1, 7, 4)
    assert torch.equal(pool_frame_tokens(x, grid=(2, 3)), x[:, 0])
    module = small_module(num_frames=1)
    assert module(torch.randn(2, 1, 16, 16)).shape == (2, 16, 16) == (2, module.num_output_tokens(1), 16)


@pytest.mark.parametrize("frames, grid", [(8, (16, 16)), (3, (3, 5)), (4, (2, 2))])
def test_output_shapes_for_other_frame_counts_and_grids(frames, grid):
    torch.manual_seed(0)
    module = small_module(grid=grid, out_dim=8).eval()
    out = module(torch.randn(2, frames, 1 + grid[0] * grid[1], 16))
    assert out.shape == (2, frames * (1 + grid[0] + grid[1]), 8)
    assert module.num_output_tokens(frames) == out.shape[1]


def test_time_embedding_rows_are_nearest_interpolated():
    module = small_module(num_frames=8)
    torch.testing.assert_close(module._time_embedding(3), module.time_embed[[0, 2, 5]])
    torch.testing.assert_close(module._time_embedding(16), module.time_embed.repeat_interleave(2, dim=0))


def test_cross_frame_block_runs_twice_with_shared_weights():
    module = small_module(layers=2).eval()
    calls = []
    for block in module.resblocks:
        block.message_attn.register_forward_hook(lambda *_: calls.append(1))
    module(torch.randn(1, 3, 16, 16))
    assert len(calls) == 4
    assert small_module(cross_frame_repeats=1).resblocks[0].cross_frame_repeats == 1


def test_graph_attention_output_replaces_the_patch_tokens():
    """No residual around the graph attention (§7.4): the per-frame block sees its output as the patches."""
    torch.manual_seed(0)
    module = small_module().eval()
    block = module.resblocks[0]
    seen = {}
    block.graphattn.register_forward_hook(lambda m, args, out: seen.update(graph_out=out))
    block.ln_1.register_forward_pre_hook(lambda m, args: seen.update(per_frame_in=args[0]))
    module(torch.randn(2, 3, 16, 16))
    torch.testing.assert_close(seen["per_frame_in"].view(2, 3, 16, 16)[:, :, 1:].reshape(2, 45, 16), seen["graph_out"])


@pytest.mark.parametrize("frames", [1, 2, 3])
def test_dense_and_block_sparse_modules_agree_with_gradients(frames):
    torch.manual_seed(frames)
    module = small_module(layers=2, attention_impl="dense").eval()
    x = torch.randn(2, frames, 16, 16)
    results = {}
    for impl in ("dense", "block_sparse"):
        for block in module.resblocks:
            block.attention_impl = impl
        module.zero_grad()
        inputs = x.clone().requires_grad_(True)
        out = module(inputs)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).mean().backward()
        results[impl] = (out.detach(), inputs.grad, {n: p.grad.clone() for n, p in module.named_parameters()})
    dense, sparse = results["dense"], results["block_sparse"]
    torch.testing.assert_close(sparse[0], dense[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sparse[1], dense[1], atol=1e-5, rtol=1e-5)
    for name in dense[2]:
        torch.testing.assert_close(sparse[2][name], dense[2][name], atol=1e-5, rtol=1e-5, msg=name)


def test_every_trainable_parameter_gets_a_gradient_in_training():
    torch.manual_seed(0)
    module = small_module(in_dim=24).train()
    module(torch.randn(2, 3, 16, 24)).square().mean().backward()
    missing = [name for name, p in module.named_parameters() if p.grad is None]
    assert missing == []


def test_plain_graph_mode_runs_and_differs_from_the_graph():
    torch.manual_seed(0)
    graph = small_module(sim_threshold=0.9).eval()
    plain = small_module(graph_mode="plain").eval()
    plain.load_state_dict(graph.state_dict())
    x = torch.randn(1, 3, 16, 16)
    assert plain(x).shape == graph(x).shape
    assert not torch.allclose(plain(x), graph(x))


def test_rejects_bad_options_and_inputs():
    for bad in (dict(pos_embed="learned"), dict(graph_mode="knn"), dict(attention_impl="sparse")):
        with pytest.raises(ValueError):
            small_module(**bad)
    with pytest.raises(ValueError, match="grid"):
        small_module()(torch.randn(1, 3, 10, 16))


def test_module_is_an_nn_module_with_layernorm_in_float32():
    module = small_module().to(torch.bfloat16)
    out = module(torch.randn(1, 2, 16, 16, dtype=torch.bfloat16))
    assert isinstance(module, nn.Module) and out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
