"""The embedded default (SQLite in the project folder, artifacts beside it) and the `stgt runs` / `stgt ui` commands."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from stgt_pipeline import stages
from stgt_pipeline.cli import main
from stgt_pipeline.params import load_params
from stgt_pipeline.tracking import runs

pytestmark = pytest.mark.timeout(300)


def test_embedded_default_store_runs_listing_and_ui_command(clean_env, monkeypatch, capsys):
    assert main(["runs"]) == 2
    assert f"no MLflow store at {clean_env / 'mlflow.db'}" in capsys.readouterr().err

    report = clean_env / "reports" / "validate"
    with runs.stage_run(stages.get("validate"), load_params(None), {}, {"report": report}) as tracker:
        report.mkdir(parents=True)
        (report / "report.html").write_text("<html>ok</html>")
        tracker.log_summary({"videos": 3, "success": True}, _summary(clean_env))

    assert (clean_env / "mlflow.db").is_file() and not (clean_env / "mlruns").exists()
    assert "MLFLOW_TRACKING_URI" not in os.environ  # mlflow.set_tracking_uri exports it; stage_run undoes that
    assert (clean_env / "mlartifacts" / tracker.run_id / "artifacts" / "report" / "report.html").is_file()

    assert main(["runs"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("pipeline run stgt validate  FINISHED")
    assert out[2].split()[:2] == ["stage", "status"]
    assert out[3].split()[:2] == ["validate", "FINISHED"] and "success=1 videos=3" in out[3]

    def execve(path, command, env):
        calls.append((path, command))
        assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
        raise SystemExit(0)

    calls = []
    monkeypatch.delenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", raising=False)
    monkeypatch.setattr(os, "execve", execve)
    with pytest.raises(SystemExit):
        main(["ui", "--port", "5099"])
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", f"sqlite:///{clean_env / 'mlflow.db'}",
               "--default-artifact-root", (clean_env / "mlartifacts").as_uri(),
               "--host", "127.0.0.1", "--port", "5099", "--workers", "1"]
    assert calls == [(sys.executable, command)]
    assert "MLflow UI on http://127.0.0.1:5099" in capsys.readouterr().out

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example.invalid:5000")
    assert main(["ui"]) == 2
    assert "open that server in a browser" in capsys.readouterr().err


def _summary(folder: Path) -> Path:
    path = folder / "reports" / "validate.json"
    path.write_text('{"videos": 3, "success": true}\n')
    return path
