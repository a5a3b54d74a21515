"""Stage `pretrain` on the tiny corpus: both phases run, the output is written whole, a killed run resumes, and one
re-run with other params names its work folder (--restart starts over)."""
import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from stgt_model.data import collate_twin_groups
from stgt_pipeline import training
from stgt_pipeline.cli import main
from stgt_pipeline.components.pretrain import stage as pretrain
from tests.stages.tiny_corpus import TRAIN, corpus, tiny_params  # noqa: F401 - the session fixture

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


class Killed(Exception):
    pass


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / training.MODEL_FILE, weights_only=True)


def test_pretrain_runs_both_phases_and_writes_its_output(corpus, tmp_path):
    out = tmp_path / "checkpoints" / "pretrain"
    summary = pretrain.run(tiny_params(tmp_path), corpus, {"checkpoint": out})

    assert summary["stage1"]["steps"] == 3 and summary["stage2"]["steps"] == 3
    assert {"vtc", "vtm", "vtg"} <= set(summary["stage1"]) and "csal" in summary["stage2"]
    assert not any(k.startswith("backbone.") for k in weights(out))
    curves = pd.read_csv(out / training.CURVES_FILE)
    assert list(curves.groupby("phase")["step"].max()) == [3, 3]
    assert (out / "config.resolved.yaml").exists()
    assert not training.work_dir(out).exists()  # checkpoints of a finished run are cleaned up


def test_killed_pretrain_resumes_from_its_out_dir_and_ends_with_the_same_weights(corpus, tmp_path, monkeypatch):
    params = tiny_params(tmp_path)
    uninterrupted = tmp_path / "a" / "pretrain"
    pretrain.run(params, corpus, {"checkpoint": uninterrupted})

    resumed = tmp_path / "b" / "pretrain"
    kill_in_stage2_at_step_2(monkeypatch)
    with pytest.raises(Killed):
        pretrain.run(params, corpus, {"checkpoint": resumed})
    # Nothing half-written at the output; the checkpoints sit in the work folder beside it.
    assert not resumed.exists()
    work = training.work_dir(resumed)
    assert (work / "stage1" / "checkpoints" / "latest").read_text() == "step-0000003.pt"
    assert (work / "stage2" / "checkpoints" / "latest").read_text() == "step-0000002.pt"

    monkeypatch.undo()
    pretrain.run(params, corpus, {"checkpoint": resumed})

    a, b = weights(uninterrupted), weights(resumed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    curves = pd.read_csv(resumed / training.CURVES_FILE)
    assert not curves.duplicated(["phase", "step"]).any()


def kill_in_stage2_at_step_2(monkeypatch) -> None:
    real_logger = training.curve_logger

    def killing_logger(path, phase):
        log = real_logger(path, phase)

        def kill(step, metrics):
            log(step, metrics)
            if phase == "stage2" and step == 2:
                raise Killed  # after the step-2 checkpoint, as a kill between steps
        return kill

    monkeypatch.setattr(pretrain, "curve_logger", killing_logger)


def test_rerun_with_a_changed_param_names_the_work_folder_and_restart_starts_over(corpus, tmp_path, monkeypatch,
                                                                                   capsys):
    out = tmp_path / "checkpoints" / "pretrain"
    work = training.work_dir(out)
    paths = ["--dataset", str(corpus["dataset"]), "--features", str(corpus["features"]), "--checkpoint", str(out),
             "--metrics", str(tmp_path / "pretrain.json")]
    first = tiny_params(tmp_path / "first")
    kill_in_stage2_at_step_2(monkeypatch)
    with pytest.raises(Killed):
        main(["pretrain", "--params", str(tmp_path / "first" / "params.yaml"), *paths])
    monkeypatch.undo()
    assert (work / "stage2" / "checkpoints" / "latest").exists() and not out.exists()

    stage2 = first.pretrain.stage2.lr
    tiny_params(tmp_path / "second", pretrain={"stage2": {**TRAIN, "losses": ["csal", "vtm", "vtg"], "lr": stage2 * 2}})
    changed = ["pretrain", "--params", str(tmp_path / "second" / "params.yaml"), *paths]
    capsys.readouterr()
    assert main(changed) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"error: pretrain: {work}/ holds an unfinished run with other settings (lr: {stage2} -> "
                   f"{stage2 * 2}): add --restart to delete it and start over (under dvc: STGT_RESTART=1 dvc repro), "
                   "or put the settings back to resume it"]
    assert (work / "stage2" / "checkpoints" / "latest").exists() and not out.exists()  # nothing lost, nothing made

    assert main([*changed, "--restart"]) == 0
    assert capsys.readouterr().err.splitlines()[0] == f"restart: removed {work}/"
    assert out.is_dir() and not work.exists()
    assert training.RESTART_ENV not in os.environ  # --restart holds for its own command only
    curves = pd.read_csv(out / training.CURVES_FILE)
    assert list(curves.groupby("phase")["step"].max()) == [3, 3] and not curves.duplicated(["phase", "step"]).any()


def test_restart_from_the_environment_as_dvc_passes_it(corpus, tmp_path, monkeypatch):
    out = tmp_path / "pretrain"
    kill_in_stage2_at_step_2(monkeypatch)
    with pytest.raises(Killed):
        pretrain.run(tiny_params(tmp_path), corpus, {"checkpoint": out})
    monkeypatch.undo()
    stale = training.work_dir(out) / "stage1" / "checkpoints" / "latest"
    assert stale.exists()

    monkeypatch.setenv(training.RESTART_ENV, "1")  # STGT_RESTART=1 dvc repro pretrain
    params = tiny_params(tmp_path, pretrain={"stage1": {**TRAIN, "losses": ["vtc", "vtm", "vtg"], "lr": 1e-3}})
    summary = pretrain.run(params, corpus, {"checkpoint": out})
    assert summary["stage1"]["steps"] == 3 and not training.work_dir(out).exists()


def test_twin_batches_say_where_each_clip_s_twin_is():
    def item(name):
        return {"video_id": name, "video": torch.zeros(2, 3, 4), "caption": name, "index": 0}

    def tokens(texts):
        return torch.ones(len(texts), 2, dtype=torch.long), torch.ones(len(texts), 2, dtype=torch.long)

    groups = [[item("a"), item("a_rev")], [item("b")], [item("c_rev"), item("c")]]
    batch = collate_twin_groups(groups, tokens)
    assert batch["video_id"] == ["a", "a_rev", "b", "c_rev", "c"]
    assert batch["twin_index"].tolist() == [1, 0, -1, 4, 3]
