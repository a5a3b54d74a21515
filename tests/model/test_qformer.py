import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

from stgt_model.config import ModelConfig, QFormerConfig, preset_config
from stgt_model.qformer import (
    DEC_TOKEN,
    QFormer,
    TextProcessor,
    blip_caption,
    build_tokenizer,
    generation_attention_mask,
    load_text_weights,
    minilm_path,
    read_bert_state_dict,
)

TINY = preset_config("tiny").qformer
ENCODER_WIDTH = 24


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(TINY)


@pytest.fixture(scope="module")
def minilm_init():
    """The default (MiniLM-sized) Q-Former initialised from the offline MiniLM package, loaded once."""
    torch.manual_seed(0)
    cfg = ModelConfig().qformer
    qformer = QFormer(cfg, encoder_width=ENCODER_WIDTH)
    written = load_text_weights(qformer, cfg, minilm_path())
    return qformer, written, read_bert_state_dict(minilm_path())


def tiny_qformer(**overrides) -> QFormer:
    torch.manual_seed(0)
    return QFormer(TINY.model_copy(update=overrides), encoder_width=ENCODER_WIDTH).eval()


def test_blip_caption_matches_lavis():
    assert blip_caption('A Man, is "SINGING"!  (loudly)...') == "a man, is singing loudly"
    assert blip_caption("  two:dogs;run~#*  ") == "two dogs run"
    assert blip_caption(" ".join(f"w{i}" for i in range(60))) == " ".join(f"w{i}" for i in range(50))


def test_tokenizer_adds_dec_after_the_bert_vocabulary(tokenizer):
    assert len(tokenizer) == TINY.vocab_size + 1
    assert tokenizer.convert_tokens_to_ids(DEC_TOKEN) == TINY.vocab_size == tiny_qformer().bos_token_id
    assert tokenizer.bos_token == DEC_TOKEN


def test_text_processor_pads_and_truncates(tokenizer):
    batch = TextProcessor(tokenizer, max_text_len=8)(["A dog.", "one two three four five six seven eight nine"])
    assert batch["input_ids"].shape == (2, 8) and batch["attention_mask"].shape == (2, 8)
    assert batch["input_ids"][0].tolist()[:4] == [
        101,
        tokenizer.convert_tokens_to_ids("a"),
        tokenizer.convert_tokens_to_ids("dog"),
        102,
    ]
    assert batch["attention_mask"][0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert batch["input_ids"][1, -1].item() == 102 and batch["attention_mask"][1].all()


def test_text_processor_can_pad_to_the_longest_caption(tokenizer):
    texts = ["A dog.", "a big dog"]  # [CLS] a dog [SEP] and [CLS] a big dog [SEP]
    longest = TextProcessor(tokenizer, max_text_len=8, padding="longest")(texts)
    fixed = TextProcessor(tokenizer, max_text_len=8)(texts)
    assert longest["input_ids"].shape == (2, 5)
    assert torch.equal(longest["input_ids"], fixed["input_ids"][:, :5])
    assert torch.equal(longest["attention_mask"], fixed["attention_mask"][:, :5])


def test_cross_attention_every_second_layer_and_separate_ffns():
    qformer = tiny_qformer(num_layers=4)
    layers = qformer.bert.encoder.layer
    assert [layer.has_cross_attention for layer in layers] == [True, False, True, False]
    assert hasattr(layers[1], "intermediate") and hasattr(layers[1], "intermediate_query")
    assert layers[0].crossattention.attention.key.in_features == ENCODER_WIDTH


def test_pass_shapes():
    qformer = tiny_qformer()
    queries, video = torch.randn(2, 3, TINY.hidden_size), torch.randn(2, 5, ENCODER_WIDTH)
    ids, mask = torch.randint(1000, 2000, (2, 6)), torch.ones(2, 6, dtype=torch.long)
    assert qformer.query_pass(queries, video).shape == (2, 3, TINY.hidden_size)
    assert qformer.text_pass(ids, mask).shape == (2, 6, TINY.hidden_size)
    assert qformer.matching_pass(queries, video, ids, mask).shape == (2, 9, TINY.hidden_size)
    assert qformer.generation_logits(queries, video, ids, mask).shape == (2, 6, TINY.vocab_size + 1)


def test_generation_mask_layout():
    allowed = generation_attention_mask(2, torch.tensor([[1, 1, 0]]), torch.float32)[0, 0] == 0
    expected = torch.tensor(
        [
            [1, 1, 0, 0, 0],  # queries see only queries
            [1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0],  # text t sees the queries and text <= t
            [1, 1, 1, 1, 0],
            [1, 1, 1, 1, 0],  # padding is never attended to
        ],
        dtype=torch.bool,
    )
    assert torch.equal(allowed, expected)


def test_generation_pass_is_causal_and_queries_ignore_text():
    """Equal to BLIP-2's cached-query pass: the query rows are the query pass; text t sees only text <= t."""
    qformer = tiny_qformer()
    torch.manual_seed(1)
    queries, video = torch.randn(1, 3, TINY.hidden_size), torch.randn(1, 5, ENCODER_WIDTH)
    ids, mask = torch.randint(1000, 2000, (1, 6)), torch.ones(1, 6, dtype=torch.long)
    with torch.no_grad():
        logits = qformer.generation_logits(queries, video, ids, mask)
        changed_tail = ids.clone()
        changed_tail[0, 4:] = 1234
        logits_changed = qformer.generation_logits(queries, video, changed_tail, mask)
        assert torch.allclose(logits[:, :4], logits_changed[:, :4], atol=1e-5)
        assert not torch.allclose(logits[:, 4:], logits_changed[:, 4:])

        # the query rows of the joint pass equal the query-only pass
        embeddings = qformer.embeddings(input_ids=ids, query_embeds=queries)
        joint = qformer._run(embeddings, 3, generation_attention_mask(3, mask, embeddings.dtype), video)
        assert torch.allclose(joint[:, :3], qformer.query_pass(queries, video), atol=1e-5)


def test_lm_head_decoder_is_the_word_embedding():
    qformer = tiny_qformer()
    with torch.no_grad():
        qformer.embeddings.word_embeddings.weight[5].fill_(3.0)
        hidden = torch.randn(1, 1, TINY.hidden_size)
        logits = qformer.lm_head(hidden, qformer.embeddings.word_embeddings.weight)
        transformed = qformer.lm_head.transform(hidden)
        assert torch.allclose(logits[0, 0, 5], transformed.sum() * 3.0 + qformer.lm_head.bias[5], atol=1e-4)
    assert "lm_head.decoder.weight" not in qformer.state_dict()  # tied: stored once


def test_minilm_init_copies_the_text_side(minilm_init):
    qformer, written, minilm = minilm_init
    ours = qformer.state_dict()
    vocab = minilm["embeddings.word_embeddings.weight"].shape[0]
    assert torch.equal(ours["embeddings.word_embeddings.weight"][:vocab], minilm["embeddings.word_embeddings.weight"])
    assert torch.equal(ours["bert.layernorm.weight"], minilm["embeddings.LayerNorm.weight"])
    for i in (0, 5):
        layer = f"bert.encoder.layer.{i}"
        assert torch.equal(
            ours[f"{layer}.attention.attention.query.weight"], minilm[f"encoder.layer.{i}.attention.self.query.weight"]
        )
        assert torch.equal(
            ours[f"{layer}.intermediate.dense.weight"], minilm[f"encoder.layer.{i}.intermediate.dense.weight"]
        )
        assert torch.equal(ours[f"{layer}.output.LayerNorm.bias"], minilm[f"encoder.layer.{i}.output.LayerNorm.bias"])


def test_minilm_init_copies_the_text_ffn_into_the_query_ffn(minilm_init):
    qformer, written, _ = minilm_init
    ours = qformer.state_dict()
    for i in range(6):
        layer = f"bert.encoder.layer.{i}"
        assert torch.equal(ours[f"{layer}.intermediate_query.dense.weight"], ours[f"{layer}.intermediate.dense.weight"])
        assert torch.equal(ours[f"{layer}.output_query.dense.bias"], ours[f"{layer}.output.dense.bias"])
        assert f"{layer}.output_query.LayerNorm.weight" in written
    # cross-attention stays random
    assert not any("crossattention" in key for key in written)


def test_text_init_rejects_a_model_of_another_size():
    cfg = TINY.model_copy(update={"text_model": "minilm"})
    with pytest.raises(ValueError, match="do not match"):
        load_text_weights(QFormer(cfg, encoder_width=ENCODER_WIDTH), cfg, minilm_path())


def test_random_text_model_needs_no_folder():
    assert isinstance(QFormerConfig(text_model="random"), QFormerConfig)
    with pytest.raises(FileNotFoundError):
        build_tokenizer(QFormerConfig(text_model="/nonexistent/bert"))
