"""The STGT module `CrossGraphTransformer` (stgt-reference.md §1.3; official lavis/models/videoformer/vit_utils.py).

(B, T, 1 + h*w, in_dim) per-frame tokens -> (B, T * (1 + h + w), out_dim) video tokens (all 1 + h*w when T = 1).
Parameter names mirror the official checkpoint keys (§6.3), and modules are registered in the official order so
that the init draws happen in the same sequence. Official quirks kept on purpose (§7):
- no residual and no LayerNorm around the graph attention: patch tokens are replaced by its output (§7.4);
- graph weights multiply the scaled logits (§7.4), see `graph_attention.py`;
- the cross-frame block is applied twice with shared weights (`cross_frame_repeats=2`, §7.5; 1 = the figure);
- the 2D position table is frozen; `pos_embed="official_random"` reproduces the code's trunc-normal overwrite,
  "sincos" is the paper's table (§7.2).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stgt_model.config import STGTConfig
from stgt_model.graph import OFFICIAL_FRAME_WINDOW, build_block_graph, build_graph
from stgt_model.graph_attention import ATTENTION_IMPLS, GraphAttention, resolve_attention_impl

PositionEmbedding = Literal["sincos", "official_random"]
GraphMode = Literal["graph", "plain"]
POSITION_EMBEDDINGS: tuple[str, ...] = ("sincos", "official_random")
GRAPH_MODES: tuple[str, ...] = ("graph", "plain")
_DEFAULT = STGTConfig()  # the one home of the module's defaults (stgt_model/config.py)


class QuickGELU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 and cast back (the official fp16-safe subclass; here the affine parameters
    are cast too, so that a module converted to half precision also runs)."""

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


def clip_mlp(width: int) -> nn.Sequential:
    layers = [("c_fc", nn.Linear(width, 4 * width)), ("gelu", QuickGELU()), ("c_proj", nn.Linear(4 * width, width))]
    return nn.Sequential(OrderedDict(layers))


def pre_ln_residual_attention(
    x: Tensor, attn: nn.MultiheadAttention, ln_1: nn.Module, mlp: nn.Module, ln_2: nn.Module
) -> Tensor:
    """CLIP-style block: x + MHA(LN1(x)), then + MLP(LN2(x)). x is (batch, sequence, width)."""
    normed = ln_1(x)
    x = x + attn(normed, normed, normed, need_weights=False)[0]
    return x + mlp(ln_2(x))


class ResidualAttentionBlock(nn.Module):
    """The official `message_attn` block, run over the T frame summary tokens of each video."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = LayerNorm(width)
        self.mlp = clip_mlp(width)
        self.ln_2 = LayerNorm(width)

    def forward(self, x: Tensor) -> Tensor:
        return pre_ln_residual_attention(x, self.attn, self.ln_1, self.mlp, self.ln_2)


class CrossFrameGraphFormerBlock(nn.Module):
    """One official `CrossFramelGraphFormerBlock` (§1.3(b)): (B, T, 1+N, D) -> (B, T, 1+N, D)."""

    def __init__(
        self,
        width: int,
        heads: int,
        sim_threshold: float,
        cross_frame_repeats: int,
        attn_dropout: float,
        graph_mode: GraphMode,
        attention_impl: str,
        frame_window: int,
    ) -> None:
        super().__init__()
        self.sim_threshold = sim_threshold
        self.cross_frame_repeats = cross_frame_repeats
        self.graph_mode = graph_mode
        self.attention_impl = attention_impl
        self.frame_window = frame_window
        self.proj_fc = nn.Linear(width, width)
        self.message_attn = ResidualAttentionBlock(width, heads)
        self.graphattn = GraphAttention(width, heads, dropout=attn_dropout)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = LayerNorm(width)
        self.mlp = clip_mlp(width)
        self.ln_2 = LayerNorm(width)

    def forward(self, x: Tensor) -> Tensor:
        batch, frames, tokens, width = x.shape
        x = self.proj_fc(x)  # "Add & Linear"; no residual in the official code

        frame_tokens = x[:, :, 0]  # (B, T, D): one sequence of T summary tokens per video
        for _ in range(self.cross_frame_repeats):  # the same weights applied repeatedly (§7.5)
            frame_tokens = self.message_attn(frame_tokens)

        patches = x[:, :, 1:].reshape(batch, frames * (tokens - 1), width)  # node = t * N + p
        patches = self._attend_over_graph(patches, frames)

        per_frame = torch.cat([frame_tokens.unsqueeze(2), patches.view(batch, frames, tokens - 1, width)], dim=2)
        per_frame = pre_ln_residual_attention(
            per_frame.view(batch * frames, tokens, width), self.attn, self.ln_1, self.mlp, self.ln_2
        )
        return per_frame.view(batch, frames, tokens, width)

    def _attend_over_graph(self, patches: Tensor, frames: int) -> Tensor:
        """Graph attention whose output REPLACES the patch tokens (no residual, §7.4)."""
        if self.graph_mode == "plain":
            return self.graphattn(patches, graph=None)
        dropout_active = self.training and self.graphattn.dropout > 0
        impl = resolve_attention_impl(self.attention_impl, patches.device, dropout_active)
        if impl == "dense":
            graph = build_graph(patches, frames, self.sim_threshold, self.frame_window)
        else:
            graph = build_block_graph(patches, frames, self.sim_threshold, self.frame_window)
        return self.graphattn(patches, graph=graph, use_flex=impl == "flex")


def sincos_2d_position_table(width: int, grid: tuple[int, int]) -> Tensor:
    """MAE 2D sin-cos table (1 + h*w, width) with a zero CLS row 0, patches row-major.

    As in MAE (and the official `get_2d_sincos_pos_embed`), the first half of the channels encodes the column
    index and the second half the row index; each half is [sin(pos * omega), cos(pos * omega)] with
    omega_i = 10000^(-i / (width / 4)).
    """
    if width % 4:
        raise ValueError(f"sin-cos position embedding needs width divisible by 4, got {width}")
    rows, cols = grid
    omega = 1.0 / 10000 ** (torch.arange(width // 4, dtype=torch.float64) / (width / 4))
    row_index, col_index = torch.meshgrid(
        torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64), indexing="ij"
    )

    def encode(positions: Tensor) -> Tensor:
        angles = positions.reshape(-1, 1) * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    patches = torch.cat([encode(col_index), encode(row_index)], dim=1)
    return torch.cat([torch.zeros(1, width, dtype=torch.float64), patches]).float()


def pool_frame_tokens(x: Tensor, grid: tuple[int, int]) -> Tensor:
    """Official output pooling (§1.3(c)). x (B, T, 1 + h*w, D).

    T > 1: per frame [CLS, max over rows for each column (w tokens), max over columns for each row (h tokens)]
    -> (B, T * (1 + w + h), D). T == 1 (images): all tokens are kept -> (B, 1 + h*w, D).
    """
    batch, frames, _, width = x.shape
    if frames == 1:
        return x[:, 0]
    rows, cols = grid
    patches = x[:, :, 1:].reshape(batch, frames, rows, cols, width)
    column_max = patches.amax(dim=2)  # (B, T, w, D)
    row_max = patches.amax(dim=3)  # (B, T, h, D)
    return torch.cat([x[:, :, :1], column_max, row_max], dim=2).reshape(batch, -1, width)


class CrossGraphTransformer(nn.Module):
    """The STGT module (official `CrossGraphTransformer`), not hard-wired to 8 frames or a 16x16 grid."""

    def __init__(
        self,
        width: int,
        layers: int,
        heads: int,
        num_frames: int,
        grid: tuple[int, int],
        sim_threshold: float = _DEFAULT.sim_threshold,
        pos_embed: PositionEmbedding = _DEFAULT.pos_embed,
        cross_frame_repeats: int = _DEFAULT.cross_frame_repeats,
        attn_dropout: float = _DEFAULT.attn_dropout,
        graph_mode: GraphMode = _DEFAULT.graph_mode,
        attention_impl: str = _DEFAULT.attention_impl,
        in_dim: int | None = None,
        out_dim: int | None = None,
        frame_window: int = OFFICIAL_FRAME_WINDOW,
        time_embed_std: float = _DEFAULT.time_embed_std,
        init_std: float | None = _DEFAULT.init_std,
    ) -> None:
        super().__init__()
        if pos_embed not in POSITION_EMBEDDINGS:
            raise ValueError(f"pos_embed must be one of {POSITION_EMBEDDINGS}, got {pos_embed!r}")
        if graph_mode not in GRAPH_MODES:
            raise ValueError(f"graph_mode must be one of {GRAPH_MODES}, got {graph_mode!r}")
        if attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, got {attention_impl!r}")
        self.width = width
        self.grid = (int(grid[0]), int(grid[1]))
        self.in_dim = in_dim or width
        self.out_dim = out_dim or width
        self.resblocks = nn.Sequential(
            *[
                CrossFrameGraphFormerBlock(
                    width,
                    heads,
                    sim_threshold,
                    cross_frame_repeats,
                    attn_dropout,
                    graph_mode,
                    attention_impl,
                    frame_window,
                )
                for _ in range(layers)
            ]
        )
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(width**-0.5 * torch.randn(width, self.out_dim))
        self.time_embed = nn.Parameter(torch.zeros(num_frames, width))
        # trunc_normal_'s bounds are absolute (+-2): kept for the official 0.02, widened for a std above 1
        bound = max(2.0, 2 * time_embed_std)
        nn.init.trunc_normal_(self.time_embed, std=time_embed_std, a=-bound, b=bound)
        # Frozen and absent from the official checkpoints (§6.3); a buffer so that no optimizer or
        # requires_grad_() can ever train it, while our own checkpoints still record which table was used.
        if pos_embed == "sincos":
            table = sincos_2d_position_table(width, self.grid)
        else:  # the official code builds the sin-cos table, then overwrites it in place with trunc-normal noise
            table = nn.init.trunc_normal_(torch.empty(1 + self.grid[0] * self.grid[1], width), std=0.02)
        self.register_buffer("pos_2D_embed", table)
        # Not in the official model: lets a narrow module run on wide backbone features (e.g. 1280-d EfficientNet).
        self.input_proj = nn.Linear(in_dim, width) if in_dim is not None and in_dim != width else None
        self.apply(self._init_weights)
        if init_std is not None:
            self._reinit_blocks(init_std)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # Also reaches nn.MultiheadAttention.out_proj (an nn.Linear), as in the official code; in_proj keeps xavier.
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def _reinit_blocks(self, std: float) -> None:
        """Every weight matrix of the blocks (attention in-projections included) drawn with `std` instead of the
        official 0.02 / xavier. At width 128 the official scale leaves each residual branch ~3x weaker than at 1408,
        so the module starts out nearly linear, hence blind to frame order, and a short run never leaves that."""
        for module in self.resblocks.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=std)
            elif isinstance(module, nn.MultiheadAttention):
                nn.init.trunc_normal_(module.in_proj_weight, std=std)

    def num_output_tokens(self, num_frames: int) -> int:
        rows, cols = self.grid
        return 1 + rows * cols if num_frames == 1 else num_frames * (1 + rows + cols)

    def _time_embedding(self, num_frames: int) -> Tensor:
        """(T, D); rows nearest-interpolated when the clip has another frame count than the table (official)."""
        if num_frames == self.time_embed.shape[0]:
            return self.time_embed
        resized = F.interpolate(self.time_embed.T.unsqueeze(0), size=num_frames, mode="nearest")
        return resized.squeeze(0).T

    def forward(self, x: Tensor) -> Tensor:
        tokens_per_frame = 1 + self.grid[0] * self.grid[1]
        if x.dim() != 4 or x.shape[2] != tokens_per_frame or x.shape[3] != self.in_dim:
            raise ValueError(
                f"expected (B, T, {tokens_per_frame}, {self.in_dim}) for grid {self.grid}, got {tuple(x.shape)}"
            )
        if self.input_proj is not None:
            x = self.input_proj(x)
        x = x + self._time_embedding(x.shape[1]).unsqueeze(1)
        x = x + self.pos_2D_embed
        x = self.resblocks(x)
        return self.ln_post(pool_frame_tokens(x, self.grid)) @ self.proj
