"""`stgt index` / `stgt search` / `stgt ask` with models registered by the real register stage on a real MLflow
server: search agrees with the evaluate stage, a served video embeds as the pipeline's cached features do, the
index is incremental, resumable and refuses another model version, and real clips are indexed or quarantined."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from stgt_model.data import ClipStore
from stgt_pipeline import cli, training
from stgt_pipeline.errors import StgtError
from stgt_pipeline.search import index as search_index_module
from stgt_pipeline.search import models
from stgt_pipeline.search.index import Searcher, VideoIndex, build_index, list_source
from tests.search.world import SearchWorld

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def stgt(capsys: pytest.CaptureFixture, *args: str) -> subprocess.CompletedProcess:
    """The `stgt` command line, in this process (the model loads faster than in a new interpreter)."""
    capsys.readouterr()
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def test_search_puts_a_caption_first_as_often_as_evaluate_r_at_1_says(search_env: SearchWorld) -> None:
    index = VideoIndex.open(search_env.index_dir)
    assert index.info["model"]["name"] == f"{search_env.prefix}-retrieval"
    searcher = Searcher(index, search_env.model_uri)
    hits, queries = 0, 0
    for row in search_env.test_rows().itertuples():
        for caption in row.captions:
            queries += 1
            hits += searcher.search(str(caption), top=1)[0].video_id == row.video_id
    reported = search_env.metrics["retrieval"]
    assert queries == reported["num_texts"]
    # Same frames, same backbone, same fp16 rounding, same re-ranking: R@1 to float rounding (one query's share
    # would be a rank flip between two near-tied clips).
    assert 100.0 * hits / queries == pytest.approx(reported["t2v"]["R@1"], abs=1e-6)
    assert search_env.test_caption, "no test caption ranks its clip first: the agreement above is all misses"


def test_a_served_video_embeds_as_the_pipelines_cached_features(search_env: SearchWorld) -> None:
    ref, python_model = models.load(search_env.model_uri)
    store = ClipStore(search_env.features)
    row = search_env.test_rows().iloc[0]
    path = Path(search_env.dataset) / row["path"]
    served = python_model.packaged.video_features(path)
    cached = store.get(row["video_id"])
    torch.testing.assert_close(served, cached, atol=2e-3, rtol=2e-3)  # fp16 both: at most one rounding step apart
    by_path = np.asarray(python_model.predict(None, pd.DataFrame({"video": [str(path)]}))["embedding"][0])
    by_features = np.asarray(python_model.predict(None, pd.DataFrame({"video_features": [cached.numpy()]}))
                             ["embedding"][0])
    np.testing.assert_allclose(by_path, by_features, atol=1e-4)
    index = VideoIndex.open(search_env.index_dir)
    position = int(index.videos.index[index.videos["video_id"] == row["video_id"]][0])
    np.testing.assert_allclose(index.vectors[position], by_path, atol=1e-5)


def test_search_cli_prints_ranked_hits_and_refuses_another_model_version(search_env: SearchWorld, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    result = stgt(capsys, "search", search_env.test_caption, "--index", str(search_env.index_dir), "--top", "3",
                  "--model", search_env.model_uri, "--json")
    assert result.returncode == 0, result.stderr
    hits = [json.loads(line) for line in result.stdout.splitlines()]
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert hits[0]["video_id"] == search_env.expected_video_id
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"] or hits[0]["score"] > hits[2]["score"]

    # The same model registered again is another version: the index refuses it.
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(search_env.mlflow_uri)
    name = f"{search_env.prefix}-retrieval"
    current = client.get_model_version_by_alias(name, "champion")
    newer = mlflow.register_model(current.source, name)
    result = stgt(capsys, "search", "a red circle", "--index", str(search_env.index_dir), "--model",
                  f"models:/{name}/{newer.version}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: ") and f"version {current.version}" in result.stderr
    assert "re-run `stgt index`" in result.stderr

    missing = stgt(capsys, "search", "x", "--index", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "no index here" in missing.stderr


def test_index_is_incremental_resumable_and_quarantines_unreadable_videos(search_env: SearchWorld, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    videos = sorted((Path(search_env.dataset) / "videos").glob("*.mp4"))[:4]
    folder = tmp_path / "collection"
    (folder / "sub").mkdir(parents=True)
    for video in videos[:2]:
        shutil.copy(video, folder / video.name)
    (folder / "sub" / "broken.mp4").write_bytes(b"not a video at all")
    out = tmp_path / "index"

    first = build_index(str(folder), out, search_env.model_uri, progress=False)
    assert (first["indexed"], first["quarantined"], first["embedded_now"]) == (2, 1, 2)
    quarantine = json.loads((out / "quarantine.json").read_text())
    assert [q["video_id"] for q in quarantine] == ["sub/broken.mp4"] and quarantine[0]["reason"]
    index = VideoIndex.open(out)
    assert sorted(index.videos["video_id"]) == sorted(v.name for v in videos[:2])
    assert all((out / t).is_file() for t in index.videos["thumbnail"])
    assert index.faiss_index.ntotal == 2 * index.info["queries"]

    # Added videos are embedded, the rest reused; a removed one leaves the index.
    shutil.copy(videos[2], folder / videos[2].name)
    (folder / videos[0].name).unlink()
    second = build_index(str(folder), out, search_env.model_uri, progress=False)
    assert (second["embedded_now"], second["reused"], second["removed"], second["indexed"]) == (1, 1, 1, 2)
    assert sorted(VideoIndex.open(out).videos["video_id"]) == sorted(v.name for v in videos[1:3])

    # Interrupted after one video: the next run starts from what was embedded.
    shutil.copy(videos[3], folder / videos[3].name)
    shutil.copy(videos[0], folder / videos[0].name)
    monkeypatch.setattr(search_index_module, "CHECKPOINT_EVERY", 1)
    real_embed, calls = search_index_module.embed_video, []

    def interrupted(python_model, video):
        if calls:
            raise KeyboardInterrupt
        calls.append(video.video_id)
        return real_embed(python_model, video)

    monkeypatch.setattr(search_index_module, "embed_video", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_index(str(folder), out, search_env.model_uri, progress=False)
    assert sorted(VideoIndex.open(out).videos["video_id"]) == sorted(v.name for v in videos[1:3])  # untouched
    assert len(list((tmp_path / "index.partial").glob("part-*.npz"))) == 1
    monkeypatch.setattr(search_index_module, "embed_video", real_embed)
    third = build_index(str(folder), out, search_env.model_uri, progress=False)
    assert (third["embedded_now"], third["indexed"]) == (1, 4)
    assert not (tmp_path / "index.partial").exists()


def test_index_refuses_bad_sources(search_env: SearchWorld, tmp_path: Path) -> None:
    with pytest.raises(StgtError, match="no such folder"):
        list_source(str(tmp_path / "missing"))
    with pytest.raises(StgtError, match="has no split 'nope'"):
        list_source(str(search_env.dataset), split="nope")
    (tmp_path / "empty").mkdir()
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("not an index")
    with pytest.raises(StgtError, match="exists and is not an index"):
        build_index(str(search_env.dataset), keep, search_env.model_uri, progress=False)
    assert (keep / "notes.txt").read_text() == "not an index"
    with pytest.raises(StgtError, match="holds no videos"):
        build_index(str(tmp_path / "empty"), tmp_path / "i", search_env.model_uri, progress=False)
    with pytest.raises(StgtError, match="not found in the registry"):
        build_index(str(search_env.dataset), tmp_path / "i", f"models:/{search_env.prefix}-nothing@champion",
                    progress=False)
    # A link that leads out of the folder is not part of the collection.
    outside = tmp_path / "outside.mp4"
    shutil.copy(next((Path(search_env.dataset) / "videos").glob("*.mp4")), outside)
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / "escape.mp4").symlink_to(outside)
    assert list_source(str(tmp_path / "linked")) == []


def test_real_clips_are_indexed_or_quarantined_with_a_reason(search_env: SearchWorld, real_media: Path,
                                                             tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = real_media / "videos"
    files = [p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in search_index_module.VIDEO_SUFFIXES]
    result = stgt(capsys, "index", str(source), "--out", str(tmp_path / "real"), "--model", search_env.model_uri)
    assert result.returncode == 0, result.stderr[-3000:]
    index = VideoIndex.open(tmp_path / "real")
    quarantine = index.quarantine
    assert len(index.videos) + len(quarantine) == len(files)
    assert all(q["reason"] for q in quarantine)
    assert "edge_cases/decord_corrupted.mp4" in {q["video_id"] for q in quarantine}
    assert not [q for q in quarantine if q["reason"].startswith(("/", "not a readable video"))]  # the reason alone
    assert {"codecs/torchcodec_av1_video.mkv", "edge_cases/decord_video_rot90.mov"} <= set(index.videos["video_id"])
    assert np.isfinite(index.vectors).all()
    assert f"{len(index.videos)} videos" in result.stdout


def test_ask_answers_with_a_probability(search_env: SearchWorld, capsys: pytest.CaptureFixture) -> None:
    row = search_env.test_rows().iloc[0]
    video = str(Path(search_env.dataset) / row["path"])
    result = stgt(capsys, "ask", video, "what colour is the circle?", "--model", search_env.qa_model_uri)
    assert result.returncode == 0, result.stderr
    vocab = json.loads((search_env.qa_checkpoint / training.VOCAB_FILE).read_text())
    answer, rest = result.stdout.rsplit("(p=", 1)
    probability = float(rest.split(",")[0])
    assert 0.0 < probability <= 1.0 and answer.strip() in vocab
    bad = stgt(capsys, "ask", str(search_env.root / "nope.mp4"), "what?", "--model", search_env.qa_model_uri)
    assert bad.returncode == 2 and bad.stderr.strip() == f"error: ask: {search_env.root / 'nope.mp4'}: no such file"
    wrong = stgt(capsys, "ask", video, "what?", "--model", search_env.model_uri)
    assert wrong.returncode == 2 and "needs a QA model" in wrong.stderr
