"""Loss formulas against values worked out by hand (stgt-reference.md §2)."""

import datetime
import math

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from stgt_model.losses import (
    all_gather_with_grad,
    concat_all_gather,
    contrastive_logits,
    csal_loss,
    csal_targets,
    decoder_input_ids,
    max_query_similarity,
    positive_indices,
    sample_hard_negatives,
    twin_order_loss,
    vtc_loss,
    vtg_labels,
    vtg_loss,
    vtm_labels,
    vtm_loss,
)


def smoothed_ce(logits, target, eps):
    """Cross-entropy of one row with label smoothing eps over K classes, written out."""
    log_z = math.log(sum(math.exp(x) for x in logits))
    log_p = [x - log_z for x in logits]
    k = len(logits)
    return -((1 - eps) * log_p[target] + eps / k * sum(log_p))


def test_max_query_similarity_takes_the_best_query():
    video = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.6, 0.8], [0.8, -0.6]]])  # (2 videos, 2 queries, E=2)
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # s(0,0) = max(1, 0) = 1; s(0,1) = max(0, 1) = 1; s(1,0) = max(0.6, 0.8) = 0.8; s(1,1) = max(0.8, -0.6) = 0.8
    assert torch.allclose(max_query_similarity(video, text), torch.tensor([[1.0, 1.0], [0.8, 0.8]]))


def test_vtc_by_hand():
    video = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # one query each
    text = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # s = [[1, 0.6], [0, 0.8]]; temp 0.5 -> v2t = [[2, 1.2], [0, 1.6]], t2v = s^T / temp = [[2, 0], [1.2, 1.6]]
    v2t, t2v = contrastive_logits(video, text, video, text, temp=0.5)
    assert torch.allclose(v2t, torch.tensor([[2.0, 1.2], [0.0, 1.6]]))
    assert torch.allclose(t2v, torch.tensor([[2.0, 0.0], [1.2, 1.6]]))
    # each row: -(0.9 + 0.05) log p_pos - 0.05 log p_neg; the loss is the mean over rows, then over directions
    expected_v2t = (smoothed_ce([2.0, 1.2], 0, 0.1) + smoothed_ce([0.0, 1.6], 1, 0.1)) / 2
    expected_t2v = (smoothed_ce([2.0, 0.0], 0, 0.1) + smoothed_ce([1.2, 1.6], 1, 0.1)) / 2
    loss = vtc_loss(v2t, t2v, positive_indices(2, rank=0), label_smoothing=0.1)
    assert loss.item() == pytest.approx((expected_v2t + expected_t2v) / 2, rel=1e-6)


def test_twin_order_loss_by_hand():
    # Samples 0 and 1 are twins, sample 2 has none. Row r's two-way choice: its positive (r) against its twin.
    v2t = torch.tensor([[2.0, 1.0, 5.0], [0.5, 0.0, -1.0], [9.0, 9.0, 0.0]])
    t2v = torch.tensor([[1.0, 1.0, 3.0], [2.0, 0.0, 4.0], [0.0, 0.0, 0.0]])
    twins = torch.tensor([1, 0, -1])
    two_way = lambda pos, twin: math.log(1 + math.exp(twin - pos))  # -log softmax([pos, twin])[0]
    v2t_part = (two_way(2.0, 1.0) + two_way(0.0, 0.5)) / 2  # row 1: positive v2t[1,1]=0, twin v2t[1,0]=0.5
    t2v_part = (two_way(1.0, 1.0) + two_way(0.0, 2.0)) / 2
    loss = twin_order_loss(v2t, t2v, torch.arange(3), twins)
    assert loss.item() == pytest.approx(0.5 * (v2t_part + t2v_part), rel=1e-6)
    # The batch's other columns (here 5.0 and 9.0) play no part: only the twin is a negative.


def test_twin_order_loss_without_twins_is_zero_with_gradient():
    logits = torch.randn(3, 3, requires_grad=True)
    loss = twin_order_loss(logits, logits.t(), torch.arange(3), torch.full((3,), -1))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None


def test_twin_order_loss_reads_gathered_columns():
    # Rank 1 of 2 with 2 local samples: its positives are columns 2 and 3, the twins' columns too.
    v2t = torch.tensor([[0.0, 0.0, 3.0, 1.0], [0.0, 0.0, 2.0, 1.0]])
    loss = twin_order_loss(v2t, v2t, positive_indices(2, rank=1), torch.tensor([3, 2]))
    expected = (math.log(1 + math.exp(1.0 - 3.0)) + math.log(1 + math.exp(2.0 - 1.0))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_csal_targets_by_hand():
    r = 1 / math.sqrt(2)
    # video 0's two queries average to [0.5, 0.5] -> renormalised [r, r]; videos 1 and 2 are [1, 0] and [-1, 0]
    video = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]], [[-1.0, 0.0], [-1.0, 0.0]]])
    text = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    # S^v: (0,1) = r, (0,2) = -r -> 0, (1,2) = -1 -> 0.   S^t: (0,1) = 0.8, (0,2) = 0, (1,2) = 0.6
    # C = S^v * S^t: (0,1) = 0.8 r = 0.5657; (0,2) = 0 and (1,2) = 0 are under the 0.05 floor -> -100; diagonal 1
    c01 = 0.8 * r
    row0 = [math.exp(5 * 1.0), math.exp(5 * c01), math.exp(5 * -100.0)]
    row1 = [math.exp(5 * c01), math.exp(5 * 1.0), math.exp(5 * -100.0)]
    expected = torch.tensor([[x / sum(row0) for x in row0], [x / sum(row1) for x in row1], [0.0, 0.0, 1.0]])
    targets = csal_targets(video, text, video, text, scale=5.0, floor=0.05)
    assert torch.allclose(targets, expected, atol=1e-6)
    assert targets[0, 1].item() == pytest.approx(math.exp(5 * c01) / (math.exp(5) + math.exp(5 * c01)), rel=1e-5)


def test_csal_floor_drops_weak_cross_similarity():
    # S^v_01 = S^t_01 = 0.2 -> C_01 = 0.04 < 0.05 -> -100 -> weight e^-500 / (...) = 0
    other = torch.tensor([0.2, math.sqrt(0.96)])
    video = torch.stack([torch.tensor([1.0, 0.0]), other]).unsqueeze(1)
    text = torch.stack([torch.tensor([1.0, 0.0]), other])
    targets = csal_targets(video, text, video, text)
    assert torch.allclose(targets, torch.eye(2), atol=1e-12)


def test_csal_loss_by_hand():
    v2t = torch.tensor([[1.0, 0.0], [0.5, 2.0]])
    t2v = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    y = torch.tensor([[0.8, 0.2], [0.0, 1.0]])
    # smoothed targets 0.99 y + 0.01 / 2: [[0.797, 0.203], [0.005, 0.995]]
    ys = [[0.797, 0.203], [0.005, 0.995]]

    def soft_ce(logits, targets):
        total = 0.0
        for row, target in zip(logits, targets, strict=True):
            log_z = math.log(sum(math.exp(x) for x in row))
            total += -sum(t * (x - log_z) for t, x in zip(target, row, strict=True))
        return total / len(logits)

    expected = (soft_ce(v2t.tolist(), ys) + soft_ce(t2v.tolist(), ys)) / 2
    assert csal_loss(v2t, t2v, y, smoothing=0.01).item() == pytest.approx(expected, rel=1e-6)


def test_csal_targets_are_not_detached():
    """The official targets carry gradient (§2(b)): with the logits detached, the features still get one."""
    torch.manual_seed(0)
    video = F.normalize(torch.randn(4, 3, 8), dim=-1).requires_grad_()
    text = F.normalize(torch.randn(4, 8), dim=-1).requires_grad_()
    # features chosen so that some off-diagonal cross-similarities pass the floor
    with torch.no_grad():
        video.copy_(F.normalize(video + 2.0, dim=-1))
        text.copy_(F.normalize(text + 2.0, dim=-1))
    v2t, t2v = contrastive_logits(video, text, video, text, temp=0.07)
    targets = csal_targets(video, text, video, text)
    assert targets.requires_grad
    csal_loss(v2t.detach(), t2v.detach(), targets).backward()
    assert video.grad is not None and video.grad.abs().sum() > 0
    assert text.grad is not None and text.grad.abs().sum() > 0


def test_vtm_labels_and_loss():
    assert vtm_labels(2).tolist() == [1, 1, 0, 0, 0, 0]
    # equal logits: every pair has p = 1/2, CE = log 2
    assert vtm_loss(torch.zeros(6, 2)).item() == pytest.approx(math.log(2))
    with pytest.raises(ValueError):
        vtm_loss(torch.zeros(5, 2))


@pytest.mark.parametrize("rank", [0, 1])
def test_hard_negatives_never_pick_the_positive(rank):
    torch.manual_seed(0)
    b, world = 64, 2
    positives = positive_indices(b, rank)
    v2t = torch.randn(b, b * world)
    t2v = torch.randn(b, b * world)
    v2t[torch.arange(b), positives] = 50.0  # the positive is by far the most similar column
    t2v[torch.arange(b), positives] = 50.0
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        negative_video, negative_text = sample_hard_negatives(v2t, t2v, positives, generator)
        assert (negative_video != positives).all() and (negative_text != positives).all()
        assert negative_video.max() < b * world and negative_text.min() >= 0


def test_hard_negatives_follow_the_similarity():
    b = 50
    positives = positive_indices(b, rank=0)
    logits = torch.zeros(b, 2 * b)
    logits[:, 60] = 10.0  # column 60 (another rank's sample): p = e^10 / (e^10 + 98) = 0.9956 for every row
    negative_video, negative_text = sample_hard_negatives(logits, logits, positives, torch.Generator().manual_seed(0))
    assert (negative_video == 60).sum() >= 45 and (negative_text == 60).sum() >= 45


def test_hard_negatives_need_two_samples():
    with pytest.raises(ValueError, match="at least 2"):
        sample_hard_negatives(torch.zeros(1, 1), torch.zeros(1, 1), positive_indices(1, 0))


def test_vtg_decoder_ids_and_labels():
    ids = torch.tensor([[101, 7, 8, 102, 0, 0]])
    assert decoder_input_ids(ids, bos_token_id=30522).tolist() == [[30522, 7, 8, 102, 0, 0]]
    assert ids[0, 0] == 101  # the input is not modified
    assert vtg_labels(ids, pad_token_id=0).tolist() == [[101, 7, 8, 102, -100, -100]]


def test_vtg_loss_is_shifted_and_ignores_padding():
    labels = torch.tensor([[0, 2, 1, -100]])  # label 0 (the [DEC] position) is never predicted
    logits = torch.zeros(1, 4, 3)
    logits[0, 0, 2] = 30.0  # position 0 predicts label 1 (= 2)
    logits[0, 1, 1] = 30.0  # position 1 predicts label 2 (= 1)
    logits[0, 2] = torch.tensor([5.0, -3.0, 1.0])  # position 2 predicts a pad: ignored
    logits[0, 3] = float("nan")  # the last position predicts nothing
    assert vtg_loss(logits, labels, label_smoothing=0.0).item() == pytest.approx(0.0, abs=1e-6)
    # with smoothing 0.1 over V=3, each confident row costs -(0.9 + 0.1/3) log p_y - (0.1/3) * 2 * log p_other
    expected = smoothed_ce([0.0, 0.0, 30.0], 2, 0.1)
    assert vtg_loss(logits, labels, label_smoothing=0.1).item() == pytest.approx(expected, rel=1e-5)


def test_gathers_are_identity_in_a_single_process():
    x = torch.randn(3, 2, requires_grad=True)
    assert concat_all_gather(x) is x  # single process: the local tensors, with gradient (§2)
    assert all_gather_with_grad(x) is x
    assert positive_indices(3, rank=2).tolist() == [6, 7, 8]


def _two_rank_worker(rank: int, world: int, init_file: str) -> None:
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60)
    )
    try:
        torch.manual_seed(0)
        b = 2
        video_all = F.normalize(torch.randn(b * world, 3, 4), dim=-1)
        text_all = F.normalize(torch.randn(b * world, 4), dim=-1)
        rows = slice(rank * b, (rank + 1) * b)
        video, text = video_all[rows], text_all[rows]
        v2t, t2v = contrastive_logits(video, text, concat_all_gather(video), concat_all_gather(text), 0.1)
        full_v2t, full_t2v = contrastive_logits(video_all, text_all, video_all, text_all, 0.1)
        assert torch.allclose(v2t, full_v2t[rows]) and torch.allclose(t2v, full_t2v[rows])
        positives = positive_indices(b, rank)
        assert torch.allclose(vtc_loss(v2t, t2v, positives), vtc_loss(full_v2t[rows], full_t2v[rows], positives))
        x = torch.full((b, 2), float(rank), requires_grad=True)
        weights = torch.arange(b * world * 2, dtype=torch.float).view(b * world, 2)
        gathered = all_gather_with_grad(x)
        assert gathered[:, 0].tolist() == [0.0, 0.0, 1.0, 1.0]
        (gathered * weights).sum().backward()
        # every rank's loss uses this rank's slice: the gradients are summed over the ranks
        assert torch.allclose(x.grad, world * weights[rows])
    finally:
        dist.destroy_process_group()


def test_gathers_across_two_ranks(tmp_path):
    """Rank 0 runs in this process, rank 1 in a spawned one (one interpreter start instead of two)."""
    init_file = str(tmp_path / "init")
    other = mp.get_context("spawn").Process(target=_two_rank_worker, args=(1, 2, init_file))
    other.start()
    try:
        _two_rank_worker(0, 2, init_file)
    finally:
        other.join(timeout=120)
    assert other.exitcode == 0
