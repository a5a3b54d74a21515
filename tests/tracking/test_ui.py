"""The MLflow UI, in headless Chromium, shows a tracked pipeline run: its stage runs and their metrics.

Needs Debian's `chromium`; skipped without it, except under CI=true where it fails. The screenshot is kept in the
test's temp dir, and copied to reports/ui-screenshot.png when STGT_UI_SCREENSHOT=1.
"""
from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    reason = "chromium is not installed (Debian: apt-get install -y chromium); the MLflow UI test needs it"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def page_text(chromium: str, url: str, profile: Path, screenshot: Path | None = None) -> str:
    """The page's visible text once the React app has rendered (virtual time lets its requests finish)."""
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
               "--window-size=1400,1000", "--virtual-time-budget=15000"]
    if screenshot:
        command.append(f"--screenshot={screenshot}")
    proc = subprocess.run([*command, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", proc.stdout, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom)))


def test_ui_shows_the_pipeline_run_its_stage_runs_and_a_metric(validated_pipeline, client, chromium, mlflow_server,
                                                               tmp_path):
    experiment = client.get_experiment_by_name(validated_pipeline.experiment)
    stage = client.search_runs([experiment.experiment_id], "tags.`stgt.role` = 'stage'")[0]
    parent_id = stage.data.tags["mlflow.parentRunId"]
    base = f"{mlflow_server}/#/experiments/{experiment.experiment_id}/runs"

    parent_page = page_text(chromium, f"{base}/{parent_id}", tmp_path / "profile")
    assert client.get_run(parent_id).info.run_name in parent_page
    assert re.search(r"Child runs\s+validate\b", parent_page), parent_page[:2000]

    screenshot = tmp_path / "ui-screenshot.png"
    stage_page = page_text(chromium, f"{base}/{stage.info.run_id}", tmp_path / "profile", screenshot)
    assert "Parent run" in stage_page and "validate" in stage_page
    assert re.search(r"\bvideos\s+3\b", stage_page), stage_page[:2000]  # the metric table: name, value
    assert screenshot.stat().st_size > 10_000
    if os.environ.get("STGT_UI_SCREENSHOT") == "1":
        (REPO_ROOT / "reports").mkdir(exist_ok=True)
        shutil.copy(screenshot, REPO_ROOT / "reports" / "ui-screenshot.png")
