"""Benchmark file layouts that have no real copy here (MSRVTT_data.json, MSVD captions, LSMDC, ActivityNet
Captions, the original QA files), malformed files, the video lookup and the presets."""
from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import yaml

from stgt_pipeline.errors import ConfigError, StgtError
from stgt_pipeline.params import PrepareConfig, load_params
from stgt_pipeline.presets import available, load_preset, load_recipe
from stgt_pipeline.sources.benchmarks import activitynet, didemo, lsmdc, msrvtt, msvd, qa
from stgt_pipeline.sources.benchmarks.lookup import VideoIndex, list_remote


def config(source: str, tmp: Path, splits: dict, **bench) -> PrepareConfig:
    return PrepareConfig(source=source, benchmark={"root": str(tmp), "annotations_dir": str(tmp), "splits": splits, **bench})


def write(path: Path, data) -> str:
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path.name


MSRVTT_DATA = {  # CLIP4Clip's MSRVTT_data.json layout (the official train_val_videodatainfo.json is the same)
    "videos": [{"video_id": f"video{i}", "split": "train"} for i in range(3)],
    "sentences": [{"video_id": f"video{i}", "caption": f"caption {k} of video {i}", "sen_id": 3 * i + k}
                  for i in range(3) for k in range(3)],
}


def test_msrvtt_id_list_split_takes_captions_from_msrvtt_data_json(tmp_path):
    write(tmp_path / "MSRVTT_data.json", MSRVTT_DATA)
    write(tmp_path / "train.9k.csv", "video_id\nvideo0\nvideo2\n")
    result = msrvtt.read(config("msrvtt", tmp_path, {"train": {"ids": ["train.9k.csv"]}}, captions_db="MSRVTT_data.json"))
    assert [(e.video_id, e.captions) for e in result.entries] == [
        ("video0", ["caption 0 of video 0", "caption 1 of video 0", "caption 2 of video 0"]),
        ("video2", ["caption 0 of video 2", "caption 1 of video 2", "caption 2 of video 2"])]
    assert result.entries[0].names == ("video0.mp4",)


def test_msrvtt_listed_id_without_caption_is_named(tmp_path):
    write(tmp_path / "MSRVTT_data.json", MSRVTT_DATA)
    write(tmp_path / "ids.txt", "video0\nvideo7\n")
    with pytest.raises(StgtError, match=r"ids.txt: 1 listed id\(s\) have no caption in MSRVTT_data.json, e.g. video7"):
        msrvtt.read(config("msrvtt", tmp_path, {"train": {"ids": ["ids.txt"]}}, captions_db="MSRVTT_data.json"))


def test_msvd_captions_from_descriptions_txt_and_raw_captions_pkl(tmp_path):
    write(tmp_path / "train_list.txt", "-4wsuPCjDBc_5_15\n")
    write(tmp_path / "AllVideoDescriptions.txt", "# comment\n-4wsuPCjDBc_5_15 a squirrel eats\n-4wsuPCjDBc_5_15 a squirrel is eating\n")
    (tmp_path / "raw-captions.pkl").write_bytes(pickle.dumps({"-4wsuPCjDBc_5_15": [["a", "squirrel", "eats"]]}))
    for db, captions in (("AllVideoDescriptions.txt", ["a squirrel eats", "a squirrel is eating"]),
                         ("raw-captions.pkl", ["a squirrel eats"])):
        result = msvd.read(config("msvd", tmp_path, {"train": {"ids": ["train_list.txt"]}}, captions_db=db))
        assert result.entries[0].captions == captions
        assert result.entries[0].names == ("-4wsuPCjDBc_5_15.avi", "-4wsuPCjDBc_5_15.mp4")


def test_msvd_pickle_with_code_is_refused(tmp_path):
    write(tmp_path / "ids.txt", "a\n")
    (tmp_path / "raw-captions.pkl").write_bytes(pickle.dumps({"a": [[os.getcwd]]}))  # a global: could run code
    with pytest.raises(StgtError, match=r"raw-captions.pkl: not a CLIP4Clip raw-captions pickle \(refusing to load"):
        msvd.read(config("msvd", tmp_path, {"train": {"ids": ["ids.txt"]}}, captions_db="raw-captions.pkl"))


def test_lsmdc_tab_separated_csv(tmp_path):
    rows = ["1004_Juno_00.00.32.849-00.00.35.458\t00.00.32.849\t00.00.35.458\t00.00.32.849\t00.00.35.458\tSomeone runs.",
            "1004_Juno_00.00.40.000-00.00.42.000\t1\t2\t1\t2\tSomeone sits.",
            "1004_Juno_00.00.32.849-00.00.35.458\t1\t2\t1\t2\tSomeone stops."]
    write(tmp_path / "test.csv", "\n".join(rows) + "\n")
    entries = lsmdc.read(config("lsmdc", tmp_path, {"test": {"annotations": ["test.csv"]}})).entries
    assert [(e.video_id, e.captions) for e in entries] == [
        ("1004_Juno_00.00.32.849-00.00.35.458", ["Someone runs.", "Someone stops."]),
        ("1004_Juno_00.00.40.000-00.00.42.000", ["Someone sits."])]
    write(tmp_path / "bad.csv", rows[0] + "\nclip\tonly three\tfields\n")
    with pytest.raises(StgtError, match=r"bad.csv:2: expected 6 tab-separated fields \(clip_id, .*\), found 3"):
        lsmdc.read(config("lsmdc", tmp_path, {"test": {"annotations": ["bad.csv"]}}))


def test_original_msrvtt_qa_and_msvd_qa_files(tmp_path):
    write(tmp_path / "train_qa.json", [
        {"answer": "man", "id": 0, "question": "who is singing?", "video_id": 0, "category_id": 1},
        {"answer": "sing", "id": 1, "question": "what is a man doing?", "video_id": 0, "category_id": 0}])
    annotations, table, _ = qa.read(config("msrvtt_qa", tmp_path, {"train": {"annotations": ["train_qa.json"]}}))
    assert [e.video_id for e in annotations.entries] == ["video0"]
    assert list(table.type) == ["who", "what"] and list(table.question_id) == ["0", "1"]

    write(tmp_path / "youtube_mapping.txt", "-4wsuPCjDBc_5_15 vid1\n")
    with pytest.raises(StgtError, match=r"train_qa.json: record 0: field 'video_id': an int video id needs prepare.benchmark.video_id_map"):
        qa.read(config("msvd_qa", tmp_path, {"train": {"annotations": ["train_qa.json"]}}))
    write(tmp_path / "train_qa.json", [{"answer": "eat", "id": 0, "question": "what does a squirrel do?", "video_id": 1}])
    annotations, _, _ = qa.read(config("msvd_qa", tmp_path, {"train": {"annotations": ["train_qa.json"]}},
                                       video_id_map="youtube_mapping.txt"))
    assert annotations.entries[0].video_id == "-4wsuPCjDBc_5_15"


def test_alpro_jsonl_qa_and_top_k_vocabulary_keeps_oov_test_answers(tmp_path):
    train = [{"video_id": "video1", "question": f"q{i}", "answer": a, "answer_type": "what", "question_id": i}
             for i, a in enumerate(["dog", "dog", "cat", "cat", "bird"])]
    write(tmp_path / "train.jsonl", "\n".join(json.dumps(r) for r in train) + "\n")
    write(tmp_path / "test.jsonl", "\n".join(json.dumps({"video_id": "video9", "question": "q", "answer": a}) for a in ["cat", "fox"]))
    splits = {"train": {"annotations": ["train.jsonl"]}, "test": {"annotations": ["test.jsonl"]}}
    annotations, table, source = qa.read(config("msrvtt_qa", tmp_path, splits, answer_vocab_size=2))
    assert annotations.answer_vocab == ["cat", "dog"]  # by count, ties alphabetical
    assert source == "top 2 training answers"
    test = table[table.split == "test"]
    assert list(test.answer) == ["cat", "fox"] and list(test.in_vocab) == [True, False]  # kept, marked

    write(tmp_path / "ans2label.json", {"fox": 1, "bird": 0})
    annotations, table, _ = qa.read(config("msrvtt_qa", tmp_path, splits, answer_vocab="ans2label.json"))
    assert annotations.answer_vocab == ["bird", "fox"]
    assert list(table[table.split == "test"].in_vocab) == [False, True]


def test_activitynet_qa_question_without_answer_is_named(tmp_path):
    write(tmp_path / "q.json", [{"video_name": "abc", "question": "is it red", "question_id": "v_abc_0"},
                                {"video_name": "abc", "question": "is it blue", "question_id": "v_abc_1"}])
    write(tmp_path / "a.json", [{"answer": "no", "type": 3, "question_id": "v_abc_0"}])
    with pytest.raises(StgtError, match=r"q.json: record 1: field 'question_id': question 'v_abc_1' has no answer"):
        qa.read(config("activitynet_qa", tmp_path, {"test": {"annotations": ["q.json", "a.json"]}}))


def test_activitynet_captions_missing_field_is_named(tmp_path):
    write(tmp_path / "val_1.json", {"v_a": {"duration": 3.0, "timestamps": [[0, 1]], "sentences": ["x"]},
                                    "v_b": {"duration": 3.0, "timestamps": [[0, 1]]}})
    with pytest.raises(StgtError, match=r"val_1.json: video 'v_b': field 'sentences': expected a non-empty list"):
        activitynet.read(config("activitynet", tmp_path, {"test": {"annotations": ["val_1.json"]}}))


@pytest.mark.parametrize("name, content, message", [
    ("test1k.json", '[{"video": "video1.mp4", "caption": "a"},\n {"video": "video2.mp4", "cap',
     r"test1k.json:2: invalid JSON \(Unterminated string .*\); truncated"),
    ("test.csv", "key,vid_key,video_id,sentences\nret0,msr1,video1,a dog\n",
     r"test.csv:1: wrong CSV header: expected key,vid_key,video_id,sentence, found key,vid_key,video_id,sentences"),
    ("test.csv", "key,vid_key,video_id,sentence\nret0,msr1,video1,a dog\nret1,msr2,video2\n",
     r"test.csv:3: expected 4 columns"),
    ("test.csv", "key,vid_key,video_id,sentence\nret0,msr1,video1,\n", r"test.csv:2: field 'sentence': empty"),
    ("test1k.json", '[{"video": "video1.mp4", "caption": "a"}, {"video": "video2.mp4"}]',
     r"test1k.json: record 1: field 'caption': expected a non-empty string or a list of them"),
    ("test1k.json", '{"train": []}', r"test1k.json: no 'test' entry; this file holds train"),
])
def test_malformed_msrvtt_files_name_file_line_and_field(tmp_path, name, content, message):
    write(tmp_path / name, content)
    with pytest.raises(StgtError, match=message):
        msrvtt.read(config("msrvtt", tmp_path, {"test": {"annotations": [name]}}))


def test_didemo_record_without_description_and_msrvtt_data_without_sentences(tmp_path):
    write(tmp_path / "test_data.json", [{"video": "a.mov", "description": "x"}, {"video": "b.avi", "times": [[0, 0]]}])
    with pytest.raises(StgtError, match=r"test_data.json: record 1: field 'description': missing"):
        didemo.read(config("didemo", tmp_path, {"test": {"annotations": ["test_data.json"]}}))
    write(tmp_path / "MSRVTT_data.json", {"videos": []})
    write(tmp_path / "ids.txt", "video0\n")
    with pytest.raises(StgtError, match=r"MSRVTT_data.json: field 'sentences': expected"):
        msrvtt.read(config("msrvtt", tmp_path, {"test": {"ids": ["ids.txt"]}}, captions_db="MSRVTT_data.json"))


def test_a_video_in_two_splits_is_refused(tmp_path):
    write(tmp_path / "a.json", [{"video": "video1.mp4", "caption": "x"}])
    with pytest.raises(StgtError, match="video 'video1' is in both train and test"):
        msrvtt.read(config("msrvtt", tmp_path, {"train": {"annotations": ["a.json"]}, "test": {"annotations": ["a.json"]}}))


def test_missing_annotation_file_names_the_key(tmp_path):
    with pytest.raises(StgtError, match=r"prepare.benchmark.splits.test.annotations: .*nope.csv not found"):
        msrvtt.read(config("msrvtt", tmp_path, {"test": {"annotations": ["nope.csv"]}}))


# ---------------------------------------------------------------------------------------------------------------
# video lookup


def test_lookup_by_name_at_any_depth_shallowest_copy_first():
    index = VideoIndex.from_paths("/r", ["TestVideo/video9770.mp4", "all/sub/video9770.mp4", "video1.avi",
                                         "1004_Juno/1004_Juno_00.01.mp4", "000001_000050/1066.mp4"])
    assert index.find(["video9770.mp4"]) == "TestVideo/video9770.mp4"
    assert index.find(["video1.mp4", "video1.avi"]) == "video1.avi"
    assert index.find(["1004_Juno_00.01.avi", "1004_Juno_00.01.mp4"]) == "1004_Juno/1004_Juno_00.01.mp4"
    assert index.find(["000001_000050/1066.mp4"]) == "000001_000050/1066.mp4"
    assert index.find(["other_dir/1066.mp4"]) is None
    assert index.find(["all/sub/video9770.mp4"]) == "all/sub/video9770.mp4"
    assert index.find(["video2.mp4"]) is None


def test_lookup_fallbacks_for_didemo_and_activitynet():
    index = VideoIndex.from_paths("/r", ["10052357@N03_7585070382_5762149bfc.mp4", "abc.mkv"])
    assert index.find(didemo.candidates("10052357@N03_7585070382_5762149bfc.", (".mp4",))) == "10052357@N03_7585070382_5762149bfc.mp4"
    assert index.find(activitynet.candidates("v_abc", activitynet.EXTENSIONS)) == "abc.mkv"


def test_s3_root_is_listed_once(s3):
    for key in ("msrvtt/videos/all/video1.mp4", "msrvtt/videos/all/video2.mp4", "msrvtt/other.txt", "elsewhere/x.mp4"):
        s3.put_object(Bucket="bench", Key=key, Body=b"x")
    index = VideoIndex.from_paths("s3://bench/msrvtt", list_remote("s3://bench/msrvtt/"))
    assert index.find(["video2.mp4"]) == "videos/all/video2.mp4"
    assert sorted(index.by_name) == ["other.txt", "video1.mp4", "video2.mp4"]
    with pytest.raises(StgtError, match="prepare.benchmark.root: no objects under s3://bench/msrvt$"):
        list_remote("s3://bench/msrvt")
    with pytest.raises(StgtError, match=r"prepare.benchmark.root: cannot list s3://nobucket/x \("):
        list_remote("s3://nobucket/x")


# ---------------------------------------------------------------------------------------------------------------
# presets


def test_every_preset_validates_and_keeps_its_recipe_out_of_params(tmp_path):
    assert {"msrvtt_1ka", "msrvtt_9k", "msvd", "didemo", "lsmdc", "activitynet", "msrvtt_qa", "msvd_qa",
            "activitynet_qa", "webvid"} <= set(available())
    for name in available():
        params = load_params(tmp_path / "none.yaml", [f"prepare.preset={name}", f"prepare.benchmark.root={tmp_path}"])
        assert params.prepare.source == load_preset(name)["prepare"]["source"]
        assert "recipe" not in params.dump()
        assert load_recipe(name)


def test_reference_recipe_numbers():
    assert load_recipe("msrvtt_1ka")["finetune"]["max_txt_len"] == 36
    assert load_recipe("msrvtt_1ka")["finetune"]["epochs"] == 9
    assert load_recipe("msrvtt_1ka")["finetune"]["batch_size_per_gpu"] == 20
    assert load_recipe("didemo")["finetune"]["max_txt_len"] == 55
    assert load_recipe("msvd")["finetune"]["epochs"] == 12
    frames = load_preset("msrvtt_1ka")["extract_frames"]
    assert (frames["num_frames"], frames["size"], frames["train_sampling"], frames["eval_sampling"]) == (8, 224, "headtail", "uniform")


def test_preset_overrides_params_file_and_set_overrides_preset(tmp_path):
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump({"prepare": {"source": "synthetic", "preset": "msrvtt_1ka",
                                                       "benchmark": {"root": str(tmp_path)}},
                                           "extract_frames": {"num_frames": 4, "workers": 1}}))
    params = load_params(params_file, ["extract_frames.size=112"])
    assert params.prepare.source == "msrvtt"  # preset over params.yaml
    assert params.extract_frames.num_frames == 8 and params.extract_frames.workers == 1  # untouched keys stay
    assert params.extract_frames.size == 112  # --set over the preset
    assert params.prepare.benchmark.root == str(tmp_path)
    assert params.prepare.benchmark.expected_videos == {"train": 9000, "test": 1000}


def test_unknown_preset_and_missing_root_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"prepare.preset: unknown preset 'msrvtt'; expected one of activitynet, "):
        load_params(tmp_path / "none.yaml", ["prepare.preset=msrvtt"])
    with pytest.raises(ConfigError, match="source 'msrvtt' needs prepare.benchmark.root"):
        load_params(tmp_path / "none.yaml", ["prepare.preset=msrvtt_1ka"])


def test_first_caption_mode_keeps_one_caption_a_video(tmp_path, real_media):
    write(tmp_path / "MSRVTT_data.json", MSRVTT_DATA)
    write(tmp_path / "ids.txt", "video0\nvideo1\n")
    shutil.copy(real_media / "videos/msrvtt_test/video7010.mp4", tmp_path / "video0.mp4")
    shutil.copy(real_media / "videos/msrvtt_test/video7011.mp4", tmp_path / "video1.mp4")
    cfg = config("msrvtt", tmp_path, {"test": {"ids": ["ids.txt"]}}, captions_db="MSRVTT_data.json", captions="first")
    out = tmp_path / "dataset"
    out.mkdir()
    rows = [row for rows in msrvtt.build(cfg, out).clips for row in rows]
    assert [(r["video_id"], r["captions"]) for r in rows] == [("video0", ["caption 0 of video 0"]),
                                                              ("video1", ["caption 0 of video 1"])]
    assert "| test | 2 | - | 2 | 0 | 2 | 1 / 1.0 / 1 | 0 |" in (out / "data_card.md").read_text()
