"""STGTModel: frozen backbone -> STGT module (or the mean-pool baseline) -> ln_vision -> Q-Former + heads.

stgt-reference.md §1.1 and §2. State-dict names mirror the official ones where they can (`graph_cross_model.*`,
`ln_vision.*`, `query_tokens`, `vision_proj.*`, `text_proj.*`, `itm_head.*`, `temp`); the Q-Former lives under
`qformer.*` (see checkpoint_import.py for the mapping from `Qformer.*`) and the backbone under `backbone.*`.
The model takes raw frames (B, T, 3, H, W) or cached backbone tokens (B, T, 1 + h*w, C).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from stgt_model.backbones import VisionBackbone
from stgt_model.config import LOSS_NAMES, ModelConfig
from stgt_model.losses import (
    all_gather_with_grad,
    concat_all_gather,
    contrastive_logits,
    csal_loss,
    csal_targets,
    decoder_input_ids,
    max_query_similarity,
    positive_indices,
    rank_and_world_size,
    sample_hard_negatives,
    twin_order_loss,
    vtc_loss,
    vtg_labels,
    vtg_loss,
    vtm_loss,
)
from stgt_model.qa import QAHead
from stgt_model.qformer import QFormer
from stgt_model.stgt import CrossGraphTransformer

CONTRASTIVE_LOGIT_USERS = {"vtc", "csal", "vtm", "twin"}  # VTM samples its hard negatives from the contrastive logits
TEMP_CLAMP_RANGE = (0.001, 0.5)  # BLIP-2's clamp, off by default (official STGT: unclamped, §7.9)


class MeanPoolFrames(nn.Module):
    """Frame-order-blind baseline for ablations: the mean of the frames' tokens (B, T, N, C) -> (B, N, width)."""

    def __init__(self, in_dim: int, width: int) -> None:
        super().__init__()
        self.input_proj = nn.Linear(in_dim, width) if in_dim != width else nn.Identity()

    def forward(self, features: Tensor) -> Tensor:
        return self.input_proj(features.mean(dim=1))


class STGTModel(nn.Module):
    def __init__(self, cfg: ModelConfig, backbone: VisionBackbone) -> None:
        super().__init__()
        self.config = cfg
        self.backbone = backbone
        width = cfg.stgt.width
        if cfg.temporal == "stgt":
            stgt = cfg.stgt
            self.graph_cross_model = CrossGraphTransformer(
                width=width,
                layers=stgt.layers,
                heads=stgt.heads,
                num_frames=stgt.num_frames,
                grid=backbone.grid,
                sim_threshold=stgt.sim_threshold,
                pos_embed=stgt.pos_embed,
                cross_frame_repeats=stgt.cross_frame_repeats,
                attn_dropout=stgt.attn_dropout,
                graph_mode=stgt.graph_mode,
                attention_impl=stgt.attention_impl,
                in_dim=backbone.out_dim,
                time_embed_std=stgt.time_embed_std,
                init_std=stgt.init_std,
            )
        else:
            self.mean_pool = MeanPoolFrames(backbone.out_dim, width)
        self.ln_vision = nn.LayerNorm(width)
        self.qformer = QFormer(cfg.qformer, encoder_width=width)
        hidden = cfg.qformer.hidden_size
        self.query_tokens = nn.Parameter(torch.zeros(1, cfg.qformer.num_query_tokens, hidden))
        nn.init.normal_(self.query_tokens, std=0.02)  # §1.4: N(0, 0.02)
        self.vision_proj = nn.Linear(hidden, cfg.embed_dim)
        self.text_proj = nn.Linear(hidden, cfg.embed_dim)
        self.itm_head = nn.Linear(hidden, 2)
        self.temp = nn.Parameter(torch.tensor(cfg.loss.temp_init))
        self.qa_head = QAHead(hidden, cfg.qa.num_answers, cfg.qa.hidden_multiplier) if cfg.qa.num_answers else None
        self._text_cache: dict[tuple[int, ...], Tensor] | None = None  # see cache_frozen_text
        self._text_cache_layers = 0

    # -- video and text encoders ------------------------------------------------------------------------------

    def video_tokens(self, frames: Tensor | None = None, features: Tensor | None = None) -> Tensor:
        """Raw frames (B, T, 3, H, W) or cached backbone tokens (B, T, 1 + h*w, C) -> video tokens (B, N, width)."""
        if (frames is None) == (features is None):
            raise ValueError("give exactly one of frames or features")
        if frames is not None:
            features = self.backbone(frames)
        if self.config.temporal == "stgt":
            tokens = self.graph_cross_model(features)
        else:
            tokens = self.mean_pool(features)
        return self.ln_vision(tokens)

    def _queries(self, batch_size: int) -> Tensor:
        return self.query_tokens.expand(batch_size, -1, -1)

    def encode_video(self, video_tokens: Tensor) -> tuple[Tensor, Tensor]:
        """-> (query states (B, Q, H), video features (B, Q, E) L2-normalised)."""
        query_states = self.qformer.query_pass(self._queries(len(video_tokens)), video_tokens)
        return query_states, F.normalize(self.vision_proj(query_states), dim=-1)

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """-> (pooled state (B, H), text feature (B, E) L2-normalised); pooled = [CLS] or the token mean
        (config.qformer.text_pooling)."""
        if self._text_cache is not None:
            pooled = self._cached_text_states(input_ids, attention_mask)
        else:
            pooled = self._pool_text(self.qformer.text_pass(input_ids, attention_mask), attention_mask)
        return pooled, F.normalize(self.text_proj(pooled), dim=-1)

    def _pool_text(self, states: Tensor, attention_mask: Tensor) -> Tensor:
        if self.config.qformer.text_pooling == "mean":
            weights = attention_mask.unsqueeze(-1).to(states.dtype)
            return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return states[:, 0]

    # -- caching the frozen part of the text pass (training with qformer.trainable_text_layers) ------------------

    def frozen_text_layers(self) -> int:
        """How many leading Q-Former layers the text pass runs with frozen weights: 0 when the embeddings train or
        dropout is on (a caption would not encode the same twice)."""
        qformer = self.qformer

        def trains(modules: list[nn.Module]) -> bool:
            return any(p.requires_grad for module in modules for p in module.parameters())

        if self.config.qformer.dropout > 0 or trains(qformer.text_input_modules()):
            return 0
        count = 0
        while count < len(qformer.bert.encoder.layer) and not trains(qformer.text_layer_modules(count)):
            count += 1
        return count

    TEXT_GROUP_ROWS = 16  # captions per length group in the cached text pass (_cached_text_states)

    def cache_frozen_text(self, enabled: bool) -> None:
        """Memoise each caption's text states after the frozen layers (frozen_text_layers), so that a training step
        runs only the trainable rest; a step of the contrastive phase otherwise spends about half its time
        re-encoding captions it has seen before. Off again with False (the cache holds no gradient)."""
        self._text_cache = None
        if enabled:
            # Fixed here, not per step: every entry must stop at the same layer.
            self._text_cache_layers = self.frozen_text_layers()
            if self._text_cache_layers == 0:
                raise ValueError("cache_frozen_text needs frozen text layers (qformer.trainable_text_layers below "
                                 "qformer.num_layers) and qformer.dropout 0")
            self._text_cache = {}

    def _cached_text_states(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Pooled states; each caption's frozen prefix comes from the cache (the whole pooled state when every
        text layer is frozen, else its per-token states after the frozen layers)."""
        cache = self._text_cache
        assert cache is not None
        frozen = self._text_cache_layers
        whole = frozen == len(self.qformer.bert.encoder.layer)
        keys = [tuple(ids[mask.bool()].tolist()) for ids, mask in zip(input_ids, attention_mask)]
        first_row: dict[tuple[int, ...], int] = {}
        for row, key in enumerate(keys):
            first_row.setdefault(key, row)
        new = [key for key in first_row if key not in cache]
        if new:
            rows = torch.tensor([first_row[key] for key in new], device=input_ids.device)
            ids, mask = input_ids[rows], attention_mask[rows]
            with torch.no_grad():
                prefix = self.qformer.text_prefix(ids, mask, frozen)
                states = self._pool_text(prefix, mask) if whole else [h[m.bool()] for h, m in zip(prefix, mask)]
            cache.update(zip(new, states))
        if whole:
            return torch.stack([cache[key] for key in keys])
        # The trainable layers run on captions grouped by length, each group padded only to its own longest:
        # padded to the batch's longest, a third to a half of a batch's text tokens were padding.
        order = sorted(range(len(keys)), key=lambda row: len(keys[row]))
        pooled = []
        for start in range(0, len(order), self.TEXT_GROUP_ROWS):
            group = [cache[keys[row]] for row in order[start:start + self.TEXT_GROUP_ROWS]]
            hidden = pad_sequence(group, batch_first=True)
            lengths = torch.tensor([len(states) for states in group], device=hidden.device)
            mask = (torch.arange(hidden.shape[1], device=hidden.device) < lengths[:, None]).to(attention_mask.dtype)
            pooled.append(self._pool_text(self.qformer.text_suffix(hidden, mask, frozen), mask))
        return torch.cat(pooled)[torch.tensor(order, device=input_ids.device).argsort()]

    @staticmethod
    def similarity(video_feat: Tensor, text_feat: Tensor) -> Tensor:
        """(Bv, Bt) coarse retrieval score: max over queries, no temperature (§4.2)."""
        return max_query_similarity(video_feat, text_feat)

    def itm_logits(self, video_tokens: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, 2) match logits: itm_head on every query output of the matching pass, averaged over queries (§2(c))."""
        num_queries = self.query_tokens.shape[1]
        states = self.qformer.matching_pass(self._queries(len(video_tokens)), video_tokens, input_ids, attention_mask)
        return self.itm_head(states[:, :num_queries]).mean(dim=1)

    def itm_scores(self, video_tokens: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(B,) match probability p_ITM = softmax(mean logits)[match] (§4.2 re-ranking adds the coarse score)."""
        return self.itm_logits(video_tokens, input_ids, attention_mask).softmax(dim=-1)[:, 1]

    def qa_logits(
        self, input_ids: Tensor, attention_mask: Tensor, frames: Tensor | None = None, features: Tensor | None = None
    ) -> Tensor:
        """(B, num_answers) from the matching pass over [queries; question] (pooling per config.qa.pooling)."""
        if self.qa_head is None:
            raise RuntimeError("this model has no QA head: set qa.num_answers > 0")
        video_tokens = self.video_tokens(frames, features)
        num_queries = self.query_tokens.shape[1]
        states = self.qformer.matching_pass(self._queries(len(video_tokens)), video_tokens, input_ids, attention_mask)
        if self.config.qa.pooling == "query_mean":
            fused = states[:, :num_queries].mean(dim=1)
        else:
            fused = states[:, num_queries]  # the question's [CLS]
        return self.qa_head(fused)

    # -- training losses ----------------------------------------------------------------------------------------

    def temperature(self) -> Tensor:
        if self.config.loss.temp_clamp:
            with torch.no_grad():
                self.temp.clamp_(*TEMP_CLAMP_RANGE)
        return self.temp

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        frames: Tensor | None = None,
        features: Tensor | None = None,
        losses: Iterable[str] = ("vtc", "vtm", "vtg"),
        twin_index: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Named losses plus their weighted `total`. Stage 1: ("vtc", "vtm", "vtg"); stage 2: ("csal", "vtm", "vtg").

        twin_index (B,): the batch position of each sample's time-reversed twin, -1 for none; "twin" needs it."""
        requested = tuple(losses)
        unknown = set(requested) - set(LOSS_NAMES)
        if unknown or not requested:
            raise ValueError(f"losses must be a non-empty subset of {LOSS_NAMES}, got {requested}")
        if "twin" in requested and twin_index is None:
            raise ValueError("loss 'twin' needs twin_index: batches that hold clips with their twins (pair_twins)")
        loss_cfg = self.config.loss
        video_tokens = self.video_tokens(frames, features)
        out: dict[str, Tensor] = {}

        if CONTRASTIVE_LOGIT_USERS & set(requested):
            _, video_feat = self.encode_video(video_tokens)
            _, text_feat = self.encode_text(input_ids, attention_mask)
            rank, _ = rank_and_world_size()
            video_feat_all, text_feat_all = concat_all_gather(video_feat), concat_all_gather(text_feat)
            logits_v2t, logits_t2v = contrastive_logits(
                video_feat, text_feat, video_feat_all, text_feat_all, self.temperature()
            )
            positives = positive_indices(len(input_ids), rank, input_ids.device)
            if "vtc" in requested:
                out["vtc"] = vtc_loss(logits_v2t, logits_t2v, positives, loss_cfg.vtc_label_smoothing)
            if "csal" in requested:
                targets = csal_targets(
                    video_feat, text_feat, video_feat_all, text_feat_all, loss_cfg.csal_scale, loss_cfg.csal_floor
                )
                out["csal"] = csal_loss(logits_v2t, logits_t2v, targets, loss_cfg.csal_smoothing)
            if "twin" in requested:
                assert twin_index is not None
                twin_columns = torch.where(twin_index >= 0, twin_index + rank * len(input_ids), twin_index)
                out["twin"] = twin_order_loss(logits_v2t, logits_t2v, positives, twin_columns)
            if "vtm" in requested:
                out["vtm"] = self._vtm_loss(video_tokens, input_ids, attention_mask, logits_v2t, logits_t2v, positives)
        if "vtg" in requested:
            out["vtg"] = self._vtg_loss(video_tokens, input_ids, attention_mask)

        weights = loss_cfg.weights
        out["total"] = sum(getattr(weights, name) * out[name] for name in requested)
        return out

    def _vtm_loss(
        self,
        video_tokens: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor,
        logits_v2t: Tensor,
        logits_t2v: Tensor,
        positives: Tensor,
    ) -> Tensor:
        """3b pairs (pos text, pos video), (pos text, hard-neg video), (hard-neg text, pos video) -> CE (§2(c))."""
        ids_all, mask_all = concat_all_gather(input_ids), concat_all_gather(attention_mask)
        video_all = all_gather_with_grad(video_tokens)
        video_all = torch.where(torch.isnan(video_all), torch.zeros_like(video_all), video_all)  # official: NaN -> 0
        negative_video, negative_text = sample_hard_negatives(logits_v2t, logits_t2v, positives)
        pair_ids = torch.cat([input_ids, input_ids, ids_all[negative_text]])
        pair_mask = torch.cat([attention_mask, attention_mask, mask_all[negative_text]])
        pair_video = torch.cat([video_tokens, video_all[negative_video], video_tokens])
        return vtm_loss(self.itm_logits(pair_video, pair_ids, pair_mask))

    def _vtg_loss(self, video_tokens: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Causal captioning over the queries with [DEC] as the first token; label smoothing 0.1 (§2(d))."""
        logits = self.qformer.generation_logits(
            self._queries(len(video_tokens)),
            video_tokens,
            decoder_input_ids(input_ids, self.qformer.bos_token_id),
            attention_mask,
        )
        return vtg_loss(logits, vtg_labels(input_ids, self.qformer.pad_token_id), self.config.loss.vtg_label_smoothing)
