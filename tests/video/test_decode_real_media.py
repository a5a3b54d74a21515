"""Every real clip in ../shared/real-media/videos is decoded to T frames in display orientation, or refused with a
reason. Expected sizes and decoders come from ../shared/real-media/SOURCES.md and the decoder facts measured
in mlops-reference.md Part B §2 (decord cannot read AV1, VP9 without duration, or H.264 in a .webm)."""
from pathlib import Path

import av
import numpy as np
import pytest

from stgt_model.video.decode import DecodeError, read_clip

VIDEOS = Path(__file__).resolve().parents[2].parent / "shared" / "real-media" / "videos"
if not VIDEOS.is_dir():
    pytest.skip(f"real media not found at {VIDEOS} (the shared folder beside the checkout)", allow_module_level=True)

T, SIZE = 8, 32
FILES = sorted(p.relative_to(VIDEOS).as_posix() for p in VIDEOS.rglob("*") if p.is_file())
CORRUPT = "edge_cases/decord_corrupted.mp4"
TWO_STREAMS = "edge_cases/torchcodec_nasa_13013_two_video_streams.mp4"
WHITE = "edge_cases/decord_unordered_pts.mov"  # decord's PTS-order test clip: four all-white frames
ROTATED = {f"edge_cases/decord_video_rot{d}.mov": d for d in (0, 90, 180, 270)}

# file -> (decoder, (width, height) after rotation, clockwise rotation)
EXPECTED = {
    "captioned/decord_flipping_a_pancake.mkv": ("decord", (426, 240), 0),
    "captioned/internvideo2_example1.mp4": ("decord", (640, 480), 0),
    "captioned/languagebind_0.mp4": ("decord", (406, 720), 0),
    "captioned/languagebind_1.mp4": ("decord", (404, 720), 0),
    "captioned/mmaction2_demo_arm_wrestling.mp4": ("decord", (340, 256), 0),
    "codecs/imageio_test_h264_in_matroska.webm": ("pyav", (640, 480), 0),
    "codecs/mdn_flower_vp8.webm": ("decord", (960, 540), 0),
    "codecs/mmaction2_test_xvid.avi": ("decord", (320, 240), 0),
    "codecs/moviepy_big_buck_bunny_432_433_vp8.webm": ("decord", (1280, 720), 0),
    "codecs/moviepy_no_duration_vp9.webm": ("pyav", (1280, 720), 0),
    "codecs/moviepy_transparent_vp9_alpha.webm": ("decord", (200, 200), 0),
    "codecs/torchcodec_av1_video.mkv": ("pyav", (640, 360), 0),
    "codecs/torchcodec_h264_10bits.mp4": ("decord", (200, 200), 0),
    "codecs/torchcodec_h265_video.mp4": ("decord", (128, 128), 0),
    "edge_cases/decord_unordered_pts.mov": ("decord", (50, 50), 0),
    "edge_cases/decord_video_rot0.mov": ("decord", (568, 320), 0),
    "edge_cases/decord_video_rot90.mov": ("decord", (320, 568), 90),
    "edge_cases/decord_video_rot180.mov": ("decord", (568, 320), 180),
    "edge_cases/decord_video_rot270.mov": ("decord", (320, 568), 270),
    "edge_cases/moviepy_fire2_rot180.mp4": ("decord", (1280, 720), 180),
    TWO_STREAMS: ("pyav", (480, 270), 0),  # more than one video stream: PyAV reads the chosen one by index
    **{f"msrvtt_test/video70{i}.mp4": ("decord", (320, 240), 0) for i in range(10, 20)},
}


@pytest.mark.parametrize("name", FILES)
def test_every_clip_is_extracted_or_quarantined_with_a_reason(name):
    path = VIDEOS / name
    if name == CORRUPT:
        # decord fails on frame 8 onwards, PyAV after 28 of the 50 frames the header promises: quarantined
        with pytest.raises(DecodeError) as err:
            read_clip(path, T, SIZE, "uniform")
        assert "decord:" in err.value.reason and "pyav:" in err.value.reason and "after 28 frames" in err.value.reason
        assert str(path) in str(err.value)
        return
    try:
        clip = read_clip(path, T, SIZE, "headtail", np.random.default_rng(0))
    except DecodeError as exc:  # a clip added to the shared folder later may be unreadable: it must say why
        assert name not in EXPECTED, f"{name} should decode: {exc.reason}"
        assert exc.reason.strip()
        return
    assert clip.frames.shape == (T, SIZE, SIZE, 3) and clip.frames.dtype == np.uint8
    assert len(clip.indices) == T and clip.indices == sorted(clip.indices)
    assert 0 <= clip.indices[0] and clip.indices[-1] < clip.frame_count
    if name == WHITE:
        assert (clip.frames == 255).all()
    else:
        assert clip.frames.std() > 1.0  # not a flat grey/black failed decode
    if name in EXPECTED:
        decoder, source_size, rotation = EXPECTED[name]
        assert (clip.decoder, clip.source_size, clip.rotation) == (decoder, source_size, rotation)


@pytest.mark.parametrize("name, frames", [
    ("codecs/moviepy_no_duration_vp9.webm", 74),  # no Duration: the count comes from demuxing
    ("codecs/imageio_test_h264_in_matroska.webm", 94),
    ("codecs/torchcodec_av1_video.mkv", 125),
    ("captioned/decord_flipping_a_pancake.mkv", 310),
])
def test_frame_count_comes_from_the_stream_not_the_header(name, frames):
    clip = read_clip(VIDEOS / name, T, SIZE, "uniform")
    assert clip.frame_count == frames
    assert clip.indices == [i * frames // T for i in range(T)]


def test_corrupt_clip_is_refused_by_pyav_alone_too():
    with pytest.raises(DecodeError, match="pyav: InvalidDataError"):
        read_clip(VIDEOS / CORRUPT, T, SIZE, "uniform", decoder="pyav")


@pytest.mark.parametrize("name", sorted(ROTATED) + ["edge_cases/moviepy_fire2_rot180.mp4"])
def test_pyav_turns_frames_like_decord(name):
    # The four decord .mov files are four different recordings (a keyboard filmed with the phone held four ways),
    # not one clip re-tagged, so rot0 turned by numpy cannot match the others pixel for pixel. decord applies
    # the display matrix inside FFmpeg; our PyAV path turns the frames with numpy: the two must agree exactly.
    by_decord = read_clip(VIDEOS / name, 3, None, "uniform", decoder="decord")
    by_pyav = read_clip(VIDEOS / name, 3, None, "uniform", decoder="pyav")
    assert by_decord.source_size == by_pyav.source_size
    assert by_decord.frames.shape == by_pyav.frames.shape == (3, by_pyav.source_size[1], by_pyav.source_size[0], 3)
    assert np.abs(by_decord.frames.astype(int) - by_pyav.frames).mean() < 1.0
    if ROTATED.get(name) in (90, 270):
        assert by_pyav.source_size == (320, 568)  # portrait: 320 wide, 568 high


def test_two_stream_file_reads_the_same_stream_with_either_decoder():
    by_decord = read_clip(VIDEOS / TWO_STREAMS, T, None, "uniform", decoder="decord")
    by_pyav = read_clip(VIDEOS / TWO_STREAMS, T, None, "uniform", decoder="pyav")
    assert by_decord.source_size == by_pyav.source_size == (480, 270)  # the larger picture, stream 3
    assert by_decord.stream_index == by_pyav.stream_index == 3
    assert by_decord.frame_count == by_pyav.frame_count == 390
    assert np.abs(by_decord.frames.astype(int) - by_pyav.frames).mean() < 2.0


def make_marked_clip(path: Path, ccw_degrees: int) -> np.ndarray:
    """A 64x32 clip with a red top-left corner and a blue right edge, tagged with a display rotation."""
    picture = np.full((32, 64, 3), 90, np.uint8)
    picture[:16, :16] = (255, 0, 0)
    picture[:, 48:] = (0, 0, 255)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        stream.set_display_rotation(ccw_degrees)  # FFmpeg's convention: counter-clockwise
        for _ in range(4):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        out.mux(stream.encode())
    return picture


@pytest.mark.parametrize("decoder", ["decord", "pyav"])
@pytest.mark.parametrize("ccw", [0, 90, 180, 270])
def test_display_rotation_matches_numpy_rotation_of_the_stored_picture(tmp_path, decoder, ccw):
    # Ground truth the real files cannot give: one picture, four display matrices.
    picture = make_marked_clip(tmp_path / f"rot{ccw}.mp4", ccw)
    clip = read_clip(tmp_path / f"rot{ccw}.mp4", 2, None, "uniform", decoder=decoder)
    expected = np.rot90(picture, k=ccw // 90)
    assert clip.rotation == (-ccw) % 360
    assert clip.frames.shape[1:] == expected.shape
    assert np.abs(clip.frames[0].astype(int) - expected).mean() < 8  # H.264 + 4:2:0 chroma blur the edges


@pytest.mark.parametrize("name, frames", [
    ("codecs/moviepy_no_duration_vp9.webm", 74),  # VP9 in WebM, no Duration element
    ("codecs/imageio_test_h264_in_matroska.webm", 94),  # H.264 in Matroska, no frame duration in the header
])
def test_probe_measures_the_duration_on_the_stream_when_the_container_records_none(name, frames):
    """#17 item 10: validate refused these valid videos (duration 0.0, below duration_s.min). The probe measures the
    duration on the stream's packets and records that it did (manifest column duration_from)."""
    from stgt_model.video.probe import probe

    info = probe(VIDEOS / name)
    assert info.duration_from == "packets"
    assert info.duration == pytest.approx(frames / info.fps, rel=0.1)
    assert info.num_frames == frames


def test_probe_says_where_a_header_duration_came_from():
    from stgt_model.video.probe import probe

    assert probe(VIDEOS / "captioned/mmaction2_demo_arm_wrestling.mp4").duration_from in ("stream", "container")
