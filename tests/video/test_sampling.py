"""sample_indices, with every expected list worked out by hand from the definitions in sampling.py."""
import numpy as np
import pytest

from stgt_model.video.sampling import BASE_MODES, MODES, mirror_indices, mirrored, sample_indices


def rng(seed=0):
    return np.random.default_rng(seed)


def test_uniform_takes_first_frame_of_each_segment():
    # 16 frames in 8 segments of 2: [0,1] [2,3] ... -> first of each
    assert sample_indices(16, 8, "uniform") == [0, 2, 4, 6, 8, 10, 12, 14]
    # 10 frames in 4 segments: floor(i*10/4) = 0, 2.5->2, 5, 7.5->7
    assert sample_indices(10, 4, "uniform") == [0, 2, 5, 7]


def test_middle_takes_middle_frame_of_each_segment():
    # 16 frames, segments of 2: middles floor(1 + 2i)
    assert sample_indices(16, 8, "middle") == [1, 3, 5, 7, 9, 11, 13, 15]
    # 10 frames, 4 segments: floor((2i+1)*10/8) = 1.25->1, 3.75->3, 6.25->6, 8.75->8
    assert sample_indices(10, 4, "middle") == [1, 3, 6, 8]


@pytest.mark.parametrize("mode", ["uniform", "middle", "headtail", "random"])
def test_short_video_is_padded_with_its_last_index(mode):
    # 3 frames for T=8: every frame once, then the last repeated (the reference caps T at the clip length)
    assert sample_indices(3, 8, mode, rng()) == [0, 1, 2, 2, 2, 2, 2, 2]


def test_single_frame_video_repeats_it():
    assert sample_indices(1, 4, "headtail", rng()) == [0, 0, 0, 0]


@pytest.mark.parametrize("seed", range(20))
def test_headtail_takes_half_from_each_half(seed):
    out = sample_indices(20, 8, "headtail", rng(seed))
    head, tail = out[:4], out[4:]
    assert all(0 <= i < 10 for i in head) and all(10 <= i < 20 for i in tail)
    assert head == sorted(set(head)) and tail == sorted(set(tail))  # sorted, no repeats


def test_headtail_odd_t_puts_the_extra_frame_in_the_second_half():
    out = sample_indices(21, 5, "headtail", rng(3))
    # T//2 = 2 from the first half [0, 10), T - T//2 = 3 from the second half [10, 21)
    assert sum(i < 10 for i in out) == 2 and sum(i >= 10 for i in out) == 3


def test_headtail_with_exactly_t_frames_takes_them_all():
    assert sample_indices(8, 8, "headtail", rng(5)) == list(range(8))


@pytest.mark.parametrize("seed", range(10))
def test_random_takes_one_frame_per_segment(seed):
    out = sample_indices(16, 4, "random", rng(seed))
    # segments [0,4) [4,8) [8,12) [12,16)
    assert [i // 4 for i in out] == [0, 1, 2, 3]


@pytest.mark.parametrize("mode", ["headtail", "random"])
def test_random_modes_are_reproducible_with_a_seeded_generator(mode):
    assert sample_indices(300, 8, mode, rng(42)) == sample_indices(300, 8, mode, rng(42))
    draws = {tuple(sample_indices(300, 8, mode, rng(s))) for s in range(5)}
    assert len(draws) > 1  # the generator is actually used


@pytest.mark.parametrize("mode", ["uniform", "middle"])
def test_eval_modes_ignore_the_generator(mode):
    assert sample_indices(37, 8, mode, rng(1)) == sample_indices(37, 8, mode, rng(2)) == sample_indices(37, 8, mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("available", [1, 2, 7, 8, 9, 100, 1001])
def test_always_t_sorted_indices_in_range(mode, available):
    out = sample_indices(available, 8, mode, rng(available))
    assert len(out) == 8 and out == sorted(out) and 0 <= out[0] and out[-1] < available


@pytest.mark.parametrize("args, message", [
    ((0, 8, "uniform"), "0 frames"),
    ((10, 0, "uniform"), "at least 1"),
    ((10, 8, "sideways"), "unknown sampling mode"),
    ((10, 8, "headtail"), "needs a numpy Generator"),
    ((10, 8, "mirrored_random"), "needs a numpy Generator"),
    ((10, 8, "mirrored_mirrored_uniform"), "unknown sampling mode"),
])
def test_bad_arguments_are_refused(args, message):
    with pytest.raises(ValueError, match=message):
        sample_indices(*args)


# ---------------------------------------------------------------------------------------------------------------
# mirrored modes: a time-reversed twin sampled at its clip's moments


def test_mirrored_uniform_takes_the_last_frame_of_each_segment():
    # uniform on 16 frames is [0, 2, ..., 14]; mirrored: 15 - i in reverse order -> [1, 3, ..., 15]. (uniform on
    # the twin itself, [0, 2, ..., 14], would be clip moments 15, 13, ..., 1: not one the clip's sample shows.)
    assert sample_indices(16, 8, "mirrored_uniform") == [1, 3, 5, 7, 9, 11, 13, 15]
    # uniform on 10 frames, T=4 is [0, 2, 5, 7]; mirrored: [9 - 7, 9 - 5, 9 - 2, 9 - 0]
    assert sample_indices(10, 4, "mirrored_uniform") == [2, 4, 7, 9]
    # middle on 10 frames, T=4 is [1, 3, 6, 8]; mirrored: [1, 3, 6, 8] again (this one happens to be symmetric)
    assert sample_indices(10, 4, "mirrored_middle") == [1, 3, 6, 8]


def test_mirrored_short_clip_is_padded_at_the_front():
    # uniform on 3 frames for T=8 is [0, 1, 2, 2, 2, 2, 2, 2]: the mirror repeats the first index instead
    assert sample_indices(3, 8, "mirrored_uniform") == [0, 0, 0, 0, 0, 0, 1, 2]


@pytest.mark.parametrize("mode", BASE_MODES)
@pytest.mark.parametrize("available", [1, 3, 8, 10, 24, 37, 300])
def test_twin_sampled_mirrored_shows_the_clips_moments_in_reverse(mode, available):
    # Twin frame j is clip frame available - 1 - j. Sampled with the mirrored mode and the same seed, the twin's
    # frames are the clip's frames read backwards: exactly what a frame-order-blind model must not tell apart.
    clip = sample_indices(available, 8, mode, rng(7))
    twin = sample_indices(available, 8, mirrored(mode), rng(7))
    assert [available - 1 - j for j in twin] == clip[::-1]


def test_mirror_helpers():
    assert mirror_indices([0, 2, 5, 7], 10) == [2, 4, 7, 9]
    assert mirrored("headtail") == "mirrored_headtail"
    with pytest.raises(ValueError, match="base sampling mode"):
        mirrored("mirrored_uniform")
