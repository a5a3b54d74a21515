"""Every real annotation file in ../shared/real-media/annotations, read through its benchmark source, against
counts taken from the file itself (csv/json/line counts) and the sizes the benchmarks publish."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from stgt_pipeline.params import PrepareConfig
from stgt_pipeline.sources.benchmarks import activitynet, didemo, msrvtt, qa
from stgt_pipeline.sources.benchmarks.common import read_id_list


@pytest.fixture
def ann(real_media: Path) -> Path:
    return real_media / "annotations"


def config(source: str, ann: Path, splits: dict, **bench) -> PrepareConfig:
    return PrepareConfig(source=source, benchmark={"root": str(ann), "annotations_dir": str(ann), "splits": splits, **bench})


def lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def by_split(entries) -> dict[str, list]:
    out: dict[str, list] = {}
    for e in entries:
        out.setdefault(e.split, []).append(e)
    return out


def test_msrvtt_1ka_csv_and_json_hold_the_same_1000_videos(ann):
    csv_path, json_path = ann / "msrvtt/MSRVTT_JSFUSION_test.csv", ann / "msrvtt/msrvtt_ret_test1k.json"
    with open(csv_path, newline="") as fh:
        csv_rows = list(csv.DictReader(fh))
    json_items = json.loads(json_path.read_text())
    from_csv = msrvtt.read(config("msrvtt", ann, {"test": {"annotations": [str(csv_path)]}})).entries
    from_json = msrvtt.read(config("msrvtt", ann, {"test": {"annotations": [str(json_path)]}})).entries

    assert len(from_csv) == len(csv_rows) == 1000
    assert len(from_json) == len(json_items) == 1000
    assert [e.video_id for e in from_csv] == [r["video_id"] for r in csv_rows]
    assert {e.video_id for e in from_json} == {e.video_id for e in from_csv}
    assert all(len(e.captions) == 1 for e in from_csv + from_json)  # 1k-A: one caption a video
    sentence = {r["video_id"]: r["sentence"] for r in csv_rows}
    assert all(e.captions == [sentence[e.video_id]] for e in from_json)
    assert from_csv[0].names == ("video9770.mp4",)
    # The 1k-A test is collaborative-experts' val_list_jsfusion.txt.
    listed = msrvtt.read(config("msrvtt", ann, {"test": {"annotations": [str(csv_path)],
                                                         "ids": ["msrvtt/splits_collaborative_experts/val_list_jsfusion.txt"]}}))
    assert len(listed.entries) == 1000 and "1,000 in both" in listed.notes[0]


def test_msrvtt_train_9k_csv_is_the_jsfusion_train_list_and_disjoint_from_1ka(ann):
    path = ann / "msrvtt/MSRVTT_train.9k.csv"
    ids = read_id_list(path)
    assert len(ids) == len(lines(path)) - 1 == 9000  # less the header
    assert set(ids) == set(read_id_list(ann / "msrvtt/splits_collaborative_experts/train_list_jsfusion.txt"))
    test_ids = {e.video_id for e in msrvtt.read(config("msrvtt", ann, {"test": {"annotations": ["msrvtt/MSRVTT_JSFUSION_test.csv"]}})).entries}
    assert not set(ids) & test_ids


@pytest.mark.parametrize("name, size", [
    ("msrvtt/splits_collaborative_experts/train_list_jsfusion.txt", 9000),
    ("msrvtt/splits_collaborative_experts/val_list_jsfusion.txt", 1000),
    ("msrvtt/splits_collaborative_experts/train_list_miech.txt", 6656),
    ("msrvtt/splits_collaborative_experts/test_list_miech.txt", 1000),
    ("msrvtt/splits_collaborative_experts/train_list_full.txt", 6513),
    ("msrvtt/splits_collaborative_experts/val_list_full.txt", 497),
    ("msrvtt/splits_collaborative_experts/test_list_full.txt", 2990),
    ("msvd/splits_collaborative_experts/train_list.txt", 1200),
    ("msvd/splits_collaborative_experts/val_list.txt", 100),
    ("msvd/splits_collaborative_experts/test_list.txt", 670),
    ("didemo/splits_collaborative_experts/train_list.txt", 8392),
    ("didemo/splits_collaborative_experts/val_list.txt", 1065),
    ("didemo/splits_collaborative_experts/test_list.txt", 1004),
    ("activitynet/splits_collaborative_experts/train_list.txt", 10009),
    ("activitynet/splits_collaborative_experts/val_1_list.txt", 4917),
    ("activitynet/splits_collaborative_experts/val_2_list.txt", 4885),
])
def test_split_lists_have_their_published_sizes(ann, name, size):
    # Some lists end without a newline (wc -l says 6512 for train_list_full.txt): count ids, not newlines.
    assert len(read_id_list(ann / name)) == len(lines(ann / name)) == size


def test_msrvtt_full_split_lists_partition_the_10k_videos(ann):
    d = ann / "msrvtt/splits_collaborative_experts"
    parts = [set(read_id_list(d / f"{s}_list_full.txt")) for s in ("train", "val", "test")]
    assert sum(map(len, parts)) == len(set().union(*parts)) == 10000


def test_violet_msrvtt_sample_splits(ann):
    path = ann / "msrvtt/violet_txt_msrvtt-retrieval.json"
    data = json.loads(path.read_text())
    got = by_split(msrvtt.read(config("msrvtt", ann, {s: {"annotations": [str(path)]} for s in data})).entries)
    for split, items in data.items():
        assert len(got[split]) == len({i["video"] for i in items})
        assert sum(len(e.captions) for e in got[split]) == len(items)


def test_didemo_test_paragraphs_and_split_list_intersection(ann):
    path = ann / "didemo/test_data.json"
    items = json.loads(path.read_text())
    grouped = didemo.read_annotation(path, "test")
    assert len(items) == sum(len(e.captions) for e in grouped.values()) == 4021
    assert len(grouped) == len({i["video"] for i in items}) == 1037

    listed = set(lines(ann / "didemo/splits_collaborative_experts/test_list.txt"))
    result = didemo.read(config("didemo", ann, {"test": {"annotations": [str(path)],
                                                         "ids": ["didemo/splits_collaborative_experts/test_list.txt"]}}))
    kept = result.entries
    assert len(kept) == len(set(grouped) & listed) == 1004
    assert "1,037 videos annotated, 1,004 in the split list(s), 1,004 in both" in result.notes[0]
    kept_descriptions = sum(1 for i in items if i["video"] in listed)
    assert f"{kept_descriptions:,} moment descriptions" in result.notes[1]
    first = kept[0]  # a paragraph: the video's descriptions joined in file order
    assert first.captions == [" ".join(i["description"] for i in items if i["video"] == first.video_id)]
    # Ids keep their Flickr extensions (and bare trailing dots); a transcoded .mp4 is looked for second.
    assert first.names == (first.video_id, first.video_id.rsplit(".", 1)[0] + ".mp4")
    assert any(e.video_id.endswith(".") for e in kept)


def test_didemo_val_for_training_as_the_reference(ann):
    val = json.loads((ann / "didemo/val_data.json").read_text())
    result = didemo.read(config("didemo", ann, {"train": {"annotations": ["didemo/val_data.json"],
                                                          "ids": ["didemo/splits_collaborative_experts/val_list.txt"]}}))
    assert len({i["video"] for i in val}) == 1094
    assert len(result.entries) == 1065 and {e.split for e in result.entries} == {"train"}


def test_msvd_qa_sample_answers_map_through_its_vocab(ann):
    path = ann / "msvd_qa/violet_txt_msvd-qa.json"
    data = json.loads(path.read_text())
    annotations, table, source = qa.read(config("msvd_qa", ann, {s: {"annotations": [str(path)]} for s in ("train", "val", "test")}))
    for split in ("train", "val", "test"):
        rows = table[table.split == split]
        assert len(rows) == len(data[split])  # nothing dropped, out-of-vocabulary answers included
        assert list(rows.answer) == [data["vocab"][i["answer"]] for i in data[split]]
        assert list(rows.video_id) == [i["video"] for i in data[split]]
    # Our vocabulary is the training answers (top-k), not VIOLET's list, so some test answers fall outside.
    train_answers = {data["vocab"][i["answer"]] for i in data["train"]}
    assert annotations.answer_vocab is not None and set(annotations.answer_vocab) == train_answers
    test = table[table.split == "test"]
    assert list(test.in_vocab) == [a in train_answers for a in test.answer]
    assert 0 < test.in_vocab.sum() < len(test)
    assert set(table.type) <= {"what", "who", "how", "when", "where", "other"}


def test_activitynet_qa_head_sample_joined_on_question_id(ann):
    q_path, a_path = ann / "activitynet_qa/test_q.head300.json", ann / "activitynet_qa/test_a.head300.json"
    questions, answers = json.loads(q_path.read_text()), json.loads(a_path.read_text())
    annotations, table, _ = qa.read(config("activitynet_qa", ann, {"test": {"annotations": [str(q_path), str(a_path)]}}))
    assert len(table) == len(questions) == len(answers) == 300
    assert len(annotations.entries) == len({q["video_name"] for q in questions}) == 236
    answer = {a["question_id"]: a for a in answers}
    for row in table.itertuples():
        assert row.answer == answer[row.question_id]["answer"]
        assert row.type == qa.ACTIVITYNET_TYPES[answer[row.question_id]["type"]]
        assert row.video_id.startswith("v_")
    assert table.type.value_counts().to_dict() == {"yes_no": 198, "number": 69, "other": 32, "location": 1}
    assert annotations.answer_vocab is None  # no training split in a test-only sample: coverage is unknown


def test_activitynet_lists_restrict_a_captions_file(ann, tmp_path):
    listed = lines(ann / "activitynet/splits_collaborative_experts/val_1_list.txt")
    captions = {vid: {"duration": 10.0, "timestamps": [[0, 5], [5, 10]], "sentences": ["A man runs.", " He stops. "]}
                for vid in listed[:3] + ["v_notlisted"]}
    (tmp_path / "val_1.json").write_text(json.dumps(captions))
    result = activitynet.read(config("activitynet", ann, {"test": {
        "annotations": [str(tmp_path / "val_1.json")], "ids": ["activitynet/splits_collaborative_experts/val_1_list.txt"]}}))
    assert [e.video_id for e in result.entries] == listed[:3]
    assert result.entries[0].captions == ["A man runs. He stops."]
    assert "4 videos annotated, 4,917 in the split list(s), 3 in both" in result.notes[0]


def test_every_real_annotation_file_is_read_here(ann):
    """A file added to the shared annotations needs a reader and a test here."""
    covered = {"msrvtt/MSRVTT_JSFUSION_test.csv", "msrvtt/MSRVTT_train.9k.csv", "msrvtt/msrvtt_ret_test1k.json",
               "msrvtt/violet_txt_msrvtt-retrieval.json", "didemo/test_data.json", "didemo/val_data.json",
               "msvd_qa/violet_txt_msvd-qa.json", "activitynet_qa/test_q.head300.json",
               "activitynet_qa/test_a.head300.json",
               "demo_captions/captioned_videos.json"}  # not a benchmark: the folder source's demo captions
    present = {p.relative_to(ann).as_posix() for p in ann.rglob("*") if p.is_file()}
    split_lists = {p for p in present if "/splits_collaborative_experts/" in p}
    assert present - split_lists == covered
    assert len(split_lists) == 16
