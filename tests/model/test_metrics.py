"""Metrics against values worked out by hand (metrics-reference.md §2, stgt-reference.md §4.2-4.3).

Ranks in comments are 0-based; MdR/MnR are 1-based. ALBEF tie examples use rows of at most 3 candidates: only
there is np.argsort's tie order predictable across machines (metrics-reference §2.2); longer tied rows are checked
against a transcription of the reference code instead.
"""

import numpy as np
import pytest
import torch

from stgt_model.metrics import (
    RERANK_FILL_VALUE,
    dual_softmax,
    majority_answer,
    qa_metrics,
    rerank_fill,
    rerank_topk,
    retrieval_metrics,
    temporal_order_probe,
)

# The reference 3x3 example (test vector A): row 0 ties its ground truth (column 0) with column 1.
TIED_3X3 = np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)

# MSVD-style: 3 videos with 2, 3 and 1 captions; rows are texts, columns videos. No ties inside any t2v row.
MULTI_T2V = np.array(
    [[0.9, 0.1, 0.2],  # t0 -> v0
     [0.3, 0.8, 0.1],  # t1 -> v0
     [0.2, 0.7, 0.4],  # t2 -> v1
     [0.6, 0.5, 0.7],  # t3 -> v1
     [0.1, 0.6, 0.5],  # t4 -> v1
     [0.3, 0.4, 0.35]],  # t5 -> v2
    dtype=np.float32)
MULTI_TEXT_TO_VIDEO = [0, 0, 1, 1, 1, 2]


# ---------------------------------------------------------------------------------------------------------------
# single caption per video, ties


def test_reference_3x3_clip4clip_counts_every_tied_position():
    t2v = retrieval_metrics(TIED_3X3, [0, 1, 2], compat="clip4clip")["t2v"]
    # row 0 sorted [1, 1, 0]: GT value 1 sits at positions 0 and 1 -> ind = [0, 1, 0, 0] (rows 1, 2 at 0)
    # R@1 = 3 of 4 entries = 75.0; MnR = mean(0, 1, 0, 0) + 1 = 1.25; MdR = median(0, 0, 0, 1) + 1 = 1
    assert t2v["R@1"] == 75.0 and t2v["R@5"] == 100.0
    assert t2v["MnR"] == pytest.approx(1.25) and t2v["MdR"] == 1.0
    # per-query rank: the mean of the row's positions, (0 + 1) / 2
    np.testing.assert_allclose(t2v["ranks"], [0.5, 0.0, 0.0])
    assert t2v["num_queries"] == 3


def test_reference_3x3_albef_puts_the_later_tied_column_first():
    result = retrieval_metrics(TIED_3X3, [0, 1, 2], compat="albef")
    # row 0 [1, 1, 0]: argsort -> [2, 0, 1], reversed [1, 0, 2]: GT 0 at position 1 -> ranks [1, 0, 0]
    # R@1 = 2/3 = 66.67; STGT's MdR = median(1, 0, 0) + 1 = 1; no MnR
    t2v = result["t2v"]
    np.testing.assert_array_equal(t2v["ranks"], [1, 0, 0])
    assert t2v["R@1"] == pytest.approx(200 / 3) and t2v["MdR"] == 1.0 and t2v["MnR"] is None
    # v2t = columns as rows; video 1's row is [1, 1, 0] with its GT text 1 tied with the EARLIER text 0:
    # reversed order [1, 0, 2] puts the GT first -> rank 0. txt_r* maps to v2t and has no MdR either.
    v2t = result["v2t"]
    np.testing.assert_array_equal(v2t["ranks"], [0, 0, 0])
    assert v2t["R@1"] == 100.0 and v2t["MdR"] is None and v2t["MnR"] is None


def test_reference_3x3_tie_aware_counts_the_tie_as_an_expected_half_hit():
    result = retrieval_metrics(TIED_3X3, [0, 1, 2])
    t2v = result["t2v"]
    # row 0: b = 0 strictly better, m = 1 tied other -> rank b + m/2 = 0.5; R@1 hit clamp((1 - 0) / 2, 0, 1) = 0.5:
    # a random tie-break puts the ground truth first half of the time. Rows 1, 2: b = m = 0 -> hit 1.
    # Test vector A (metrics-reference §2.6 revised): R@1 = (0.5 + 1 + 1) / 3 = 83.33; R@5 = 100
    # MdR = np.median(0.5, 0, 0) + 1 = 1; MnR = (0.5 + 0 + 0) / 3 + 1 = 7/6
    np.testing.assert_allclose(t2v["ranks"], [0.5, 0.0, 0.0])
    assert t2v["R@1"] == pytest.approx(250 / 3) and t2v["R@5"] == 100.0
    assert t2v["MdR"] == 1.0 and t2v["MnR"] == pytest.approx(7 / 6)
    # v2t reads the columns: column 1 is [1, 1, 0] with its ground truth (text 1) tied with text 0 -> the same
    np.testing.assert_allclose(result["v2t"]["ranks"], [0.0, 0.5, 0.0])
    assert result["v2t"]["R@1"] == pytest.approx(250 / 3)


def test_tie_aware_hit_is_the_share_of_tied_positions_inside_k():
    # Text 0's ground truth (video 0, 0.5) has b = 1 better (video 1, 0.9) and m = 3 tied (videos 2, 3, 4): it sits
    # at position 1, 2, 3 or 4 with probability 1/4 each. Hit at k = clamp((k - 1) / 4, 0, 1):
    # k = 1: 0, k = 2: 1/4, k = 3: 2/4, k = 4: 3/4, k = 5: 1. Texts 1-5 are alone at the top of their rows (hit 1).
    sim = np.eye(6)
    sim[0] = [0.5, 0.9, 0.5, 0.5, 0.5, 0.1]
    t2v = retrieval_metrics(sim, range(6), ks=(1, 2, 3, 4, 5))["t2v"]
    for k, hit in {1: 0.0, 2: 0.25, 3: 0.5, 4: 0.75, 5: 1.0}.items():
        assert t2v[f"R@{k}"] == pytest.approx(100 * (hit + 5) / 6), k
    # rank 1 + 3/2 = 2.5 -> MnR = 2.5 / 6 + 1; MdR = median(2.5, 0, 0, 0, 0, 0) + 1 = 1
    assert t2v["ranks"][0] == 2.5 and t2v["MnR"] == pytest.approx(2.5 / 6 + 1) and t2v["MdR"] == 1.0


@pytest.mark.parametrize("n", [2, 3, 5])
def test_all_equal_matrix(n):
    sim = np.ones((n, n), dtype=np.float32)
    clip4clip = retrieval_metrics(sim, range(n), compat="clip4clip")["t2v"]
    # every row puts all n positions 0..n-1 into ind: R@1 = n / n^2 = 100 / n, MnR = mean(0..n-1) + 1 = (n + 1) / 2
    assert clip4clip["R@1"] == pytest.approx(100 / n) and clip4clip["MnR"] == pytest.approx((n + 1) / 2)
    tie_aware = retrieval_metrics(sim, range(n))["t2v"]
    # n - 1 tied others -> rank (n - 1) / 2 for every query, and R@1 hit 1 / n each: R@1 = 100 / n, as CLIP4Clip
    np.testing.assert_allclose(tie_aware["ranks"], np.full(n, (n - 1) / 2))
    assert tie_aware["R@1"] == pytest.approx(100 / n) and tie_aware["R@5"] == 100.0


def test_albef_all_equal_3x3_is_pessimistic_except_the_last_column():
    # argsort of [c, c, c] -> [0, 1, 2], reversed [2, 1, 0]: GT column i lands at position 2 - i
    t2v = retrieval_metrics(np.ones((3, 3), dtype=np.float32), [0, 1, 2], compat="albef")["t2v"]
    np.testing.assert_array_equal(t2v["ranks"], [2, 1, 0])
    assert t2v["R@1"] == pytest.approx(100 / 3)


def test_single_caption_text_order_is_free():
    # Texts listed in the order of videos [2, 0, 1]: text j is row text_to_video[j] of TIED_3X3.
    text_to_video = [2, 0, 1]
    sim = TIED_3X3[text_to_video]
    for compat in ("tie_aware", "clip4clip"):
        result = retrieval_metrics(sim, text_to_video, compat=compat)["t2v"]
        reference = retrieval_metrics(TIED_3X3, [0, 1, 2], compat=compat)["t2v"]
        assert result["R@1"] == reference["R@1"] and result["MnR"] == reference["MnR"]
        np.testing.assert_allclose(result["ranks"], reference["ranks"][[2, 0, 1]])  # still in the caller's order


# ---------------------------------------------------------------------------------------------------------------
# several captions per video (MSVD-style)


@pytest.mark.parametrize("compat", ["tie_aware", "clip4clip", "albef"])
def test_multi_caption_t2v(compat):
    t2v = retrieval_metrics(MULTI_T2V, MULTI_TEXT_TO_VIDEO, compat=compat)["t2v"]
    # t0 0.9 best -> 0; t1 0.3 < 0.8 -> 1; t2 0.7 best -> 0; t3 0.5 < 0.6, 0.7 -> 2; t4 0.6 best -> 0;
    # t5 0.35 < 0.4 -> 1. R@1 = 3/6 = 50, R@5 = 100.
    np.testing.assert_array_equal(t2v["ranks"], [0, 1, 0, 2, 0, 1])
    assert t2v["R@1"] == 50.0 and t2v["R@5"] == 100.0 and t2v["num_queries"] == 6
    # sorted ranks + 1 = [1, 1, 1, 2, 2, 3]: np.median = (1 + 2) / 2 = 1.5; torch.median takes the lower middle, 1
    assert float(torch.median(torch.tensor([1, 1, 1, 2, 2, 3]))) == 1.0
    assert t2v["MdR"] == {"tie_aware": 1.5, "clip4clip": 1.0, "albef": 1.5}[compat]
    # MnR = (0 + 1 + 0 + 2 + 0 + 1) / 6 + 1 = 5/3
    assert t2v["MnR"] == (None if compat == "albef" else pytest.approx(5 / 3))


@pytest.mark.parametrize("compat, ranks, mean_rank", [
    # v0 row (texts) [0.9, 0.3, 0.2, 0.6, 0.1, 0.3]: its t0 is the best -> 0 (t1 ties t5, but t0 wins anyway)
    # v1 row [0.1, 0.8, 0.7, 0.5, 0.6, 0.4]: best own caption t2 = 0.7, beaten by t1 = 0.8 (v0) -> 1
    # v2 row [0.2, 0.1, 0.4, 0.7, 0.5, 0.35]: t5 = 0.35 beaten by t2, t3, t4 -> 3 (every caption counts)
    ("tie_aware", [0, 1, 3], 4 / 3 + 1),
    ("albef", [0, 1, 3], None),
    # CLIP4Clip: max over each video's captions first. v2 row -> groups [max(.2, .1), max(.4, .7, .5), .35]
    # = [0.2, 0.7, 0.35]: only group v1 beats it -> 1. MnR = (0 + 1 + 1) / 3 + 1
    ("clip4clip", [0, 1, 1], 2 / 3 + 1),
])
def test_multi_caption_v2t(compat, ranks, mean_rank):
    v2t = retrieval_metrics(MULTI_T2V, MULTI_TEXT_TO_VIDEO, compat=compat)["v2t"]
    np.testing.assert_array_equal(v2t["ranks"], ranks)
    assert v2t["R@1"] == pytest.approx(100 / 3) and v2t["R@5"] == 100.0 and v2t["num_queries"] == 3
    assert v2t["MnR"] == (None if mean_rank is None else pytest.approx(mean_rank))
    # MdR: median(0, 1, 3) + 1 = median(0, 1, 1) + 1 = 2; ALBEF reports none for v2t
    assert v2t["MdR"] == (None if compat == "albef" else 2.0)


def test_clip4clip_v2t_takes_the_best_caption_per_video_albef_counts_every_caption():
    # v0 has caption t0; v1 has five captions t1..t5 that ALL beat t0 on v0's row.
    sim = np.array([[0.5, 0.0], [0.6, 0.1], [0.7, 0.2], [0.8, 0.3], [0.9, 0.4], [1.0, 0.95]], dtype=np.float32)
    text_to_video = [0, 1, 1, 1, 1, 1]
    # v0 row: ALBEF rank = 5 captions better = 5 -> misses R@5; CLIP4Clip: group v1's max 1.0 > 0.5 -> rank 1
    albef = retrieval_metrics(sim, text_to_video, compat="albef")
    clip4clip = retrieval_metrics(sim, text_to_video, compat="clip4clip")
    np.testing.assert_array_equal(albef["v2t"]["ranks"], [5, 0])
    np.testing.assert_array_equal(clip4clip["v2t"]["ranks"], [1, 0])
    assert albef["v2t"]["R@5"] == 50.0 and clip4clip["v2t"]["R@5"] == 100.0
    # t2v: t0 -> 0, t1..t5 -> 1 each (v0 scores higher): R@1 = 1/6. CLIP4Clip's multi-sentence path divides a
    # tensor, so its R@k is float32-rounded: 100/6 -> 16.666666030883789.
    assert albef["t2v"]["R@1"] == 100 / 6
    assert clip4clip["t2v"]["R@1"] == float(np.float32(100 / 6)) != 100 / 6


def test_tie_aware_v2t_own_captions_tied_at_the_top_do_not_push_each_other_down():
    # Video 0 has two captions tied at the top of its row (b = 0, no other candidate tied, g = 2): whichever order
    # the tie is broken in, one of its own captions comes first -> rank 0, R@1 hit 1. Video 1: text 2 alone on top.
    sim = np.array([[0.9, 0.1], [0.9, 0.2], [0.3, 0.8]])
    v2t = retrieval_metrics(sim, [0, 0, 1])["v2t"]
    np.testing.assert_allclose(v2t["ranks"], [0.0, 0.0])
    assert v2t["R@1"] == 100.0


def test_tie_aware_two_own_captions_tied_with_a_negative_share_the_expectation():
    # Video 0's row over texts [0.9 (own), 0.9 (own), 0.9 (video 1's), 0.1 (video 1's)]: a tie group of g = 2 ground
    # truths and m = 1 other at the top. In a random order of the three, an own caption is first with probability
    # 1 - C(1, 1) / C(3, 1) = 2/3 (R@1), certainly within two (R@2 = 1); the first own caption's expected position
    # is m / (g + 1) = 1/3.
    sim = np.array([[0.9, 0.0], [0.9, 0.0], [0.9, 1.0], [0.1, 0.8]])
    v2t = retrieval_metrics(sim, [0, 0, 1, 1], ks=(1, 2))["v2t"]
    np.testing.assert_allclose(v2t["ranks"], [1 / 3, 0.0])
    np.testing.assert_allclose((v2t["R@1"], v2t["R@2"]), ((2 / 3 + 1) / 2 * 100, 100.0))


def test_tie_aware_several_ground_truths_take_the_best_placed_one():
    # Video 0's row over texts [0.9, 0.5, 0.7, 0.7]: its captions t1 (0.5: b = 3) and t2 (0.7: b = 1, tied with
    # t3). The best is t2: rank 1 + 1/2 = 1.5, R@1 hit 0, R@2 hit clamp((2 - 1) / 2) = 0.5, R@3 hit 1.
    # Video 1's row [1.0, 0.1, 0.2, 0.3]: its caption t0 alone on top -> hit 1 at every k.
    sim = np.array([[0.9, 1.0], [0.5, 0.1], [0.7, 0.2], [0.7, 0.3]])
    v2t = retrieval_metrics(sim, [1, 0, 0, 1], ks=(1, 2, 3))["v2t"]
    np.testing.assert_allclose(v2t["ranks"], [1.5, 0.0])
    assert (v2t["R@1"], v2t["R@2"], v2t["R@3"]) == (50.0, 75.0, 100.0)


@pytest.mark.parametrize("compat", ["tie_aware", "clip4clip", "albef"])
def test_multi_caption_text_order_is_free(compat):
    order = np.array([4, 0, 5, 2, 1, 3])
    shuffled = retrieval_metrics(MULTI_T2V[order], np.array(MULTI_TEXT_TO_VIDEO)[order], compat=compat)
    reference = retrieval_metrics(MULTI_T2V, MULTI_TEXT_TO_VIDEO, compat=compat)
    for direction in ("t2v", "v2t"):
        for key in ("R@1", "R@5", "R@10", "MdR", "MnR"):
            assert shuffled[direction][key] == reference[direction][key]
    np.testing.assert_array_equal(shuffled["t2v"]["ranks"], reference["t2v"]["ranks"][order])
    np.testing.assert_array_equal(shuffled["v2t"]["ranks"], reference["v2t"]["ranks"])


def test_separate_v2t_matrix_drives_v2t_only():
    # video 0 prefers text 1 (1.0 > 0.5), video 1 text 0: ranks [1, 1, 0]
    sim_v2t = np.array([[0.5, 1.0, 0.0], [1.0, 0.5, 0.0], [0.0, 0.0, 1.0]])
    result = retrieval_metrics(np.eye(3), [0, 1, 2], sim_v2t=sim_v2t)
    assert result["t2v"]["R@1"] == 100.0
    np.testing.assert_array_equal(result["v2t"]["ranks"], [1, 1, 0])
    with pytest.raises(ValueError, match="sim_v2t"):
        retrieval_metrics(np.eye(3), [0, 1, 2], sim_v2t=np.eye(2))


def test_invalid_inputs_are_refused():
    with pytest.raises(ValueError, match="compat"):
        retrieval_metrics(np.eye(2), [0, 1], compat="frozen")
    with pytest.raises(ValueError, match="without any caption"):
        retrieval_metrics(np.eye(3)[:2], [0, 1])
    with pytest.raises(ValueError, match="one text_to_video entry"):
        retrieval_metrics(np.eye(3), [0, 1])


# ---------------------------------------------------------------------------------------------------------------
# heavily tied random matrices against a transcription of the reference code (CLIP4Clip metrics.py and
# main_task_retrieval.py's reshape; ALBEF itm_eval): exact on whatever tie order this machine's sorts produce


def clip4clip_compute_metrics(x):
    sx = np.sort(-x, axis=1)
    ind = np.where(sx - np.diag(-x)[:, np.newaxis] == 0)[1]
    return {"R1": float(np.sum(ind == 0)) * 100 / len(ind), "R5": float(np.sum(ind < 5)) * 100 / len(ind),
            "MR": np.median(ind) + 1, "MeanR": np.mean(ind) + 1}


def clip4clip_multi_sentence(sim_matrix, cut_off_points):
    bounds = [i + 1 for i in cut_off_points]
    max_length = max(e - s for s, e in zip([0] + bounds[:-1], bounds))
    sim = np.stack([np.concatenate((sim_matrix[s:e], np.full((max_length - e + s, sim_matrix.shape[1]), -np.inf)))
                    for s, e in zip([0] + bounds[:-1], bounds)])
    sim_tensor = torch.tensor(sim)
    second = torch.argsort(torch.argsort(sim_tensor.permute(1, 0, 2), dim=-1, descending=True), dim=-1)
    ranks = torch.flatten(torch.diagonal(second, dim1=1, dim2=2))
    own = torch.flatten(torch.diagonal(sim_tensor, dim1=0, dim2=2))
    valid = ranks[~torch.logical_or(torch.isinf(own), torch.isnan(own))]
    t2v = {"R1": float(torch.sum(valid < 1) * 100 / len(valid)), "R5": float(torch.sum(valid < 5) * 100 / len(valid)),
           "MR": float(torch.median(valid + 1)), "MeanR": float(np.mean(valid.numpy() + 1))}
    sim_tensor[sim_tensor != sim_tensor] = float("-inf")
    values, _ = torch.max(sim_tensor, dim=1, keepdim=True)
    return t2v, clip4clip_compute_metrics(torch.squeeze(values).T.numpy())


def albef_itm_eval(scores_i2t, scores_t2i, txt2img, img2txt):
    def ranks_of(scores, truths):
        ranks = np.zeros(scores.shape[0])
        for index, score in enumerate(scores):
            inds = np.argsort(score)[::-1]
            ranks[index] = min(np.where(inds == i)[0][0] for i in truths[index])
        return ranks
    tr, ir = ranks_of(scores_i2t, img2txt), ranks_of(scores_t2i, [[v] for v in txt2img])
    def recall(ranks, k):
        return 100.0 * len(np.where(ranks < k)[0]) / len(ranks)
    return {"txt_r1": recall(tr, 1), "txt_r5": recall(tr, 5), "img_r1": recall(ir, 1), "img_r5": recall(ir, 5),
            "MedianR": np.median(ir) + 1}


def tied_multi_caption_matrix(seed, num_videos=12):
    rng = np.random.default_rng(seed)
    captions = rng.integers(1, 5, num_videos)
    text_to_video = np.repeat(np.arange(num_videos), captions)  # contiguous, as CLIP4Clip's cut_off_points assume
    sim = rng.integers(0, 4, (len(text_to_video), num_videos)).astype(np.float32)
    return sim, text_to_video, list(np.cumsum(captions) - 1)


@pytest.mark.parametrize("seed", range(5))
def test_clip4clip_matches_the_reference_code_on_tied_matrices(seed):
    sim, text_to_video, cut_off_points = tied_multi_caption_matrix(seed)
    ours = retrieval_metrics(sim, text_to_video, compat="clip4clip")
    ref_t2v, ref_v2t = clip4clip_multi_sentence(sim, cut_off_points)
    for ours_dir, ref in ((ours["t2v"], ref_t2v), (ours["v2t"], ref_v2t)):
        assert (ours_dir["R@1"], ours_dir["R@5"], ours_dir["MdR"]) == (ref["R1"], ref["R5"], ref["MR"])
        assert ours_dir["MnR"] == pytest.approx(ref["MeanR"], rel=1e-12)
    square = sim[[0] + [i + 1 for i in cut_off_points[:-1]]]  # first caption of each video -> the square path
    ours_square = retrieval_metrics(square, range(len(square)), compat="clip4clip")
    for ours_dir, ref in ((ours_square["t2v"], clip4clip_compute_metrics(square)),
                          (ours_square["v2t"], clip4clip_compute_metrics(square.T))):
        assert (ours_dir["R@1"], ours_dir["R@5"], ours_dir["MdR"], ours_dir["MnR"]) == (
            ref["R1"], ref["R5"], ref["MR"], ref["MeanR"])


@pytest.mark.parametrize("seed", range(5))
def test_albef_matches_itm_eval_on_tied_matrices(seed):
    sim, text_to_video, _ = tied_multi_caption_matrix(seed)
    img2txt = [np.flatnonzero(text_to_video == v).tolist() for v in range(sim.shape[1])]
    ref = albef_itm_eval(sim.T, sim, text_to_video, img2txt)
    ours = retrieval_metrics(sim, text_to_video, compat="albef")
    assert (ours["v2t"]["R@1"], ours["v2t"]["R@5"]) == (ref["txt_r1"], ref["txt_r5"])  # txt_r* is video -> text
    t2v = ours["t2v"]
    assert (t2v["R@1"], t2v["R@5"], t2v["MdR"]) == (ref["img_r1"], ref["img_r5"], ref["MedianR"])  # img_r*: t2v


# ---------------------------------------------------------------------------------------------------------------
# dual softmax and re-ranking


def test_dual_softmax_2x2_by_hand():
    # t0 -> v0, t1 -> v1, but v0 is a hub: t1 scores it higher (2.5 > 2.0), so plain t2v R@1 = 50.
    sim = np.array([[3.0, 2.0], [2.5, 2.0]])
    # column v0: softmax over texts of [3, 2.5] = [1 / (1 + e^-0.5), e^-0.5 / (1 + e^-0.5)] = [0.622459, 0.377541]
    # column v1: softmax([2, 2]) = [0.5, 0.5]
    # S_dsl = [[3 * 0.622459, 2 * 0.5], [2.5 * 0.377541, 2 * 0.5]] = [[1.867377, 1.0], [0.943852, 1.0]]
    dsl = dual_softmax(sim)
    np.testing.assert_allclose(dsl, [[1.867377, 1.0], [0.943852, 1.0]], atol=1e-6)
    assert retrieval_metrics(sim, [0, 1])["t2v"]["R@1"] == 50.0
    assert retrieval_metrics(dsl, [0, 1])["t2v"]["R@1"] == 100.0  # t1: 0.944 < 1.0 -> v1
    # temperature 0.5: column v0 softmax([6, 5]) = [0.7310586, 0.2689414] -> 3 * 0.7310586, 2.5 * 0.2689414
    np.testing.assert_allclose(dual_softmax(sim, temperature=0.5), [[2.193176, 1.0], [0.672354, 1.0]], atol=1e-6)


def test_rerank_topk_scores_p_plus_s_inside_the_top_k_and_fills_the_rest():
    coarse = np.array([[0.1, 0.9, 0.5, 0.3], [0.4, 0.2, 0.8, 0.6]], dtype=np.float32)
    p_match = {(0, 1): 0.2, (0, 2): 0.7, (1, 2): 0.1, (1, 3): 0.9}
    calls = []

    def itm(queries, candidates):
        calls.append((queries.tolist(), candidates.tolist()))
        return np.array([p_match[q, c] for q, c in zip(queries, candidates)])

    scores = rerank_topk(coarse, itm, k=2)
    # row 0 top-2 by s: columns 1 (0.9), 2 (0.5) -> 0.2 + 0.9 = 1.1, 0.7 + 0.5 = 1.2; ITM reorders them
    # row 1 top-2: columns 2 (0.8), 3 (0.6) -> 0.1 + 0.8 = 0.9, 0.9 + 0.6 = 1.5; everything else -100
    np.testing.assert_allclose(scores, [[-100, 1.1, 1.2, -100], [-100, -100, 0.9, 1.5]], rtol=1e-6)
    assert calls == [([0, 0, 1, 1], [1, 2, 2, 3])]  # every pair in one batch
    assert scores.dtype == np.float32  # the official matrix is float32
    assert (rerank_topk(coarse, itm, k=2, fill=-1.0) == -1.0).sum() == 4
    calls.clear()
    np.testing.assert_array_equal(rerank_topk(coarse, itm, k=2, pairs_per_call=3), scores)
    assert calls == [([0, 0], [1, 2]), ([1, 1], [2, 3])]  # whole queries per call, at most 3 pairs


# The 4x4 example for ranks beyond k: texts are rows, text i's ground truth is video i; k = 2.
BEYOND_K_COARSE = np.array(
    [[0.05, 0.9, 0.5, 0.1],  # GT 0.05 is last by similarity, outside the top 2 (videos 1, 2)
     [0.3, 0.8, 0.2, 0.1],  # top 2: videos 1 (GT), 0
     [0.1, 0.2, 0.7, 0.6],  # top 2: videos 2 (GT), 3
     [0.4, 0.3, 0.6, 0.5]],  # top 2: videos 2, 3 (GT)
    dtype=np.float32)
BEYOND_K_MATCH = {(0, 1): 0.5, (0, 2): 0.5, (1, 1): 0.2, (1, 0): 0.9, (2, 2): 0.5, (2, 3): 0.5, (3, 2): 0.1,
                  (3, 3): 0.9}


def beyond_k_itm(queries, candidates):
    return np.array([BEYOND_K_MATCH[q, c] for q, c in zip(queries, candidates)])


def test_tie_aware_keeps_the_coarse_order_beyond_the_re_ranked_top_k():
    scores = rerank_topk(BEYOND_K_COARSE, beyond_k_itm, k=2, fill=rerank_fill("tie_aware"))
    # re-ranked cells p + s; the others keep s, below every re-ranked one
    np.testing.assert_allclose(scores, [[0.05, 1.4, 1.0, 0.1], [1.2, 1.0, 0.2, 0.1], [0.1, 0.2, 1.2, 1.1],
                                        [0.4, 0.3, 0.7, 1.4]], rtol=1e-6)
    t2v = retrieval_metrics(scores, range(4), ks=(1, 2, 3))["t2v"]
    # t0: 2 re-ranked + video 3 (0.1 > 0.05) before it -> 3, its coarse rank. t1: the head demotes it below video 0
    # (1.2 > 1.0) -> 1. t2: 1.2 > 1.1 -> 0. t3: the head promotes it over video 2 (1.4 > 0.7) -> 0.
    np.testing.assert_array_equal(t2v["ranks"], [3, 1, 0, 0])
    # R@1 = 2/4, R@2 = 3/4, R@3 = 3/4 (t0 only at k = 4); MdR = median(0, 0, 1, 3) + 1 = 1.5; MnR = 4/4 + 1 = 2
    assert (t2v["R@1"], t2v["R@2"], t2v["R@3"]) == (50.0, 75.0, 75.0)
    assert (t2v["MdR"], t2v["MnR"]) == (1.5, 2.0)
    # With the reference -100 fill, t0 ties with video 3 below the top 2: rank 2 + 1/2 and an R@3 hit of 1/2
    filled = retrieval_metrics(rerank_topk(BEYOND_K_COARSE, beyond_k_itm, k=2), range(4), ks=(3,))["t2v"]
    assert filled["ranks"][0] == 2.5 and filled["R@3"] == pytest.approx(100 * 3.5 / 4)


@pytest.mark.parametrize("seed", range(5))
def test_tie_aware_ranks_beyond_k_are_the_coarse_ranks(seed):
    # Random continuous scores (no ties): a ground truth outside its query's top k has exactly as many candidates
    # before it as the coarse similarity gives it; one inside stays inside, wherever the head puts it.
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(-1, 1, (30, 30)).astype(np.float32)
    p_match = rng.uniform(0, 1, (30, 30)).astype(np.float32)
    k = 3
    scores = rerank_topk(coarse, lambda q, c: p_match[q, c], k=k, fill=rerank_fill("tie_aware"))
    result = retrieval_metrics(scores, range(30), ks=(1, 5, 10, 20))["t2v"]
    coarse_rank = (coarse > np.diag(coarse)[:, None]).sum(axis=1)
    outside = coarse_rank >= k
    assert outside.sum() > 10  # the case under test is there
    np.testing.assert_array_equal(result["ranks"][outside], coarse_rank[outside])
    assert (result["ranks"][~outside] < k).all()
    for cut in (5, 10, 20):  # beyond k the recall is the coarse recall
        assert result[f"R@{cut}"] == pytest.approx(100 * np.mean(coarse_rank < cut))


def test_rerank_fill_per_convention_and_its_guard():
    assert rerank_fill("tie_aware") is None
    assert rerank_fill("clip4clip") == rerank_fill("albef") == RERANK_FILL_VALUE == -100.0
    with pytest.raises(ValueError, match="compat"):
        rerank_fill("frozen")
    # keeping the coarse scores below the re-ranked ones needs p >= 0; a logit could push a re-ranked one under
    with pytest.raises(ValueError, match=">= 0"):
        rerank_topk(BEYOND_K_COARSE, lambda q, c: np.full(len(c), -2.0), k=2, fill=None)


def test_compat_modes_report_the_asked_cut_offs():
    # albef on TIED_3X3: ranks [1, 0, 0] (see above) -> R@1 = 2/3, R@2 = 100
    albef = retrieval_metrics(TIED_3X3, [0, 1, 2], compat="albef", ks=(1, 2))["t2v"]
    assert albef["R@1"] == pytest.approx(200 / 3) and albef["R@2"] == 100.0 and "R@5" not in albef
    # clip4clip: ind = [0, 1, 0, 0] -> R@2 = 4/4
    assert retrieval_metrics(TIED_3X3, [0, 1, 2], compat="clip4clip", ks=(2,))["t2v"]["R@2"] == 100.0
    with pytest.raises(ValueError, match="ks"):
        retrieval_metrics(TIED_3X3, [0, 1, 2], ks=(0,))


def test_rerank_topk_caps_k_at_the_number_of_candidates():
    scores = rerank_topk(torch.tensor([[0.3, 0.1]]), lambda q, c: torch.full((len(c),), 0.5), k=32)
    np.testing.assert_allclose(scores, [[0.8, 0.6]])


# ---------------------------------------------------------------------------------------------------------------
# QA


def test_qa_accuracy_counts_out_of_vocabulary_answers_wrong():
    vocab = ["yes", "no", "red"]
    answers = ["yes", "blue", "red", "no", "blue"]  # "blue" is out of vocabulary
    predictions = ["yes", "blue", "no", "no", "red"]  # q1 matches the string, but its answer is OOV -> wrong
    types = ["yn", "what", "what", "yn", "what"]
    result = qa_metrics(predictions, answers, types, vocab, train_answers=["no", "no", "yes", "red", "no"])
    # correct: q0, q3 -> 2/5 = 40 (OOV questions stay in the denominator); yn 2/2 = 100, what 0/3 = 0
    assert result["accuracy"] == 40.0 and result["num_questions"] == 5
    assert result["num_oov"] == 2 and result["oov_share"] == 40.0
    assert result["per_type"]["yn"] == {"accuracy": 100.0, "majority_accuracy": 50.0, "count": 2, "share": 40.0}
    assert result["per_type"]["what"] == {"accuracy": 0.0, "majority_accuracy": 0.0, "count": 3, "share": 60.0}
    # majority answer "no" (3 of 5 training answers) is right only on q3 -> 1/5 = 20
    assert result["majority_answer"] == "no" and result["majority_accuracy"] == 20.0


def test_qa_unknown_predictions_and_majority_ties():
    # a classifier's unknown index decodes to None: never right
    result = qa_metrics([None], ["yes"], ["yn"], vocab={"yes"}, train_answers=["yes"])
    assert result["accuracy"] == 0.0 and result["majority_accuracy"] == 100.0
    assert majority_answer(["b", "a", "b", "a"]) == "a"  # tie broken alphabetically, as AnswerVocab.build
    with pytest.raises(ValueError):
        qa_metrics(["yes"], ["yes", "no"], ["yn"], vocab={"yes"}, train_answers=["yes"])


# ---------------------------------------------------------------------------------------------------------------
# temporal-order probe


def test_temporal_order_probe_by_hand():
    pairs = np.array([
        [[0.9, 0.2], [0.3, 0.8]],  # clip caption 0.9 > 0.3, twin caption 0.8 > 0.2 -> pass
        [[0.5, 0.5], [0.5, 0.5]],  # order-blind: both directions tie -> fail, fail
        [[0.9, 0.7], [0.4, 0.6]],  # clip caption 0.9 > 0.4; twin caption 0.6 < 0.7 -> forward only
        [[0.4, 0.1], [0.4, 0.3]],  # clip caption ties 0.4 = 0.4 -> fail; twin caption 0.3 > 0.1 -> reversed only
    ])
    result = temporal_order_probe(pairs)
    # both: pair 0 only -> 25; forward: pairs 0, 2 -> 50; reversed: pairs 0, 3 -> 50
    assert (result["pair_accuracy"], result["forward_accuracy"], result["reversed_accuracy"]) == (25.0, 50.0, 50.0)
    np.testing.assert_array_equal(result["pair_correct"], [True, False, False, False])
    assert result["num_pairs"] == 4


def test_temporal_order_probe_fails_an_order_blind_model():
    assert temporal_order_probe(np.full((6, 2, 2), 0.3))["pair_accuracy"] == 0.0
    with pytest.raises(ValueError):
        temporal_order_probe(np.zeros((3, 2)))
