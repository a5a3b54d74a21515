import pytest
import torch

from stgt_model.config import preset_config
from stgt_model.factory import create_model
from stgt_model.qa import AnswerVocab, QAHead, qa_accuracy, qa_correct, qa_loss


def test_vocab_keeps_the_top_k_training_answers():
    vocab = AnswerVocab.build(["dog", "cat", "dog", "man", "cat", "dog", "zebra", "ant"], top_k=3)
    # counts: dog 3, cat 2, then ant / man / zebra 1 each -> the tie is broken alphabetically
    assert vocab.answers == ("dog", "cat", "ant")
    assert len(vocab) == 3 and vocab.unknown_index == 3
    assert [vocab.encode(a) for a in ("dog", "cat", "ant", "zebra", "never seen")] == [0, 1, 2, 3, 3]
    assert vocab.decode(1) == "cat" and vocab.decode(vocab.unknown_index) is None
    assert AnswerVocab.from_dict(vocab.to_dict()) == vocab
    assert vocab.to_dict() == {"dog": 0, "cat": 1, "ant": 2}


def test_unknown_answers_always_count_wrong():
    vocab = AnswerVocab.build(["yes", "yes", "no"], top_k=2)  # yes -> 0, no -> 1
    targets = torch.tensor([vocab.encode("yes"), vocab.encode("no"), vocab.encode("maybe")])
    logits = torch.tensor([[5.0, 0.0], [5.0, 0.0], [0.0, 5.0]])  # the head has no logit for `unknown`
    assert qa_correct(logits, targets).tolist() == [True, False, False]
    assert qa_accuracy(logits, targets) == pytest.approx(1 / 3)
    # even a head that is sure of every vocabulary answer cannot get the unknown one right
    assert not qa_correct(torch.eye(2)[[0, 1, 1]] * 100, targets)[2]


def test_qa_loss_ignores_unknown_targets():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]], requires_grad=True)
    loss = qa_loss(logits, torch.tensor([0, 2]), unknown_index=2)
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(logits[:1], torch.tensor([0])).item())
    only_unknown = qa_loss(logits, torch.tensor([2, 2]), unknown_index=2)
    assert only_unknown.item() == 0.0
    only_unknown.backward()  # still differentiable (zero gradient), no NaN


def test_head_is_the_alpro_mlp():
    head = QAHead(hidden_size=8, num_answers=5)
    first, act, last = head.mlp
    assert (first.in_features, first.out_features, last.in_features, last.out_features) == (8, 16, 16, 5)
    assert isinstance(act, torch.nn.ReLU)


@pytest.mark.parametrize("pooling", ["query_mean", "text_cls"])
def test_model_qa_logits_train(pooling):
    torch.manual_seed(0)
    cfg = preset_config("tiny", {"qa": {"num_answers": 5, "pooling": pooling}})
    model = create_model(cfg)
    features = torch.randn(2, cfg.stgt.num_frames, 1 + 4 * 4, cfg.backbone.tiny_vit.width)
    ids = torch.randint(1000, 2000, (2, 7))
    ids[:, 0] = 101
    logits = model.qa_logits(ids, torch.ones_like(ids), features=features)
    assert logits.shape == (2, 5)
    qa_loss(logits, torch.tensor([1, 5]), unknown_index=5).backward()
    assert model.qa_head.mlp[0].weight.grad.abs().sum() > 0
    assert model.graph_cross_model.proj.grad.abs().sum() > 0


def test_model_without_qa_head_says_so():
    model = create_model("tiny")
    assert model.qa_head is None
    with pytest.raises(RuntimeError, match="num_answers"):
        model.qa_logits(torch.ones(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.long), features=torch.zeros(1))
