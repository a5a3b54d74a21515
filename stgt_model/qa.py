"""Video QA as answer classification (stgt-reference.md §4.3, §7.11).

The answer vocabulary is the top-k training answers; any other answer maps to a dedicated `unknown` index
(= len(vocab), as the official `ans2label` builders do) that the head has no logit for, so it is never
predicted and such a question always counts wrong. The head is ALPRO's 2-layer MLP (h -> 2h -> ReLU -> C).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class AnswerVocab:
    answers: tuple[str, ...]

    @classmethod
    def build(cls, train_answers: Iterable[str], top_k: int) -> AnswerVocab:
        """The top_k most frequent training answers; ties broken alphabetically so the vocab is deterministic."""
        counts = Counter(train_answers)
        ranked = sorted(counts, key=lambda answer: (-counts[answer], answer))
        return cls(tuple(ranked[:top_k]))

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {answer: i for i, answer in enumerate(self.answers)})

    def __len__(self) -> int:
        return len(self.answers)

    @property
    def unknown_index(self) -> int:
        return len(self.answers)

    def encode(self, answer: str) -> int:
        return self._index.get(answer, self.unknown_index)

    def decode(self, index: int) -> str | None:
        """The answer string, or None for the unknown index."""
        return self.answers[index] if 0 <= index < len(self.answers) else None

    def to_dict(self) -> dict[str, int]:
        """ans2label, the official mapping format."""
        return dict(self._index)

    @classmethod
    def from_dict(cls, ans2label: Mapping[str, int]) -> AnswerVocab:
        return cls(tuple(sorted(ans2label, key=ans2label.__getitem__)))


class QAHead(nn.Module):
    """ALPRO classifier: Linear(h, m*h) -> ReLU -> Linear(m*h, num_answers)."""

    def __init__(self, hidden_size: int, num_answers: int, hidden_multiplier: int = 2) -> None:
        super().__init__()
        inner = hidden_multiplier * hidden_size
        self.mlp = nn.Sequential(nn.Linear(hidden_size, inner), nn.ReLU(inplace=True), nn.Linear(inner, num_answers))

    def forward(self, fused: Tensor) -> Tensor:
        return self.mlp(fused)


def qa_loss(logits: Tensor, targets: Tensor, unknown_index: int) -> Tensor:
    """Cross-entropy over the vocabulary; out-of-vocabulary targets carry no learnable signal and are ignored."""
    if bool((targets == unknown_index).all()):
        return logits.sum() * 0.0  # a batch of only unknown answers: zero loss rather than the NaN of an empty mean
    return F.cross_entropy(logits, targets, ignore_index=unknown_index)


def qa_correct(logits: Tensor, targets: Tensor) -> Tensor:
    """Bool (B,): argmax == target. An unknown target (index num_answers) never matches, so it counts wrong."""
    return logits.argmax(dim=-1) == targets


def qa_accuracy(logits: Tensor, targets: Tensor) -> float:
    return qa_correct(logits, targets).float().mean().item() if len(targets) else 0.0
