"""Stage `build_graphs` on frame shards written directly in extract_frames' layout (tiny_vit backbone), plus one
run of the real EfficientNet-Lite0 default path."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from stgt_model.data import ClipStore, normalise_frames
from stgt_model.graph import build_graph, graph_statistics, to_edge_list
from stgt_pipeline.components.build_graphs import stage as build_graphs
from stgt_pipeline.errors import StageFailed, StgtError
from stgt_pipeline.io.manifest import write_manifest
from stgt_pipeline.params import Params

T, SIZE = 4, 32
TINY_TOKENS, TINY_DIM = 1 + (32 // 8) ** 2, 32  # tiny preset: 32 px, patch 8, width 32
SHARD_SIZES = (3, 2)


def write_frames(root: Path, shard_sizes=SHARD_SIZES, num_frames=T, size=SIZE, seed=0) -> tuple[Path, Path]:
    """(frames dir, prepared dataset dir): random uint8 clips in extract_frames' layout and a matching manifest."""
    frames_dir, dataset_dir = root / "frames", root / "prepared"
    (frames_dir / "shards").mkdir(parents=True)
    dataset_dir.mkdir()
    rng = np.random.default_rng(seed)
    index, manifest = [], []
    for number, count in enumerate(shard_sizes):
        shard = f"shards/frames-{number:05d}.npy"
        np.save(frames_dir / shard, rng.integers(0, 256, (count, num_frames, size, size, 3), dtype=np.uint8))
        for offset in range(count):
            video_id = f"clip{number}{offset}"
            split = "train" if offset else "test"
            index.append({"video_id": video_id, "split": split, "shard": shard, "offset": offset})
            manifest.append({"video_id": video_id, "path": f"videos/{video_id}.mp4", "split": split,
                             "captions": ["a clip"], "qa": [], "duration": 1.0, "fps": 8.0, "width": size,
                             "height": size, "codec": "h264", "sha256": video_id, "twin_id": None})
    pd.DataFrame(index).to_parquet(frames_dir / "index.parquet", index=False)
    write_manifest(pd.DataFrame(manifest), dataset_dir, dataset_dir, "test")
    return frames_dir, dataset_dir


def tiny_params(**build_graphs_section) -> Params:
    # Random frames through a random ViT: cosines sit near 0, so threshold 0 keeps the graphs connected.
    return Params.model_validate({"model": {"preset": "tiny"},
                                  "build_graphs": {"sim_threshold": 0.0, "batch_size": 2, **build_graphs_section}})


def run(params: Params, frames_dir: Path, dataset_dir: Path, out: Path) -> dict:
    return build_graphs.run(params, {"frames": frames_dir, "dataset": dataset_dir}, {"features": out})


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    return write_frames(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def cached(inputs, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("out") / "features"
    return run(tiny_params(), *inputs, out), out


def test_features_are_fp16_shards_aligned_with_the_frame_shards(inputs, cached):
    frames_dir, _ = inputs
    summary, out = cached
    frames_index = pd.read_parquet(frames_dir / "index.parquet")
    index = pd.read_parquet(out / "index.parquet")
    assert list(index.columns) == build_graphs.FEATURE_COLUMNS
    assert list(index["video_id"]) == list(frames_index["video_id"])
    assert list(index["offset"]) == list(frames_index["offset"])
    assert list(index["shard"].str.replace("features-", "frames-")) == list(frames_index["shard"])
    assert set(index["num_frames"]) == {T} and set(index["tokens"]) == {TINY_TOKENS} and set(index["dim"]) == {TINY_DIM}
    for number, count in enumerate(SHARD_SIZES):
        shard = np.load(out / f"shards/features-{number:05d}.npy", mmap_mode="r")
        assert shard.shape == (count, T, TINY_TOKENS, TINY_DIM) and shard.dtype == np.float16

    # The slot of a clip holds that clip's tokens: re-encode one with the same (seeded) backbone.
    row = frames_index.iloc[4]
    clip = np.load(frames_dir / row["shard"])[row["offset"]]
    backbone = build_graphs.build_extractor(tiny_params(), torch.device("cpu"))
    with torch.inference_mode():
        expected = backbone(normalise_frames(torch.from_numpy(clip)[None], backbone.mean, backbone.std, 32))[0]
    stored = ClipStore(out).get(row["video_id"])
    assert stored.dtype == torch.float32 and stored.shape == (T, TINY_TOKENS, TINY_DIM)
    torch.testing.assert_close(stored, expected.half().float())
    assert summary["mode"] == "cached" and summary["clips"] == sum(SHARD_SIZES)
    assert (summary["frames_per_clip"], summary["tokens_per_frame"], summary["dim"]) == (T, TINY_TOKENS, TINY_DIM)


def test_stored_edge_lists_reproduce_the_dense_graph_of_the_stored_tokens(cached):
    _, out = cached
    index = pd.read_parquet(out / "index.parquet")
    stats = pd.read_parquet(out / "graph_stats.parquet").set_index("video_id")
    nodes_per_frame = TINY_TOKENS - 1
    for row in index.itertuples():
        patches = torch.from_numpy(np.load(out / row.shard)[row.offset, :, 1:].astype(np.float32))
        dense = build_graph(patches[None], T, threshold=0.0, window=1)[0]
        expected = to_edge_list(dense, T, nodes_per_frame)
        graphs_file = out / row.shard.replace("shards/features-", "graphs/edges-").replace(".npy", ".npz")
        edge_index, weight = build_graphs.clip_edges(graphs_file, row.offset)
        assert edge_index.dtype == np.int32 and weight.dtype == np.float16
        np.testing.assert_array_equal(edge_index, expected["edge_index"].numpy())
        np.testing.assert_allclose(weight, expected["weight"].numpy(), atol=1e-3)

        reference = graph_statistics(dense, T, nodes_per_frame)
        clip = stats.loc[row.video_id]
        assert clip["nodes"] == T * nodes_per_frame
        assert clip["edges"] == reference["edges"] + reference["self_loops"] == edge_index.shape[1]
        assert clip["mean_degree"] == pytest.approx(clip["edges"] / clip["nodes"])
        assert clip["cross_frame_share"] == pytest.approx(reference["cross_frame_share"])
        assert clip["isolated_nodes"] == reference["isolated_nodes"]


def test_stats_suite_report_readme_and_summary(cached):
    summary, out = cached
    stats = pd.read_parquet(out / "graph_stats.parquet")
    assert list(stats.columns) == build_graphs.STATS_COLUMNS and len(stats) == sum(SHARD_SIZES)
    assert "PASSED" in (out / "graphs_suite.html").read_text()
    assert (out / "README.txt").is_file() and (out / "config.resolved.yaml").is_file()
    assert summary["edges_mean"] == pytest.approx(stats["edges"].mean(), abs=0.01)
    assert summary["isolated_nodes_total"] == stats["isolated_nodes"].sum()
    assert 0 <= summary["cross_frame_share_mean"] <= 1 and summary["seconds_per_clip"] > 0


def test_failing_graph_suite_raises_keeps_the_report_and_the_previous_output(inputs, tmp_path):
    out = tmp_path / "features"
    out.mkdir()
    (out / "previous.txt").write_text("earlier run")
    with pytest.raises(StageFailed, match="isolated_share"):  # nearly no pair of random tokens is this similar
        run(tiny_params(sim_threshold=0.999), *inputs, out)
    assert [p.name for p in out.iterdir()] == ["previous.txt"]
    assert "FAILED" in (tmp_path / "features.failed" / "graphs_suite.html").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features", "features.failed"]  # no temporary left


@pytest.mark.parametrize("section, model", [({"mode": "online"}, {}), ({}, {"backbone": {"frozen": False}})])
def test_online_mode_or_trainable_backbone_stores_frames_only(inputs, tmp_path, section, model):
    frames_dir, dataset_dir = inputs
    params = Params.model_validate({"model": {"preset": "tiny", **model}, "build_graphs": section})
    out = tmp_path / "features"
    summary = run(params, frames_dir, dataset_dir, out)
    assert summary["mode"] == "frames_only" and summary["clips"] == sum(SHARD_SIZES)
    assert sorted(p.name for p in out.iterdir()) == ["README.txt", "config.resolved.yaml", "index.parquet"]
    assert "Frames only" in (out / "README.txt").read_text() and summary["reason"] in (out / "README.txt").read_text()
    store = ClipStore(out)
    assert store.kind == "frames" and len(store) == sum(SHARD_SIZES)
    clip = store.get("clip11")
    assert clip.dtype == torch.uint8 and clip.shape == (T, SIZE, SIZE, 3)
    np.testing.assert_array_equal(clip.numpy(), np.load(frames_dir / "shards/frames-00001.npy")[1])


def test_missing_shard_or_offset_fails_naming_it_and_writes_nothing(tmp_path):
    frames_dir, dataset_dir = write_frames(tmp_path / "data")
    out = tmp_path / "features"
    index = pd.read_parquet(frames_dir / "index.parquet")
    index.loc[4, "offset"] = 7
    index.to_parquet(frames_dir / "index.parquet", index=False)
    with pytest.raises(StgtError, match="holds 2 clips but video 'clip11'"):
        run(tiny_params(), frames_dir, dataset_dir, out)
    (frames_dir / "shards/frames-00001.npy").unlink()
    with pytest.raises(StgtError, match=r"frames-00001\.npy: frame shard of video 'clip10'"):
        run(tiny_params(), frames_dir, dataset_dir, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_frames_not_in_the_manifest_are_refused(tmp_path):
    frames_dir, _ = write_frames(tmp_path / "data")
    _, other_dataset = write_frames(tmp_path / "other", shard_sizes=(2,))
    with pytest.raises(StgtError, match=r"3 clips .* not in the manifest.*clip02"):
        run(tiny_params(), frames_dir, other_dataset, tmp_path / "features")


def test_default_efficientnet_lite0_path(tmp_path):
    frames_dir, dataset_dir = write_frames(tmp_path, shard_sizes=(2,), num_frames=2, size=224)
    out = tmp_path / "features"
    summary = run(Params(), frames_dir, dataset_dir, out)  # the default model: frozen EfficientNet-Lite0
    features = np.load(out / "shards/features-00000.npy", mmap_mode="r")
    assert features.shape == (2, 2, 1 + 49, 1280) and features.dtype == np.float16
    assert summary["backbone"] == "efficientnet_lite0" and summary["sim_threshold"] == 0.5
    assert (summary["tokens_per_frame"], summary["dim"]) == (50, 1280)
