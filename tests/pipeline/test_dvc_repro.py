"""`dvc repro` of the data stages in a temporary git repo with the real dvc CLI (targeting extract_frames, the
last data stage, so the training stages are not run here)."""
import json

import pandas as pd
import pytest
import yaml

from tests.pipeline.dvc_project import make_project, run

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("dvc"))


def test_repro_runs_data_stages_then_is_a_noop(project):
    repo, env = project
    first = run(["dvc", "repro", "extract_frames"], repo, env)
    for stage in ("prepare", "validate", "extract_frames"):
        assert f"Running stage '{stage}'" in first.stdout
    manifest = pd.read_parquet(repo / "data/prepared/manifest.parquet")
    assert len(manifest[manifest.split != "probe"]) >= 9
    assert (repo / "reports/validate/report.html").exists()
    frames = json.loads((repo / "reports/extract_frames.json").read_text())
    assert frames["videos"] == frames["extracted"] + frames["quarantined"] == len(manifest)
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"prepare", "validate", "extract_frames"}

    second = run(["dvc", "repro", "extract_frames"], repo, env)
    assert "Running stage" not in second.stdout
    assert "up to date" in second.stdout.lower()
    assert run(["dvc", "status", "extract_frames"], repo, env).stdout.strip().endswith(
        "Data and pipelines are up to date.")


def test_exp_run_with_set_param_and_params_diff(project):
    repo, env = project
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "first repro"], repo, env, check=False)
    exp = run(["dvc", "exp", "run", "extract_frames", "-S", "prepare.num_videos=12"], repo, env)
    assert "Running stage 'prepare'" in exp.stdout
    diff = run(["dvc", "params", "diff"], repo, env).stdout
    assert "prepare.num_videos" in diff and "9" in diff and "12" in diff
    manifest = pd.read_parquet(repo / "data/prepared/manifest.parquet")
    assert len(set(manifest.video_id.str.replace("_rev", ""))) == 12
